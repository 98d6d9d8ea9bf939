"""``bench.run``: which paced round the bench reports."""
from __future__ import annotations

from bench.run import median_round


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
