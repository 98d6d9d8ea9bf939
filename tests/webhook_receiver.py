"""A real alert-webhook receiver for the tests: a threaded ``http.server`` on 127.0.0.1.

``mode`` decides how it answers: ``"ok"`` (200), ``"fail"`` (``fail_status``), ``"hang"``
(holds the request until ``release()``, then answers 200; the client has usually given up by
then). Every request is kept in ``requests`` (attempts) and the ones answered 2xx in
``delivered``.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    peer_port: int = 0
    status: int | None = None
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def key(self) -> tuple[int, str]:
        data = self.json
        return data["alert"]["id"], data["event"]


class Receiver:
    PATH = "/hooks/secret-path-xyz?key=secret-query"

    def __init__(self) -> None:
        self.mode = "ok"
        self.fail_status = 500
        self.requests: list[Received] = []
        self.delivered: list[Received] = []
        self.lock = threading.Lock()
        self.hanging = threading.Event()  # set while a request is held in "hang" mode
        self._release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{self.PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Receiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        self._release.set()

    def set_mode(self, mode: str, status: int = 500) -> None:
        with self.lock:
            self.mode = mode
            self.fail_status = status
            if mode == "hang":
                self._release.clear()
                self.hanging.clear()

    def wait_for(self, predicate, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.02)
        return False

    def delivered_keys(self) -> list[tuple[int, str]]:
        with self.lock:
            return [r.key for r in self.delivered]

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                rec = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                               self.client_address[1])
                with receiver.lock:
                    receiver.requests.append(rec)
                    mode, status = receiver.mode, receiver.fail_status
                if mode == "hang":
                    receiver.hanging.set()
                    receiver._release.wait(60)
                    status = 200
                elif mode == "ok":
                    status = 200
                rec.status = status
                payload = b'{"ok": true}' if status < 300 else b"receiver says no <b>"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except OSError:  # the client gave up (timeout)
                    return
                if 200 <= status < 300:  # after a hang the client may have given up already
                    with receiver.lock:
                        receiver.delivered.append(rec)

        return Handler
