"""The fleet as it reports itself: heartbeat ingestion, alerts and job failures, fleet queries,
an installation's history and the dashboard's figures. No HTTP here."""
