"""A small open-loop HTTP load generator (keep-alive connections, raw HTTP/1.1, asyncio protocols).

Debian's ``wrk`` has no fixed-rate mode (that is ``wrk2``), so the latency at a fixed offered
load comes from here: request ``k`` is *due* at ``start + k / rate`` whatever happened before
(open loop), and its latency is measured from that due time, not from when a connection was
free to send it, so a server that falls behind is charged for the queue it causes (no
coordinated omission, as in wrk2). ``--once`` sends every body exactly once as fast as the
connections allow (the warm-up pass). Prints one JSON line with the percentiles and this
process's own CPU time, so its share of the 2 cores is reported next to the results.

It shares the machine with the servers it measures, so it is written to cost little: one
``asyncio.Protocol`` per connection (no stream reader or task per request), one timer per due
request, the request bytes built once, and uvloop's event loop (libuv) when it is installed
(the ``dev`` extra installs it; ``--no-uvloop`` uses asyncio's own loop). Its own lateness
(a due request sent late because this process was not scheduled) counts against the server,
as it would for any open-loop generator; its CPU share is in the result.

    python -m bench.paced --url http://127.0.0.1:8000 --bodies bodies.tsv --rate 800 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.fleet import read_bodies

ATTEMPTS = 3  # a request whose connection broke is sent again on a new one, at most this often
# Latencies are measured on this clock: uvloop's ``loop.time()`` is libuv's, in whole
# milliseconds and cached per loop iteration; the loop's clock only schedules the timers.
now = time.monotonic


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(pct / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def parse_response(buf: bytearray) -> tuple[int, int, bool] | None:
    """``(status, bytes the whole response takes, close)`` once ``buf`` holds a complete
    response head and its body; None while more is needed. Raises ValueError on a response this
    generator does not read (not HTTP/1.x, chunked)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError("not an HTTP/1.x response")
    status = int(parts[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
        elif name == b"transfer-encoding":
            raise ValueError("chunked responses are not read")
    total = end + 4 + length
    return (status, total, close) if len(buf) >= total else None


class Load:
    """The run's state: requests due and not yet sent (``backlog``), idle connections, results."""

    def __init__(self, loop, host: str, port: int, requests: list[bytes], total: int, connections: int):
        self.loop, self.host, self.port = loop, host, port
        self.requests, self.total, self.connections = requests, total, connections
        self.backlog: collections.deque = collections.deque()  # (due, k, attempt)
        # first in, first out: every connection is used in turn and stays warm (a server closes
        # keep-alive connections idle for a few seconds; opening one costs a round trip)
        self.idle: collections.deque[Client] = collections.deque()
        self.latencies: list[float] = []
        self.statuses: collections.Counter = collections.Counter()
        self.errors = 0
        self.opening = 0  # connections being opened
        self.connections_open = 0
        self.finished = loop.create_future()

    # a request is due (or, with --once, queued); a connection free to take it
    def due(self, due: float | None, k: int, attempt: int = 0) -> None:
        if self.idle:
            self.idle.popleft().send(due, k, attempt)
        else:
            self.backlog.append((due, k, attempt))
            self._top_up()

    def free(self, client: "Client") -> None:
        if self.backlog:
            client.send(*self.backlog.popleft())
        else:
            self.idle.append(client)

    def done(self, due: float | None, sent: float, status: int) -> None:
        self.latencies.append(now() - (sent if due is None else due))
        if status == 0:
            self.errors += 1
        else:
            self.statuses[status] += 1
        if len(self.latencies) >= self.total and not self.finished.done():
            self.finished.set_result(None)

    def lost(self, client: "Client", request: tuple | None) -> None:
        """A connection closed or broke: its request (if any) is sent again or counted as an
        error, and a new connection replaces it when there is work waiting."""
        if client in self.idle:
            self.idle.remove(client)
        self.connections_open -= 1
        if request is not None:
            due, k, attempt, sent = request
            if attempt + 1 < ATTEMPTS:
                self.backlog.appendleft((due, k, attempt + 1))
            else:
                self.done(due, sent, 0)
        self._top_up()

    def _top_up(self) -> None:
        while self.backlog and self.connections_open + self.opening < self.connections:
            self.opening += 1
            self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            await self.loop.create_connection(lambda: Client(self), self.host, self.port)
        except OSError:
            self.opening -= 1
            if self.backlog:  # count the oldest waiting request as failed, then try again
                due, k, attempt = self.backlog.popleft()
                self.done(due, now(), 0)
                await asyncio.sleep(0.05)
                self._top_up()
            return
        self.opening -= 1


class Client(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self, load: Load):
        self.load = load
        self.transport = None
        self.buf = bytearray()
        self.request: tuple | None = None  # (due, k, attempt, sent)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.load.connections_open += 1
        self.load.free(self)

    def send(self, due: float | None, k: int, attempt: int) -> None:
        self.request = (due, k, attempt, now())
        self.transport.write(self.load.requests[k % len(self.load.requests)])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.request is None:
            return
        try:
            got = parse_response(self.buf)
        except ValueError:
            self.transport.close()
            return
        if got is None:
            return
        status, size, close = got
        del self.buf[:size]
        due, _, _, sent = self.request
        self.request = None
        self.load.done(due, sent, status)
        if close:
            self.transport.close()
        else:
            self.load.free(self)

    def connection_lost(self, exc) -> None:
        request, self.request = self.request, None
        self.load.lost(self, request)


async def run(url: str, path: str, bodies: list[tuple[str, bytes]], *, rate: float | None, seconds: float,
              connections: int, once: bool) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    loop = asyncio.get_running_loop()
    prefix = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
              "x-agent-signature: ").encode()
    requests = [prefix + sig.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                for sig, body in bodies]
    total = len(requests) if once else int(rate * seconds)
    load = Load(loop, host, port, requests, total, connections)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = now()
    if total == 0:
        load.finished.set_result(None)
    elif once:
        for k in range(total):
            load.due(None, k)
    else:
        interval = 1.0 / rate
        lead = 0.05  # the first request is due this long after the start
        start, loop_start = started + lead, loop.time() + lead
        for k in range(total):  # one timer per request; its due time on the measuring clock
            loop.call_at(loop_start + k * interval, load.due, start + k * interval, k)
    # paced: what is still unanswered 30 s after the last due time counts as unfinished; once:
    # the pass takes as long as it takes (bounded by the caller's timeout)
    drain_limit = None if once else seconds + max(30.0, seconds)
    try:
        await asyncio.wait_for(asyncio.shield(load.finished), timeout=drain_limit)
    except asyncio.TimeoutError:
        pass
    elapsed = now() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    lat = sorted(load.latencies)
    statuses = load.statuses
    ok = statuses.get(200, 0)
    return {
        "mode": "once" if once else "paced",
        "offered_rate": None if once else rate,
        "requests": len(lat), "unfinished": total - len(lat), "ok": ok,
        "non_200": sum(v for k, v in statuses.items() if k != 200), "errors": load.errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "elapsed_s": round(elapsed, 3), "achieved_rate": round(len(lat) / elapsed, 1) if elapsed else 0,
        "p50_ms": round(_percentile(lat, 50) * 1000, 2), "p90_ms": round(_percentile(lat, 90) * 1000, 2),
        "p99_ms": round(_percentile(lat, 99) * 1000, 2), "max_ms": round((lat[-1] if lat else 0) * 1000, 2),
        "cpu_s": round(cpu, 3), "cpu_share_of_one_core": round(cpu / elapsed, 3) if elapsed else 0,
    }


def event_loop_runner(use_uvloop: bool):
    """``asyncio.run`` on uvloop's loop when asked for and installed, else on asyncio's own;
    with the name of the loop used."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run, "uvloop"
    return asyncio.run, "asyncio"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--path", default="/api/heartbeats")
    p.add_argument("--bodies", required=True, type=Path)
    p.add_argument("--rate", type=float, help="requests per second (open loop)")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--once", action="store_true", help="send every body once, as fast as possible")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    a = p.parse_args(argv)
    if not a.once and not a.rate:
        p.error("--rate is required unless --once")
    if a.connections < 1:
        p.error("--connections must be >= 1")
    bodies = read_bodies(a.bodies)
    runner, loop_name = event_loop_runner(not a.no_uvloop)
    t0 = time.monotonic()
    result = runner(run(a.url, a.path, bodies, rate=a.rate, seconds=a.seconds,
                        connections=a.connections, once=a.once))
    result["wall_s"] = round(time.monotonic() - t0, 3)
    result["event_loop"] = loop_name
    sys.stdout.write("BENCH_JSON " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
