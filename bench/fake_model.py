"""A 0 ms OpenAI-compatible fake model for the agent-loop bench, run as a separate process.

Stateless: each POST /v1/chat/completions is answered from the request alone.
- last message from the user: tool calls chosen by a marker in its text ("one tool", "three
  tools": the plans the parent passes with `--plans`, made from the teams' sample calls, see
  bench/calls.py), no marker -> a final answer;
- last message from the user and carrying `CALL_TOOL` followed by a JSON object
  (`{"name": ..., "arguments": {...}}`, see `call_tool_text`): that one call, whatever the plans
  (`bench.approval` sends a different cost centre each turn this way);
- last message a tool result (or anything else): a short final answer.

Streaming mode (`--stream-tokens N`, off by default, so the other benches see the behaviour
above): a request with `"stream": true` whose reply is a final answer is answered as OpenAI-style
SSE (`chat.completion.chunk` frames over chunked HTTP/1.1), N tokens (" t000", " t001", ...) one
every `--token-delay-ms`, then a usage frame and `[DONE]`. A user message may ask for another
count with `[tokens:N]`. If it carries `[stream:TAG]`, the wall-clock time (`time.time()`) just
after each token's frame was written is kept under TAG and served by `GET /stamps/TAG` (a JSON
list, one float per token): the benches measure from the provider's first write. A request
without `stream` gets the same text whole, at once; a reply with tool calls comes in one frame.

Stdlib only, so the bench's parent process imports nothing heavy from here. The server runs in its
own process so it does not compete for the GIL with the Temporal workers under test. Run it with
`fake_model_server()`, which starts it, waits for its port, and always terminates it. As a second
bound, the child exits when its stdin closes (the parent died) or after `--max-seconds`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ONE_TOOL = "one tool"
THREE_TOOLS = "three tools"
# marker -> the (tool, arguments) calls the model asks for when a user message carries it.
Plans = dict[str, list[tuple[str, dict[str, Any]]]]
FINAL_ANSWER = "Done: the tool results are above."
READY_PREFIX = "fake-model listening on port "
# A user message carrying this, then a JSON object {"name": ..., "arguments": {...}}, asks for
# exactly that call: a plan chosen per message, for arguments that must change from turn to turn.
CALL_TOOL = "call tool: "


def plans_for(calls: list[tuple[str, dict[str, Any]]]) -> Plans:
    """One tool: the first call; three tools: the first three."""
    return {ONE_TOOL: calls[:1], THREE_TOOLS: calls[:3]}


def plan_for(text: str, plans: Plans) -> list[tuple[str, dict[str, Any]]]:
    lowered = text.lower()
    if (
        THREE_TOOLS in lowered
    ):  # checked first: "three tools" never contains "one tool", but be sure
        return plans[THREE_TOOLS]
    if ONE_TOOL in lowered:
        return plans[ONE_TOOL]
    return []


def call_tool_text(name: str, arguments: dict[str, Any]) -> str:
    """The text that makes the fake model ask for this one call (see `requested_call`)."""
    return CALL_TOOL + json.dumps({"name": name, "arguments": arguments})


def requested_call(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The call a `call_tool_text` message asks for; [] when the text carries none."""
    start = text.find(CALL_TOOL)
    if start < 0:
        return []
    try:
        call, _ = json.JSONDecoder().raw_decode(text, start + len(CALL_TOOL))
    except json.JSONDecodeError:
        return []
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return []
    arguments = call.get("arguments")
    return [(call["name"], dict(arguments) if isinstance(arguments, dict) else {})]


TOKENS_MARKER = re.compile(r"\[tokens:(\d{1,5})\]")
STREAM_TAG_MARKER = re.compile(r"\[stream:([A-Za-z0-9_.-]{1,100})\]")
STAMPS_KEPT = 5000  # streams whose token times are kept for GET /stamps/TAG


def stream_token(index: int) -> str:
    """The text of token `index` of a streamed answer."""
    return f" t{index:03d}"


def streamed_text(tokens: int) -> str:
    """The whole answer a stream of `tokens` tokens spells."""
    return "".join(stream_token(i) for i in range(tokens))


def stream_tag_text(tag: str, tokens: int | None = None) -> str:
    """Markers asking for a stream whose token times are kept under `tag` (and of `tokens`)."""
    return f"[stream:{tag}]" + (f" [tokens:{tokens}]" if tokens is not None else "")


def _last_user_text(request: dict[str, Any]) -> str:
    messages = request.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") != "user":
        return ""
    content = last.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def answer(request: dict[str, Any], plans: Plans) -> dict[str, Any]:
    """The chat-completion body for one request (the shape of tests/support/fake_llm.py)."""
    messages = request.get("messages") or []
    last = messages[-1] if messages else {}
    calls: list[tuple[str, dict[str, Any]]] = []
    if last.get("role") == "user":
        content = last.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        calls = requested_call(text) or plan_for(text, plans)
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else FINAL_ANSWER}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:16]}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for name, args in calls
        ]
    prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
    prompt_tokens = max(1, prompt_chars // 4)
    completion_tokens = 5 + 15 * len(calls)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model") or "fake-model",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: LiteLLM's HTTP client reuses its connections
    disable_nagle_algorithm = True  # headers and body are separate writes: no delayed-ACK stall

    def do_GET(self) -> None:
        assert isinstance(self.server, _Server)
        if not self.path.startswith("/stamps/"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        with self.server.lock:
            stamps = list(self.server.stamps.get(self.path.removeprefix("/stamps/"), []))
        payload = json.dumps(stamps).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            request = json.loads(raw or b"{}")
        except json.JSONDecodeError as err:
            self._send(400, {"error": {"message": f"bad JSON: {err}", "type": "bad_request"}})
            return
        assert isinstance(self.server, _Server)
        body = answer(request, self.server.plans)
        if self.server.stream_tokens > 0:
            self._answer_streaming(request, body)
            return
        self._send(200, body)

    def _answer_streaming(self, request: dict[str, Any], body: dict[str, Any]) -> None:
        """Streaming mode: the final answer is `tokens` tokens, as SSE when the request streams."""
        assert isinstance(self.server, _Server)
        text = _last_user_text(request)
        count = TOKENS_MARKER.search(text)
        tokens = int(count.group(1)) if count else self.server.stream_tokens
        message = body["choices"][0]["message"]
        if message.get("tool_calls") is None:
            message["content"] = streamed_text(tokens)
            body["usage"]["completion_tokens"] = tokens
            body["usage"]["total_tokens"] = body["usage"]["prompt_tokens"] + tokens
        if not request.get("stream"):
            self._send(200, body)
            return
        tag = STREAM_TAG_MARKER.search(text)
        stamps: list[float] = []
        if tag is not None:
            with self.server.lock:
                self.server.stamps[tag.group(1)] = stamps
                while len(self.server.stamps) > STAMPS_KEPT:
                    self.server.stamps.pop(next(iter(self.server.stamps)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {
            "id": body["id"],
            "object": "chat.completion.chunk",
            "created": body["created"],
            "model": body["model"],
        }
        delay = self.server.token_delay_ms / 1000
        if message.get("tool_calls") is not None:
            calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            delta = {"role": "assistant", "content": None, "tool_calls": calls}
            self._frame({**base, "choices": [{"index": 0, "delta": delta}]})
            finish = "tool_calls"
        else:
            for index in range(tokens):
                if index:
                    time.sleep(delay)
                delta = {"content": stream_token(index)}
                if index == 0:
                    delta["role"] = "assistant"
                self._frame({**base, "choices": [{"index": 0, "delta": delta}]})
                stamps.append(time.time())
            finish = "stop"
        self._frame({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (request.get("stream_options") or {}).get("include_usage"):
            self._frame({**base, "choices": [], "usage": body["usage"]})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _frame(self, chunk: dict[str, Any]) -> None:
        self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        """One piece of a chunked HTTP/1.1 body (empty: the last)."""
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: one line per request would cost more than the answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # 100 conversations connect at once; a backlog of 5 drops SYNs
    plans: Plans = {}
    stream_tokens = 0  # > 0: streaming mode (see the module's docstring)
    token_delay_ms = 20.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.stamps: dict[str, list[float]] = {}


def serve(
    max_seconds: float, plans: Plans, stream_tokens: int = 0, token_delay_ms: float = 20.0
) -> int:
    server = _Server((HOST, 0), _Handler)
    server.plans = plans
    server.stream_tokens = stream_tokens
    server.token_delay_ms = token_delay_ms
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"{READY_PREFIX}{server.server_address[1]}", flush=True)
    # Bounded: stop when the parent goes away (stdin closes) or the lifetime runs out.
    watcher = threading.Thread(target=sys.stdin.buffer.read, daemon=True)
    watcher.start()
    watcher.join(timeout=max_seconds)
    server.shutdown()
    server.server_close()
    return 0


@contextmanager
def fake_model_server(
    plans: Plans,
    start_timeout: float = 15.0,
    max_seconds: float = 900.0,
    *,
    stream_tokens: int = 0,
    token_delay_ms: float = 20.0,
) -> Iterator[str]:
    """Start the fake model in a child process; yield its base URL (`http://127.0.0.1:<port>`).

    `stream_tokens` > 0 turns on streaming mode (see the module's docstring)."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--max-seconds",
            str(max_seconds),
            "--plans",
            json.dumps(plans),
            "--stream-tokens",
            str(stream_tokens),
            "--token-delay-ms",
            str(token_delay_ms),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], start_timeout)
        line = process.stdout.readline() if ready else ""
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(
                f"the fake model did not start within {start_timeout:.0f} s "
                f"(exit code {process.poll()}, said {line!r})"
            )
        yield f"http://{HOST}:{int(line[len(READY_PREFIX) :])}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--plans", type=json.loads, required=True, help="JSON: marker -> calls")
    parser.add_argument("--stream-tokens", type=int, default=0, help="> 0: streaming mode")
    parser.add_argument("--token-delay-ms", type=float, default=20.0)
    arguments = parser.parse_args()
    plans = {marker: [(n, dict(a)) for n, a in calls] for marker, calls in arguments.plans.items()}
    sys.exit(serve(arguments.max_seconds, plans, arguments.stream_tokens, arguments.token_delay_ms))
