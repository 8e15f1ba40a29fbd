"""A scripted fake HTTP server on 127.0.0.1 for exercising the real upstream clients.

Each incoming request takes the next reply from the script (a `Reply`, or a function of the
request that returns one) and is recorded with its method, path, headers and body. Once the script
is used up, requests get a non-retryable 418 naming the request, so a test that under-scripts fails
fast with a clear message instead of retrying.

The server is bounded: it listens on an ephemeral port of 127.0.0.1 only, speaks HTTP/1.0 (one
request per connection, no idle keep-alive threads), and `stop()` cuts every pending delay short
and joins the handler threads.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

HOST = "127.0.0.1"
UNSCRIPTED_STATUS = 418
GATE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `body` is sent as JSON unless it is `bytes` or `str` (sent verbatim).

    With `chunks`, the body is those pieces instead, written one after another `chunk_delay`
    seconds apart, and the connection closed after the last (server-sent events)."""

    status: int = 200
    body: Any = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: tuple[bytes, ...] = ()
    chunk_delay: float = 0.0
    content_type: str = "text/event-stream"
    # Stream the first `gate_after` chunks, then wait (at most GATE_TIMEOUT) for `gate`: a test
    # proves something happened while the rest was still unsent, without timing anything.
    gate: threading.Event | None = None
    gate_after: int = 0

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        if self.body is None:
            return b"", "application/json"
        return json.dumps(self.body).encode(), "application/json"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Reply | Callable[[RecordedRequest], Reply]


class FakeHttpServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: deque[Responder] = deque()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._server = _Server((HOST, 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-http",
            daemon=True,
        )
        self._started = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def script(self, *replies: Responder) -> FakeHttpServer:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)
        return self

    def start(self) -> Self:
        self._thread.start()
        self._started = True
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay
        if self._started:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()  # joins the handler threads

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            responder = self._script.popleft() if self._script else None
        if responder is None:
            return Reply(
                UNSCRIPTED_STATUS,
                {"errorMessages": [f"unscripted request {request.method} {request.path}"]},
            )
        return responder(request) if callable(responder) else responder

    def _sleep(self, seconds: float) -> bool:
        """Wait out a scripted delay; False if the server is stopping."""
        return not self._stopping.wait(seconds) if seconds > 0 else True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True
    fake: FakeHttpServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client dropping its connection mid-request is expected (timeouts)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5  # a client that never sends its request cannot pin a handler thread

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        fake = self.server.fake
        reply = fake._next_reply(request)
        if not fake._sleep(reply.delay):
            return
        if reply.chunks:
            self._stream(reply)
            return
        payload, content_type = reply.encoded()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (its timeout ran out) before the delayed answer

    def _stream(self, reply: Reply) -> None:
        fake = self.server.fake
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Cache-Control", "no-cache")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            for index, chunk in enumerate(reply.chunks):
                if index and not fake._sleep(reply.chunk_delay):
                    return
                if reply.gate is not None and index == reply.gate_after:
                    reply.gate.wait(GATE_TIMEOUT)
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError:
            pass  # the client went away mid-stream

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve() -> Iterator[FakeHttpServer]:
    """Body of a pytest fixture: a started server, stopped when the test ends."""
    server = FakeHttpServer().start()
    try:
        yield server
    finally:
        server.stop()
