"""The open-loop load generator of the bench (``bench/paced.py``), against a real local HTTP
server: every request is sent and answered once, latency is measured from each request's due
time (a server that stalls is charged for the queue it causes), broken connections are retried."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import paced


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self.stall_until = 0.0  # requests arriving before this time wait until then
        self.close_every = 0  # answer every n-th request with Connection: close
        self.drop_first = 0  # close the connection instead of answering the first n requests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv = self.server
        with srv.lock:
            if srv.drop_first > 0:
                srv.drop_first -= 1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            srv.bodies.append(body)
            n = len(srv.bodies)
        delay = srv.stall_until - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        answer = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if srv.close_every and n % srv.close_every == 0:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def receiver():
    srv = Receiver()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


BODIES = [(f"sig{i}", b'{"instance_id": "i-%d"}' % i) for i in range(7)]


def in_own_thread(fn, *args):
    """``fn(*args)`` on a thread of its own, as the generator runs in a process of its own: the
    test process may already run an event loop on this thread (Playwright's, for the browser
    tests), and ``asyncio.run`` refuses to start a second one there."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result(timeout=60)


def go(url: str, **kw) -> dict:
    kw.setdefault("connections", 4)
    kw.setdefault("once", False)
    kw.setdefault("rate", None)
    kw.setdefault("seconds", 1.0)
    runner, _ = paced.event_loop_runner(kw.pop("uvloop", True))
    return in_own_thread(runner, paced.run(url, "/api/heartbeats", BODIES, **kw))


@pytest.mark.parametrize("uvloop", [True, False])
def test_paced_sends_rate_times_seconds_requests_cycling_through_the_bodies(receiver, uvloop):
    r = go(receiver.url, rate=100, seconds=0.5, uvloop=uvloop)
    assert r["requests"] == r["ok"] == 50 and r["errors"] == r["unfinished"] == r["non_200"] == 0
    # request k carries body k mod 7 (the server sees them in arrival order, over 4 connections)
    assert Counter(receiver.bodies) == Counter(BODIES[k % len(BODIES)][1] for k in range(50))
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] < 500
    assert r["elapsed_s"] >= 0.49  # open loop: the last request is due 0.49 s after the first


def test_once_sends_every_body_exactly_once(receiver):
    r = go(receiver.url, once=True)
    assert r["ok"] == len(BODIES) and sorted(receiver.bodies) == sorted(b for _, b in BODIES)


def test_latency_counts_from_the_due_time_so_a_stalled_server_is_charged_for_its_queue(receiver):
    # the server answers nothing for the first 300 ms; requests keep coming due every 10 ms, on
    # 2 connections: a closed-loop generator would send 2 and wait, and report 2 slow requests
    receiver.stall_until = time.monotonic() + 0.35
    r = go(receiver.url, rate=100, seconds=0.6, connections=2)
    assert r["ok"] == 60
    # about 30 requests fell due during the stall and waited for it: the median is one of them
    assert r["p50_ms"] > 50 and r["max_ms"] > 250


def test_closed_and_broken_connections_are_replaced_and_their_requests_sent_again(receiver):
    receiver.close_every = 5
    receiver.drop_first = 2  # two requests whose connection breaks before an answer
    r = go(receiver.url, rate=100, seconds=0.4, connections=3)
    assert r["ok"] == 40 and r["errors"] == 0
    assert len(receiver.bodies) == 40


def test_a_server_that_is_not_there_gives_errors_not_a_hang():
    r = in_own_thread(asyncio.run, asyncio.wait_for(paced.run("http://127.0.0.1:9", "/x", BODIES, rate=20,
                                                              seconds=0.2, connections=2, once=False), timeout=30))
    assert r["ok"] == 0 and r["errors"] + r["unfinished"] == 4


@pytest.mark.parametrize("buf, expected", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", (200, 40, False)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no", None),  # body not complete yet
    (b"HTTP/1.1 200 OK\r\nContent-Len", None),  # head not complete yet
    (b"HTTP/1.1 429 Too Many\r\nconnection: close\r\ncontent-length: 0\r\n\r\nHTTP/1.1", (429, 63, True)),
])
def test_parse_response(buf, expected):
    assert paced.parse_response(bytearray(buf)) == expected


@pytest.mark.parametrize("buf", [b"SSH-2.0-x\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"])
def test_parse_response_refuses_what_it_cannot_read(buf):
    with pytest.raises(ValueError):
        paced.parse_response(bytearray(buf))
