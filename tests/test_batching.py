"""``cp.batching.Batcher``: group commit's leader/follower queue, on real threads."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from cp.batching import Batcher


@dataclass(eq=False)
class Item:
    key: str
    done: bool = False
    error: BaseException | None = None
    batch: int | None = None


class Recorder:
    """``run``: records each batch's keys; the first batch waits for ``release`` so that the
    other threads queue up behind it."""

    def __init__(self, hold_first: bool = False):
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, batch):
        self.started.set()
        self.release.wait(10)
        self.batches.append([it.key for it in batch])
        for it in batch:
            it.batch = len(self.batches)


def submit_all(batcher: Batcher, items: list[Item]) -> list[threading.Thread]:
    threads = [threading.Thread(target=batcher.submit, args=(it,)) for it in items]
    for t in threads:
        t.start()
    return threads


def wait_queued(batcher: Batcher, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(batcher._queue) < n:
        assert time.monotonic() < deadline, "the threads did not queue up"
        time.sleep(0.005)


def behind_a_running_batch(max_size: int, keys: list[str]) -> tuple[Recorder, list[Item]]:
    """``keys`` submitted while a first batch ("lead") is being run: they all queue up, then
    the first batch ends. Returns the recorder and the items, once every thread is done."""
    run = Recorder(hold_first=True)
    batcher = Batcher(run, max_size=max_size)
    first = submit_all(batcher, [Item("lead")])
    assert run.started.wait(10)
    items = [Item(k) for k in keys]
    threads = submit_all(batcher, items)
    wait_queued(batcher, len(items))
    run.release.set()
    for t in first + threads:
        t.join(10)
        assert not t.is_alive()
    return run, items


def test_alone_an_item_runs_at_once_in_a_batch_of_one():
    run = Recorder()
    batcher = Batcher(run, max_size=8)
    item = Item("a")
    batcher.submit(item)
    assert item.done and run.batches == [["a"]]


def test_items_arriving_while_a_batch_runs_go_together_into_the_next():
    run, items = behind_a_running_batch(8, [f"i{n}" for n in range(5)])
    assert run.batches[0] == ["lead"]
    assert sorted(run.batches[1]) == [f"i{n}" for n in range(5)]
    assert len(run.batches) == 2
    assert all(it.done and it.batch == 2 for it in items)


def test_a_batch_holds_at_most_max_size_items():
    run, items = behind_a_running_batch(3, [f"i{n}" for n in range(7)])
    assert [len(b) for b in run.batches] == [1, 3, 3, 1]
    assert sorted(k for b in run.batches for k in b) == sorted(["lead"] + [f"i{n}" for n in range(7)])
    assert all(it.done for it in items)


def test_one_item_per_key_in_a_batch():
    run, items = behind_a_running_batch(8, ["x", "y", "x", "x"])
    for batch in run.batches:
        assert len(batch) == len(set(batch)), run.batches
    assert sum(b.count("x") for b in run.batches) == 3
    assert all(it.done for it in items)


def test_an_exception_in_run_reaches_every_item_of_its_batch_and_nobody_hangs():
    calls = []

    def run(batch):
        calls.append([it.key for it in batch])
        if len(calls) == 2:
            raise RuntimeError("boom")

    gate = threading.Event()

    def first_run(batch):
        gate.wait(10)
        run(batch)

    batcher = Batcher(first_run, max_size=8)
    lead = Item("lead")
    first = submit_all(batcher, [lead])
    wait_until = time.monotonic() + 10
    while not batcher._leading:
        assert time.monotonic() < wait_until
        time.sleep(0.005)
    items = [Item(f"i{n}") for n in range(3)]
    threads = submit_all(batcher, items)
    wait_queued(batcher, 3)
    gate.set()
    for t in first + threads:
        t.join(10)
        assert not t.is_alive()
    assert lead.error is None
    assert all(isinstance(it.error, RuntimeError) and it.done for it in items)
    # the batcher is still usable afterwards
    later = Item("later")
    batcher.submit(later)
    assert later.done and later.error is None


def test_max_size_must_be_positive():
    with pytest.raises(ValueError):
        Batcher(lambda batch: None, max_size=0)


def test_wait_s_must_not_be_negative():
    with pytest.raises(ValueError):
        Batcher(lambda batch: None, max_size=4, wait_s=-0.001)


def test_a_quiet_process_never_waits_for_more_items():
    run = Recorder()
    batcher = Batcher(run, max_size=8, wait_s=30)
    started = time.monotonic()
    for key in ("a", "b", "c"):
        batcher.submit(Item(key))
    assert run.batches == [["a"], ["b"], ["c"]]
    assert time.monotonic() - started < 10  # not one 30 s wait


def busy(batcher_run: Recorder, max_size: int, wait_s: float) -> Batcher:
    """A batcher whose last batch held 3 items, with 4 items once in it at the same time (made
    without waiting; then it waits up to ``wait_s``)."""
    batcher = Batcher(batcher_run, max_size=max_size, wait_s=0)
    first = submit_all(batcher, [Item("lead")])
    assert batcher_run.started.wait(10)
    threads = submit_all(batcher, [Item(f"q{n}") for n in range(3)])
    wait_queued(batcher, 3)
    batcher_run.release.set()
    for t in first + threads:
        t.join(10)
        assert not t.is_alive()
    assert batcher_run.batches == [["lead"], ["q0", "q1", "q2"]]
    batcher.wait_s = wait_s
    return batcher


def test_under_load_a_leader_waits_for_more_items_until_its_batch_holds_as_many_as_the_process_had():
    run = Recorder(hold_first=True)
    batcher = busy(run, max_size=8, wait_s=20)
    started = time.monotonic()
    lead = submit_all(batcher, [Item("a")])
    time.sleep(0.05)  # "a" leads and lingers: the last batch held 3
    assert run.batches[-1] != ["a"]
    later = submit_all(batcher, [Item(k) for k in ("b", "c", "d")])
    for t in lead + later:
        t.join(15)
        assert not t.is_alive()
    # the four went together, as soon as there were as many as the batcher once held (not after 20 s)
    assert sorted(run.batches[2]) == ["a", "b", "c", "d"] and len(run.batches) == 3
    assert time.monotonic() - started < 15


def test_a_lingering_leader_writes_what_it_has_when_wait_s_is_over():
    run = Recorder(hold_first=True)
    batcher = busy(run, max_size=8, wait_s=0.2)
    started = time.monotonic()
    batcher.submit(Item("alone"))
    assert run.batches[-1] == ["alone"]
    assert time.monotonic() - started >= 0.2  # it waited for company, up to wait_s


def test_a_batch_of_one_at_most_never_waits():
    run = Recorder(hold_first=True)
    batcher = Batcher(run, max_size=1, wait_s=30)
    started = time.monotonic()
    first = submit_all(batcher, [Item("lead")])
    assert run.started.wait(10)
    threads = submit_all(batcher, [Item("x"), Item("y")])
    wait_queued(batcher, 2)
    run.release.set()
    for t in first + threads:
        t.join(10)
        assert not t.is_alive()
    assert [len(b) for b in run.batches] == [1, 1, 1]
    assert time.monotonic() - started < 10
