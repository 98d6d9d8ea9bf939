"""Work done outside requests by ``flask --app cp worker``: webhook delivery from the outbox and
the periodic sweeps."""
