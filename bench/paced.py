"""A small open-loop HTTP load generator (asyncio, keep-alive connections, raw HTTP/1.1).

Debian's ``wrk`` has no fixed-rate mode (that is ``wrk2``), so the latency at a fixed offered
load comes from here: request ``k`` is *due* at ``start + k / rate`` whatever happened before
(open loop), and its latency is measured from that due time, not from when a connection was
free to send it, so a server that falls behind is charged for the queue it causes (no
coordinated omission, as in wrk2). ``--once`` sends every body exactly once as fast as the
connections allow (the warm-up pass). Prints one JSON line with the percentiles and this
process's own CPU time, so its share of the 2 cores is reported next to the results.

    python -m bench.paced --url http://127.0.0.1:8000 --bodies bodies.tsv --rate 800 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.fleet import read_bodies


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(pct / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    if length:
        await reader.readexactly(length)
    return status, close


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
    queue: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader = writer = None
        while True:
            item = await queue.get()
            if item is None:
                break
            due, k = item
            if due is None:
                due = loop.time()
            req = requests[k % len(requests)]
            for attempt in range(3):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(req)
                    status, close = await _read_response(reader)
                    if close:
                        writer.close()
                        writer = None
                    break
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    if writer is not None:
                        writer.close()
                    writer = None
                    if attempt == 2:
                        status = 0
            latencies.append(loop.time() - due)
            if status == 0:
                errors += 1
            else:
                statuses[status] = statuses.get(status, 0) + 1
        if writer is not None:
            writer.close()

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    started = loop.time()
    if once:
        for k in range(total):
            queue.put_nowait((None, k))
    else:
        interval = 1.0 / rate
        start = started + 0.05
        for k in range(total):
            due = start + k * interval
            delay = due - loop.time()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            queue.put_nowait((due, k))
    for _ in workers:
        queue.put_nowait(None)
    # paced: what is still queued 30 s after the last due time counts as unfinished; once: the
    # pass takes as long as it takes (bounded by the caller's timeout)
    drain_limit = None if once else max(30.0, seconds)
    done, pending = await asyncio.wait(workers, timeout=drain_limit)
    for task in pending:
        task.cancel()
    elapsed = loop.time() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    lat = sorted(latencies)
    ok = statuses.get(200, 0)
    return {
        "mode": "once" if once else "paced",
        "offered_rate": None if once else rate,
        "requests": len(lat), "unfinished": total - len(lat), "ok": ok,
        "non_200": sum(v for k, v in statuses.items() if k != 200), "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "elapsed_s": round(elapsed, 3), "achieved_rate": round(len(lat) / elapsed, 1) if elapsed else 0,
        "p50_ms": round(_percentile(lat, 50) * 1000, 2), "p90_ms": round(_percentile(lat, 90) * 1000, 2),
        "p99_ms": round(_percentile(lat, 99) * 1000, 2), "max_ms": round((lat[-1] if lat else 0) * 1000, 2),
        "cpu_s": round(cpu, 3), "cpu_share_of_one_core": round(cpu / elapsed, 3) if elapsed else 0,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--path", default="/api/heartbeats")
    p.add_argument("--bodies", required=True, type=Path)
    p.add_argument("--rate", type=float, help="requests per second (open loop)")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--once", action="store_true", help="send every body once, as fast as possible")
    a = p.parse_args(argv)
    if not a.once and not a.rate:
        p.error("--rate is required unless --once")
    bodies = read_bodies(a.bodies)
    t0 = time.monotonic()
    result = asyncio.run(run(a.url, a.path, bodies, rate=a.rate, seconds=a.seconds,
                             connections=a.connections, once=a.once))
    result["wall_s"] = round(time.monotonic() - t0, 3)
    sys.stdout.write("BENCH_JSON " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
