"""Group commit: the requests a process has in flight share one transaction.

``Batcher(run, max_size)``: threads ``submit(item)``; the first one in becomes the leader and
calls ``run(batch)`` with what is queued (itself included, up to ``max_size`` items, at most one
per ``item.key``), while the others wait. Requests that arrive meanwhile queue up and go into
the leader's next batch; the leader stops once its own item is done and hands over to a
waiting thread. Under load a batch holds about as many items as the process has threads; a
request that finds nobody writing runs at once, alone, so grouping never waits on a timer.

``run`` records each item's outcome on the item itself; ``submit`` returns once the item's
batch is done. An exception that escapes ``run`` is set on every item of its batch as
``item.error`` (``run`` should handle its own; this only keeps waiting threads from hanging).
Nothing here knows what the items are (``cp.agent_api.heartbeats`` batches heartbeats).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, Protocol


class Item(Protocol):
    key: Hashable  # at most one item per key in a batch (a later one waits for the next batch)
    done: bool
    error: BaseException | None


class Batcher:
    def __init__(self, run: Callable[[list[Any]], None], max_size: int):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._run = run
        self.max_size = max_size
        self._lock = threading.Lock()
        self._queue: list[Any] = []
        self._wake: dict[int, Any] = {}  # id(item) -> the lock its thread sleeps on
        self._leading = False

    def submit(self, item: Item) -> None:
        """Queue ``item`` and return once a batch holding it has been run.

        A waiting thread sleeps on a lock of its own and is woken once: when its batch is done,
        or when the leader hands over to it (a shared condition would wake every waiting thread
        at the end of every batch, for one of them to go on)."""
        item.done = False
        with self._lock:
            lead = not self._leading
            if lead:
                self._leading = True
            else:
                self._queue.append(item)
                wake = self._wake[id(item)] = threading.Lock()
                wake.acquire()
        if not lead:
            wake.acquire()  # released once: the item is done, or this thread leads now
            if item.done:
                return
        try:
            with self._lock:
                batch = self._take(item)
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting thread
                for it in batch:
                    it.error = exc
                if not isinstance(exc, Exception):
                    raise
            finally:
                with self._lock:
                    for it in batch:
                        it.done = True
                        waiting = self._wake.pop(id(it), None)
                        if waiting is not None:
                            waiting.release()
        finally:
            with self._lock:
                if self._queue:  # hand over to the thread of the oldest waiting item
                    self._wake.pop(id(self._queue.pop(0))).release()
                else:
                    self._leading = False

    def _take(self, own: Any) -> list[Any]:
        """The leader's batch: its own item, then queued items in arrival order, one per key, up
        to ``max_size``."""
        batch: list[Any] = [own]
        keys: set = {own.key}
        rest: list[Any] = []
        for it in self._queue:
            if len(batch) < self.max_size and it.key not in keys:
                batch.append(it)
                keys.add(it.key)
            else:
                rest.append(it)
        self._queue = rest
        return batch
