"""``bench.run``: which paced round the bench reports; ``bench.floor``: how the floor commits."""
from __future__ import annotations

import importlib
import sys

import pytest
from sqlalchemy.engine import make_url

from bench.run import cpu_budget, cpu_ms_per_heartbeat, median_round, target_reads
from tests.conftest import behind_pgbouncer


def rnd(offered: float, p99: float, unfinished: int = 0) -> dict:
    return {"offered": offered, "service": {"p99_ms": p99, "unfinished": unfinished}, "floor": {"p99_ms": 1.0}}


def test_the_median_round_of_three_is_the_middle_p99():
    rounds = [rnd(1000, 80.0), rnd(1100, 20.0), rnd(900, 45.0)]
    assert median_round(rounds)["offered"] == 900


def test_of_two_rounds_the_worse_is_reported():
    assert median_round([rnd(1000, 30.0), rnd(1100, 60.0)])["offered"] == 1100


def test_a_round_that_fell_behind_counts_as_the_worst_whatever_its_p99():
    rounds = [rnd(1000, 10.0, unfinished=5), rnd(1100, 40.0), rnd(900, 45.0)]
    assert median_round(rounds)["offered"] == 900
    assert median_round([rnd(1000, 10.0, unfinished=5)])["offered"] == 1000


@pytest.fixture
def floor_module(monkeypatch, migrated):
    """``bench.floor`` imported afresh with the environment the bench gives it (it reads it at
    import, as a gunicorn app module does)."""
    def load(**env: str):
        dsn = make_url(migrated).set(drivername="postgresql").render_as_string(hide_password=False)
        monkeypatch.setenv("BENCH_FLOOR_DSN", dsn)
        monkeypatch.setenv("CONTROL_PLANE_AGENT_TOKEN", "t" * 32)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        sys.modules.pop("bench.floor", None)
        module = importlib.import_module("bench.floor")
        conns.append(module)
        return module

    conns: list = []
    yield load
    for module in conns:
        conn = getattr(module._local, "conn", None)
        if conn is not None:
            conn.close()
    sys.modules.pop("bench.floor", None)


@pytest.mark.skipif(behind_pgbouncer(), reason="the floor talks to PostgreSQL directly: its commit mode is a "
                                                 "startup option, which PgBouncer refuses")
def test_the_floor_commits_as_durably_as_the_service_default(floor_module, postgres_only):
    floor = floor_module()
    assert floor._conn().execute("SHOW synchronous_commit").fetchone()[0] == "on"


def reads(**medians: float) -> dict:
    return {name: {"p50_ms": ms} for name, ms in medians.items()}


def test_the_read_target_takes_the_slower_of_before_and_after_the_load():
    got = target_reads(reads(fleet_page=20.0, installation_page=40.0, api_alerts_open=10.0),
                       reads(fleet_page=45.0, installation_page=30.0, api_alerts_open=300.0), None)
    assert got == reads(fleet_page=45.0, installation_page=40.0)  # api_alerts_open is not a target read


def test_without_autovacuum_the_reads_after_the_vacuum_count_instead_of_those_before_it():
    got = target_reads(reads(fleet_page=20.0, installation_page=40.0), reads(fleet_page=58.0, installation_page=55.0),
                       reads(fleet_page=30.0, installation_page=35.0))
    assert got == reads(fleet_page=30.0, installation_page=40.0)


def _peak(rate, web, pg, gen):
    return {"rate": rate, "server_cores": web, "postgres_cores": pg, "generator_cores": gen}


def test_cpu_per_heartbeat_is_each_part_s_cores_over_the_rate():
    assert cpu_ms_per_heartbeat(_peak(2000, 1.0, 0.4, 0.2)) == {"web": 0.5, "postgres": 0.2, "generator": 0.1}


def test_the_ratio_ceiling_is_the_floor_s_whole_cpu_over_the_service_s_database_and_generator_cpu():
    # floor: 0.8 ms per heartbeat in all; service: 2.6 ms web, 0.9 ms PostgreSQL, 0.1 ms generator
    budget = cpu_budget(service_run=_peak(500, 1.3, 0.45, 0.05), floor_run=_peak(2000, 1.0, 0.4, 0.2))
    assert budget["ratio_ceiling"] == 0.8  # 0.8 / (0.9 + 0.1)
    # to reach the aim (0.8) the service's web side may spend 0.8 / 0.8 - 1.0 = 0 ms
    assert budget["web_ms_allowed_at_aim"] == 0.0
    assert budget["service"]["web"] == 2.6
    # to keep up with half the floor's peak: 2 x 0.8 - 1.0 = 0.6 ms of web CPU at most
    assert budget["web_ms_to_keep_up_at_half_floor"] == 0.6
