"""Group commit: the requests a process has in flight share one transaction.

``Batcher(run, max_size)``: threads ``submit(item)``; the first one in becomes the leader and
calls ``run(batch)`` with what is queued (itself included, up to ``max_size`` items, at most one
per ``item.key``), while the others wait. Requests that arrive meanwhile queue up and go into
the leader's next batch; the leader stops once its own item is done and hands over to a
waiting thread. Under load a batch holds about as many items as the process has threads.

Under load, a leader may also wait a little for more items (``wait_s``, like PostgreSQL's
``commit_delay``): only when the previous batch held more than one item or others are already
queued, for at most ``wait_s``, and only until its batch holds as many items as the process has
ever had in the batcher at once (its threads, in practice) or ``max_size``. An item that finds
a quiet process (nobody writing, the last batch a single item) runs at once, alone; a process
whose threads are all in the batch writes at once.

``run`` records each item's outcome on the item itself; ``submit`` returns once the item's
batch is done. An exception that escapes ``run`` is set on every item of its batch as
``item.error`` (``run`` should handle its own; this only keeps waiting threads from hanging).
Nothing here knows what the items are (``cp.agent_api.heartbeats`` batches heartbeats).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Hashable, Protocol


class Item(Protocol):
    key: Hashable  # at most one item per key in a batch (a later one waits for the next batch)
    done: bool
    error: BaseException | None


class Batcher:
    def __init__(self, run: Callable[[list[Any]], None], max_size: int, wait_s: float = 0.0):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if wait_s < 0:
            raise ValueError("wait_s must not be negative")
        self._run = run
        self.max_size = max_size
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._arrival = threading.Condition(self._lock)  # notified when an item queues up
        self._queue: list[Any] = []
        self._wake: dict[int, Any] = {}  # id(item) -> the lock its thread sleeps on
        self._leading = False
        self._last = 1  # the size of the last batch
        self._most = 1  # the most items ever in the batcher at once (the leader's and the queued)

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
                if len(self._queue) >= self._most:
                    self._most = len(self._queue) + 1
                wake = self._wake[id(item)] = threading.Lock()
                wake.acquire()
                self._arrival.notify()  # a lingering leader counts it
        if not lead:
            wake.acquire()  # released once: the item is done, or this thread leads now
            if item.done:
                return
        try:
            with self._lock:
                self._linger()
                batch = self._take(item)
                self._last = len(batch)
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

    def _linger(self) -> None:
        """(The leader, holding the lock.) Under load, wait at most ``wait_s`` for more items,
        while the batch has room and more threads than those already in it could still come."""
        if not self.wait_s or not (self._queue or self._last > 1):
            return  # a quiet process: write at once
        deadline = time.monotonic() + self.wait_s
        while len(self._queue) + 1 < min(self.max_size, self._most):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._arrival.wait(left)

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
