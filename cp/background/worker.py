"""The background worker: ``flask --app cp worker``.

One loop for everything deferred or periodic:

- every poll (``CONTROL_PLANE_WORKER_POLL_SECONDS``, at once again while there is work): the
  alert webhook outbox (``cp.background.outbox``);
- every ``CONTROL_PLANE_SWEEP_INTERVAL_SECONDS``: the stale and backup-age sweeps and the
  rollout tick (``cp.background.sweeps``);
- every hour: pruning of the SLO history, delivered webhook events, agent nonces and rate-limit
  counters (also ``flask --app cp prune-history``).

Several workers may run at once (claims use ``FOR UPDATE SKIP LOCKED``, sweeps an advisory
lock and idempotent inserts). SIGTERM or SIGINT stops the loop after the event in flight is
delivered and recorded; the rest of a claimed batch is handed back, so nothing is lost. A
failing step (the database away, say) is logged and retried on the next round; it never ends
the worker.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable

import click
from flask import current_app
from flask.cli import with_appcontext

from cp.background import outbox
from cp.background import sweeps
from cp.extensions import db

log = logging.getLogger("cp.background.worker")

PRUNE_INTERVAL_SECONDS = 3600.0


class Worker:
    def __init__(self, app, *, stop_event: threading.Event | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.app = app
        self.stop_event = stop_event or threading.Event()
        self.monotonic = monotonic
        self.next_sweep = 0.0
        self.next_prune = 0.0

    @property
    def settings(self):
        return self.app.config["CP_SETTINGS"]

    def stop(self, *_args) -> None:
        if not self.stop_event.is_set():
            log.info("worker stopping", extra={"event": "worker_stopping"})
        self.stop_event.set()

    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def _step(self, name: str, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - log, clean up, and try again next round
            log.exception("worker step failed", extra={"event": "worker_error", "step": name})
            try:
                db.session.rollback()
            except Exception:  # noqa: BLE001
                pass
            return None

    def run_once(self, *, sweep: bool = True, prune: bool = True) -> dict:
        """One full round: sweeps, prune, then deliver everything due."""
        out: dict = {}
        if sweep:
            out["sweeps"] = self._step("sweeps", sweeps.run_sweeps)
        if prune:
            out["pruned"] = self._step("prune", sweeps.prune_all)
        out["delivered"] = self._step("outbox", lambda: outbox.deliver_all(should_stop=self.stopping))
        db.session.remove()
        return out

    def iteration(self) -> bool:
        """One pass of the loop; True when it did outbox work (so the next pass comes at once)."""
        now = self.monotonic()
        if now >= self.next_sweep:
            self._step("sweeps", sweeps.run_sweeps)
            self.next_sweep = now + self.settings.sweep_interval_seconds
        if now >= self.next_prune and not self.stopping():
            self._step("prune", sweeps.prune_all)
            self.next_prune = now + PRUNE_INTERVAL_SECONDS
        busy = False
        if not self.stopping():
            busy = bool(self._step("outbox", lambda: outbox.deliver_due(should_stop=self.stopping)))
        db.session.remove()
        return busy

    def run(self) -> None:
        log.info("worker started", extra={"event": "worker_started",
                                          "webhook": bool(self.settings.alert_webhook_url)})
        while not self.stopping():
            busy = self.iteration()
            if not busy:
                self.stop_event.wait(self.settings.worker_poll_seconds)
        log.info("worker stopped", extra={"event": "worker_stopped"})


@click.command("worker")
@click.option("--once", is_flag=True, help="Run one full round (sweeps, pruning, every due delivery) and exit.")
@with_appcontext
def worker_command(once: bool) -> None:
    """Run the background worker: webhook delivery, sweeps, pruning (stops cleanly on SIGTERM)."""
    worker = Worker(current_app._get_current_object())
    previous = {sig: signal.signal(sig, worker.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if once:
            worker.run_once()
        else:
            worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command("prune-history")
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Keep this many days of SLO history (default CONTROL_PLANE_SLO_HISTORY_RETENTION_DAYS).")
@with_appcontext
def prune_history_command(days: int | None) -> None:
    """Delete SLO history past its retention, old delivered webhook events, nonces and counters."""
    counts = sweeps.prune_all(slo_days=days)
    click.echo(", ".join(f"{name}: {n} deleted" for name, n in counts.items()))


def init_cli(app) -> None:
    app.cli.add_command(worker_command)
    app.cli.add_command(prune_history_command)
