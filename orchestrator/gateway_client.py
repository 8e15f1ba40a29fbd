"""`agent ask|send|chat --gateway URL`: conversations through the HTTP/SSE gateway, as the user
whose API key is in $AGENT_API_KEY (or `--api-key-file`), instead of Temporal directly.

A turn is printed live from the gateway's SSE stream with the direct mode's `TurnPrinter`. A
dropped stream is resumed from the last event id (`Last-Event-ID` on GET .../events) until the
message's answer or error, so nothing is lost or shown twice. Every gateway error becomes one
line (`CliError`, exit 1): the API's `error.message`, a hint for a refused key, or the URL that
cannot be reached. Imported by `orchestrator.cli` only when a gateway is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import httpx
import typer
from httpx_sse import EventSource, SSEError
from pydantic import BaseModel, ValidationError
from rich.markup import escape

from orchestrator.approval_commands import parse_answer
from orchestrator.chat_loop import chat_loop
from orchestrator.cli_support import CliError, first_line, run
from orchestrator.client import (
    check_conversation_id,
    check_message,
)
from orchestrator.events import TURN_END_KINDS, StreamEvent, TurnEvent
from orchestrator.gateway.schemas import ConversationDetail, ConversationSummary, Me
from orchestrator.live import LiveShown, TurnPrinter
from orchestrator.models import ApprovalRecord, TurnResult, Usage
from orchestrator.render import (
    OFFLINE_NOTICE,
    describe_decision,
    err,
    out,
    print_error,
    print_pending,
    print_turn,
    turn_json,
)

GATEWAY_URL_ENV = "AGENT_GATEWAY_URL"
API_KEY_ENV = "AGENT_API_KEY"
TITLE_CHARS = 60
# A request's connect and write limits; a stream's read limit is well over the gateway's
# keep-alive interval (15 s), so a silent stream is a dead one.
TIMEOUT = httpx.Timeout(30.0, read=60.0)
# A message sent without a stream waits for its whole turn (tools, approvals) on one request.
TURN_TIMEOUT = httpx.Timeout(30.0, read=None)
# Waits before each attempt to resume a dropped stream (about a minute in all: long enough for a
# gateway to restart).
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, *(5.0,) * 8)
SSE = {"Accept": "text/event-stream"}

M = TypeVar("M", bound=BaseModel)
ApprovalEventHandler = Callable[[TurnEvent], Awaitable[None]]


class GatewayError(CliError):
    """A gateway answer or failure, as one line. `status` is the HTTP status, 0 without one."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _ErrorDetail(BaseModel):
    code: str = ""
    message: str = ""


class _ErrorReply(BaseModel):
    """Every gateway error's body: `{"error": {"code", "message"}}`."""

    error: _ErrorDetail


# ---- the client -----------------------------------------------------------------------------
def gateway_url(url: str) -> str:
    """`url` checked and without a trailing slash; CliError when it is no http(s) URL."""
    text = url.strip().rstrip("/")
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise CliError(f"not a gateway URL: {url[:200]!r} (expected e.g. http://127.0.0.1:8088)")
    return text


def read_key(key_file: Path | None) -> tuple[str, str]:
    """The API key, and where it came from (for the hint when the gateway refuses it)."""
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as error:
            raise CliError(
                f"cannot read the API key file {key_file}: {error.strerror or error}"
            ) from None
        source = f"the key in {key_file}"
    else:
        key = os.environ.get(API_KEY_ENV, "").strip()
        source = API_KEY_ENV
        if not key:
            raise CliError(
                f"no API key for the gateway: set {API_KEY_ENV} (or pass --api-key-file PATH); "
                "`agent keys create USER` makes one"
            )
    if not key or not key.isascii() or any(ch.isspace() or not ch.isprintable() for ch in key):
        raise CliError(f"not an API key (agk_...): check {source}")
    return key, source


class GatewayClient:
    """The gateway's API, as one user (the key's): typed answers, one-line errors."""

    def __init__(self, url: str, key: str, key_source: str) -> None:
        self.url = url
        self._key_source = key_source
        self._http = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT
        )

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._http.aclose()

    # ---- requests ---------------------------------------------------------------------------
    async def me(self) -> Me:
        return await self._call(Me, "GET", "/v1/me")

    async def create(self, title: str) -> ConversationSummary:
        return await self._call(
            ConversationSummary, "POST", "/v1/conversations", json={"title": title}
        )

    async def conversation(self, conversation_id: str) -> ConversationDetail:
        return await self._call(ConversationDetail, "GET", _path(conversation_id))

    async def send(self, conversation_id: str, text: str, message_id: str) -> TurnResult:
        """The turn's result (no stream). Sent again (the same message id: answered once) when
        the connection drops while it waits."""
        body = {"text": text, "message_id": message_id}
        path = _path(conversation_id, "messages")
        failures = 0
        while True:
            try:
                return await self._call(TurnResult, "POST", path, json=body, timeout=TURN_TIMEOUT)
            except GatewayError as error:
                if failures >= len(RECONNECT_DELAYS) or not _retryable(error, failures == 0):
                    raise
            await asyncio.sleep(RECONNECT_DELAYS[failures])
            failures += 1

    async def end(self, conversation_id: str) -> Usage:
        return await self._call(Usage, "POST", _path(conversation_id, "end"))

    async def decide(
        self, conversation_id: str, call_id: str, verdict: str, reason: str
    ) -> ApprovalRecord:
        path = _path(conversation_id, "approvals", call_id)
        body = {"verdict": verdict, "reason": reason}
        return await self._call(ApprovalRecord, "POST", path, json=body)

    async def turn_events(
        self, conversation_id: str, text: str, message_id: str
    ) -> AsyncGenerator[StreamEvent, None]:
        """Send the message and yield its turn's events, up to and including its answer or error.

        A stream that drops (or closes early) is resumed after the last event received, with
        `Last-Event-ID`; one that drops before any event is sent again (the same message id: the
        gateway answers it once, and streams its turn from the start)."""
        position: str | None = None
        failures = 0
        while True:
            problem: GatewayError
            try:
                async for event in self._stream(conversation_id, text, message_id, position):
                    position, failures = event.id, 0
                    yield event
                    if _ends_turn(event, message_id):
                        return
                problem = _Dropped("the stream closed before the answer")
            except GatewayError as error:
                if not _retryable(error, position is None and failures == 0):
                    raise
                problem = error
            if failures >= len(RECONNECT_DELAYS):
                raise GatewayError(f"lost the turn's stream from {self.url}: {problem}")
            await asyncio.sleep(RECONNECT_DELAYS[failures])
            failures += 1

    # ---- plumbing -----------------------------------------------------------------------------
    async def _stream(
        self, conversation_id: str, text: str, message_id: str, after: str | None
    ) -> AsyncIterator[StreamEvent]:
        if after is None:
            request = self._http.build_request(
                "POST",
                _path(conversation_id, "messages"),
                json={"text": text, "message_id": message_id},
                headers=SSE,
            )
        else:
            request = self._http.build_request(
                "GET", _path(conversation_id, "events"), headers={**SSE, "Last-Event-ID": after}
            )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as error:
            raise self._transport_error(error) from None
        try:
            if not response.is_success:
                await response.aread()
                raise self._refusal(response)
            async for sse in EventSource(response).aiter_sse():
                try:
                    yield StreamEvent.model_validate_json(sse.data)
                except ValidationError:
                    raise self._unexpected("a stream event") from None
        except SSEError:
            raise self._unexpected("an event stream") from None
        except httpx.HTTPError as error:
            raise self._transport_error(error) from None
        finally:
            await response.aclose()

    async def _call(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> M:
        try:
            response = await self._http.request(method, path, json=json, timeout=timeout or TIMEOUT)
        except httpx.HTTPError as error:
            raise self._transport_error(error) from None
        if not response.is_success:
            raise self._refusal(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError:
            raise self._unexpected(model.__name__) from None

    def _refusal(self, response: httpx.Response) -> GatewayError:
        """An error answer as one line: the API's message (with a hint for a refused key)."""
        try:
            message = _ErrorReply.model_validate_json(response.content).error.message
        except ValidationError:
            message = ""
        status = response.status_code
        if not message:
            message = f"the gateway at {self.url} answered HTTP {status}"
        if status == 401:
            message = (
                f"the gateway refused the API key ({message.rstrip('.')}): check {self._key_source}"
            )
        return GatewayError(message, status)

    def _transport_error(self, error: httpx.HTTPError) -> GatewayError:
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
            return _Unreachable(
                f"cannot reach the gateway at {self.url}: {_os_reason(error)}. Is it up? "
                f"(`make up` starts it; {GATEWAY_URL_ENV} or --gateway names it)"
            )
        if isinstance(error, httpx.TimeoutException):
            return _Dropped(f"the gateway at {self.url} did not answer in time")
        return _Dropped(f"the connection to the gateway at {self.url} broke: {first_line(error)}")

    def _unexpected(self, what: str) -> GatewayError:
        return GatewayError(f"{self.url} did not answer with {what}: is it the agent gateway?")


def _os_reason(error: BaseException) -> str:
    """Why a connection failed, as the OS said it (`connection refused`), not httpx's summary
    (`All connection attempts failed`)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            code = seen.errno or 0  # negative: a getaddrinfo code, told by strerror
            return (os.strerror(code) if code > 0 else str(seen.strerror)).lower()
        seen = seen.__cause__ or seen.__context__
    return first_line(error)


class _Dropped(GatewayError):
    """A connection that broke after it was made (the request may have arrived)."""


class _Unreachable(GatewayError):
    """No connection could be made."""


def _retryable(error: GatewayError, first_try: bool) -> bool:
    """Whether to send a request again (the same message id: answered once). A connection that
    broke, always; while a gateway restarts (unreachable, or Temporal away: 502-504), only if
    the first try worked, so a wrong URL or a stopped stack fails at once."""
    if isinstance(error, _Dropped):
        return True
    return not first_try and (isinstance(error, _Unreachable) or error.status in (502, 503, 504))


def _path(conversation_id: str, *parts: str) -> str:
    return "/".join(
        ["/v1/conversations", quote(conversation_id, safe=""), *(quote(p, safe="") for p in parts)]
    )


def _ends_turn(event: StreamEvent, message_id: str) -> bool:
    """The message's answer or error. Without a turn event it is the gateway's own last event of
    a message stream (the turn's result, or why it could not be answered)."""
    if event.kind not in TURN_END_KINDS:
        return False
    return event.event is None or event.event.message_id == message_id


@contextlib.asynccontextmanager
async def connect(url: str, key_file: Path | None) -> AsyncIterator[GatewayClient]:
    key, source = read_key(key_file)
    async with GatewayClient(gateway_url(url), key, source) as client:
        yield client


# ---- turns ------------------------------------------------------------------------------------
async def send_live(
    client: GatewayClient,
    conversation_id: str,
    text: str,
    on_approval: ApprovalEventHandler | None = None,
) -> tuple[TurnResult, LiveShown]:
    """Send a message and print its turn as it streams; the result, and what of it was shown."""
    message_id = uuid.uuid4().hex
    printer = TurnPrinter()
    last: StreamEvent | None = None
    async with contextlib.aclosing(client.turn_events(conversation_id, text, message_id)) as events:
        async for event in events:
            printer.show(event)
            last = event
            if event.kind == "approval_requested" and event.event and on_approval is not None:
                printer.end_line()
                await on_approval(event.event)
    assert last is not None  # turn_events ends with the turn's last event, or raises
    printer.end_line()
    if last.event is None and last.kind == "error":
        # The gateway's own ending: the message could not be answered (or not in time).
        raise GatewayError(last.text or "the message could not be answered")
    try:
        # The whole result (tool calls, notes, approvals): the same message id is answered once.
        result = await client.send(conversation_id, text, message_id)
    except GatewayError:
        if last.kind != "answer":
            raise GatewayError(last.text or "the turn failed") from None
        result = TurnResult(conversation_id=conversation_id, answer=last.text or "", message=text)
    return result, printer.finish(result)


async def _turn(
    client: GatewayClient,
    conversation_id: str,
    text: str,
    *,
    live: bool,
    on_approval: ApprovalEventHandler | None,
) -> tuple[TurnResult, LiveShown]:
    if live:
        return await send_live(client, conversation_id, text, on_approval)
    return await client.send(conversation_id, text, uuid.uuid4().hex), LiveShown()


async def announce_model(client: GatewayClient, conversation_id: str) -> None:
    """The offline-model notice and unavailable tool services, as the direct mode shows them."""
    try:
        status = (await client.conversation(conversation_id)).status
    except GatewayError:
        return
    if status is None:
        return
    if status.offline_model:
        err.print(OFFLINE_NOTICE)
    if status.unavailable_endpoints:
        err.print(
            "[yellow]tool services unavailable:[/] " + ", ".join(status.unavailable_endpoints)
        )


def announce_approval(client: GatewayClient, conversation_id: str) -> ApprovalEventHandler:
    """`ask`/`send`: say the turn waits, and how to decide it (no prompt: a script may run it)."""

    async def announce(event: TurnEvent) -> None:
        path = _path(conversation_id, "approvals", event.call_id or "CALL_ID")
        err.print(
            f"[yellow]waiting for approval:[/] {escape(event.tool or '')} on "
            f"{escape(event.service or '')} ({escape(event.detail or '')}) · decide it in "
            f"the web chat ({escape(client.url)}/), or: curl -X POST -H "
            f"'Authorization: Bearer ${API_KEY_ENV}' -H 'Content-Type: application/json' "
            f'-d \'{{"verdict": "approve"}}\' {escape(client.url + path)}',
            soft_wrap=True,
        )

    return announce


def prompt_for_approval(client: GatewayClient, conversation_id: str) -> ApprovalEventHandler:
    """`chat`: show the call, ask y/n (and an optional reason), send the decision. End of input
    while asking raises EOFError: the turn keeps waiting on the server."""

    async def decide(event: TurnEvent) -> None:
        try:  # the conversation's status, not GET /v1/approvals: that one lags behind
            status = (await client.conversation(conversation_id)).status
        except GatewayError as error:
            print_error(str(error))
            return
        waiting = status.pending_approvals if status else []
        pending = next((p for p in waiting if p.call_id == event.call_id), None)
        if pending is None:  # decided already (elsewhere, or timed out)
            return
        print_pending(conversation_id, pending)
        while True:
            line = await asyncio.to_thread(
                out.input,
                f"[bold]approve? {escape('[y/n]')}[/] [dim](optionally followed by a reason)[/] ",
            )
            answer = parse_answer(line)
            if answer is None:
                out.print("answer y or n, optionally followed by a reason")
                continue
            try:
                record = await client.decide(conversation_id, pending.call_id, *answer)
            except GatewayError as error:
                print_error(str(error))
                if error.status == 400:  # e.g. a reason too long: ask again
                    continue
                return  # decided elsewhere first, timed out: the chat goes on
            out.print(
                f"{escape(pending.tool)}: {escape(describe_decision(record))}", soft_wrap=True
            )
            return

    return decide


# ---- commands (called by orchestrator.cli) --------------------------------------------------
def _agent(url: str) -> str:
    """How to run `agent` against this gateway again: `--gateway URL` unless the env names it."""
    named = os.environ.get(GATEWAY_URL_ENV, "").strip().rstrip("/")
    return "agent" if named == url.strip().rstrip("/") else f"agent --gateway {url}"


def _title(text: str) -> str:
    return " ".join(text.split())[:TITLE_CHARS]


def _refuse_user(user: str | None) -> None:
    if user is not None:
        _fail("--as does not apply with --gateway: the API key says who you are")


def _fail(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(1)


def _print(result: TurnResult, shown: LiveShown, as_json: bool) -> None:
    if as_json:
        print(json.dumps(turn_json(result), ensure_ascii=False))
    else:
        print_turn(result, answer_shown=shown.answer, tools_shown=shown.tools)


def ask_or_send(
    url: str,
    key_file: Path | None,
    conversation_id: str | None,
    message: str,
    *,
    as_json: bool,
    live: bool,
    user: str | None,
) -> None:
    """`agent ask` (no conversation id: a new conversation) or `agent send ID`."""
    _refuse_user(user)

    async def work() -> tuple[TurnResult, LiveShown]:
        check_message(message)  # before connecting: refused without a server
        if conversation_id is not None:
            check_conversation_id(conversation_id)
        async with connect(url, key_file) as client:
            cid = conversation_id or (await client.create(_title(message))).conversation_id
            on_approval = announce_approval(client, cid)
            outcome = await _turn(client, cid, message, live=live, on_approval=on_approval)
            if not as_json:
                await announce_model(client, cid)
            return outcome

    result, shown = run(work)
    _print(result, shown, as_json)
    if conversation_id is None and not as_json:
        cid = result.conversation_id
        err.print(f'[dim]conversation {cid} · continue with `{_agent(url)} send {cid} "..."`[/]')
    if not result.ok:
        raise typer.Exit(1)


def chat(url: str, key_file: Path | None, conversation_id: str | None, user: str | None) -> None:
    """`agent chat`: a new conversation (made with the first message) or `-c ID`, in a loop."""
    _refuse_user(user)

    async def work() -> None:
        if conversation_id is not None:
            check_conversation_id(conversation_id)
        async with connect(url, key_file) as client:
            await _chat(client, conversation_id)

    run(work)


async def _chat(client: GatewayClient, conversation_id: str | None) -> None:
    cid = conversation_id
    if cid is not None:
        detail = await client.conversation(cid)
        out.print(f"[bold]conversation[/] {cid}  ·  /exit to leave, /end to close it")
        for turn in detail.turns[-3:]:
            out.print(f"[dim]you: {escape(turn.message)}[/]")
            out.print(f"[dim]agent: {escape(turn.answer or turn.error or '')}[/]")
    else:
        me = await client.me()  # a wrong URL or key is told now, not after the first message
        out.print(
            f"[bold]new conversation[/] as {escape(me.user)} on {escape(client.url)}  ·  "
            "/exit to leave, /end to close it"
        )
    await chat_loop(GatewayChat(client, cid))


class GatewayChat:
    """`agent chat --gateway`: the conversation is made by the first message when new."""

    def __init__(self, client: GatewayClient, conversation_id: str | None) -> None:
        self._client = client
        self._conversation_id = conversation_id

    async def send(self, message: str) -> tuple[TurnResult, LiveShown]:
        if self._conversation_id is None:
            self._conversation_id = (await self._client.create(_title(message))).conversation_id
        cid = self._conversation_id
        return await send_live(self._client, cid, message, prompt_for_approval(self._client, cid))

    async def end(self) -> str:
        if self._conversation_id is None:
            return "nothing to end: no message was sent"
        try:
            await self._client.end(self._conversation_id)
        except GatewayError as error:
            return str(error)
        return "conversation ended"

    async def announce_model(self) -> None:
        assert self._conversation_id is not None  # a turn was answered
        await announce_model(self._client, self._conversation_id)

    def waiting_hint(self) -> str:
        return (
            f"the turn keeps waiting for approval: decide it in the web chat ({self._client.url}/)"
        )

    def resume_hint(self) -> str | None:
        cid = self._conversation_id
        return (
            None
            if cid is None
            else f"resume with `{_agent(self._client.url)} chat --conversation {cid}`"
        )
