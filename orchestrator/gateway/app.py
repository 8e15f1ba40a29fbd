"""The gateway's HTTP API: conversations, messages with a live SSE stream of their turn, the
events of a conversation from any cursor, cancel, end, approvals; the web chat at `/`.

Every /v1 route needs `Authorization: Bearer agk_...` (see orchestrator.gateway.auth). A
conversation belongs to the user who created it: anybody else is told it does not exist (404),
never that it is someone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.client import (
    ConversationEndedError,
    InvalidMessageError,
    check_conversation_id,
)
from orchestrator.events import StreamCursor
from orchestrator.gateway import streams
from orchestrator.gateway.auth import now_iso, verify_key
from orchestrator.gateway.errors import (
    ApiError,
    ErrorBody,
    install_error_handlers,
    not_found,
    unauthenticated,
)
from orchestrator.gateway.limits import BodyLimit
from orchestrator.gateway.mcp import McpEndpoint
from orchestrator.gateway.schemas import (
    ApprovalList,
    CancelBody,
    ConversationDetail,
    ConversationList,
    ConversationSummary,
    CreateConversation,
    DecideBody,
    Health,
    Me,
    SendMessage,
    approval,
)
from orchestrator.gateway.services import Services
from orchestrator.gateway.settings import GatewaySettings
from orchestrator.gateway.turns import accept, ended, send_error, temporal_error
from orchestrator.mcp_server import McpSettings
from orchestrator.models import (
    STATUS_QUERY,
    ApprovalRecord,
    CancelRequest,
    CancelResult,
    ConversationStatus,
    Decision,
    TurnResult,
    Usage,
)
from orchestrator.store_accounts import OwnedConversation
from shared.caller import innermost_message
from shared.log import get_logger

log = get_logger("gateway")

STATIC_DIR = Path(__file__).parent / "static"
EVENT_STREAM = "text/event-stream"
MAX_CONVERSATIONS_LISTED = 200
TURN_STATES = ("thinking", "running_tools", "awaiting_approval")
MAX_TURNS_SHOWN = 1000  # GET a conversation: its newest turns (all of them: agent history)

_bearer = HTTPBearer(auto_error=False, description="An API key: `agent keys create USER`.")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413)
}


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Who is asking: the user of the request's API key; 401 without a live key."""
    if credentials is None:
        raise unauthenticated("missing API key: send `Authorization: Bearer agk_...`")
    services: Services = request.app.state.services
    record = await verify_key(services.store, credentials.credentials)
    if record is None:
        raise unauthenticated("invalid or revoked API key")
    return record.user


User = Annotated[str, Depends(current_user)]


def create_app(
    settings: GatewaySettings, services: Services, mcp_settings: McpSettings | None = None
) -> FastAPI:
    """The gateway's ASGI app, serving `services` (opened, and closed, by the caller)."""
    # Our tools and ask_agent for MCP clients (orchestrator.gateway.mcp), at /mcp.
    mcp = McpEndpoint(services, mcp_settings or McpSettings()) if services else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with mcp.running() if mcp else contextlib.nullcontext():
            log.info("gateway ready", task_queue=services.task_queue)
            yield

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the gateway itself, not a
    # CDN, so the API docs work where the web chat does, offline.
    app = FastAPIOffline(
        title="Agent gateway",
        version="1",
        description="Durable LLM agent conversations over HTTP, with live turn streams (SSE).",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.state.services = services
    app.state.settings = settings
    if mcp is not None:
        app.router.routes.append(mcp.route())

    async def owned(conversation_id: str, user: str) -> OwnedConversation:
        """The conversation if `user` owns it; 404 otherwise (unknown or someone else's)."""
        # An id no store could hold (a NUL, a lone surrogate) is nobody's conversation.
        try:
            check_conversation_id(conversation_id)
            storable = True
        except InvalidMessageError:
            storable = False
        if len(conversation_id) <= 200 and storable:
            found = await services.store.owned_conversation(conversation_id)
            if found is not None and found.user == user:
                return found
        raise not_found(conversation_id)

    # ---- routes -------------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["meta"])
    async def healthz() -> Health:
        return Health(ok=True)

    @app.get("/v1/me", response_model=Me, tags=["meta"])
    async def me(user: User) -> Me:
        return Me(user=user)

    @app.post(
        "/v1/conversations",
        status_code=201,
        response_model=ConversationSummary,
        tags=["conversations"],
    )
    async def create_conversation(
        user: User, body: Annotated[CreateConversation | None, Body()] = None
    ) -> ConversationSummary:
        """A new conversation of yours. Its workflow starts with its first message."""
        conversation = OwnedConversation(
            conversation_id=f"c-{uuid.uuid4().hex}",
            user=user,
            title=(body.title if body else "").strip(),
            # Microseconds: conversations made in the same second still list newest first.
            created_at=now_iso("microseconds"),
        )
        await services.store.claim_conversation(conversation)
        log.info("conversation created", conversation_id=conversation.conversation_id, user=user)
        return _summary(conversation)

    @app.get("/v1/conversations", response_model=ConversationList, tags=["conversations"])
    async def list_conversations(
        user: User,
        limit: Annotated[int, Query(ge=1, le=MAX_CONVERSATIONS_LISTED)] = 50,
    ) -> ConversationList:
        """Your conversations, newest first."""
        rows = await services.store.owned_conversations(user, limit)
        return ConversationList(conversations=[_summary(row) for row in rows])

    @app.get(
        "/v1/conversations/{conversation_id}",
        response_model=ConversationDetail,
        tags=["conversations"],
    )
    async def get_conversation(conversation_id: str, user: User) -> ConversationDetail:
        """Its turns, its status while it runs, and the stream position to follow it from."""
        conversation = await owned(conversation_id, user)
        running = await _running(conversation_id)
        status: ConversationStatus | None = None
        cursor = StreamCursor()
        if running is not None:
            cursor = await services.feeds.cursor(conversation_id)
        # After the cursor: a turn that ends meanwhile is in the turns, or after the cursor.
        # The newest turns: a long conversation's page shows where it is now.
        turns = await services.store.latest_turns(conversation_id, MAX_TURNS_SHOWN)
        turn_running = False
        if running:
            try:
                status = await services.conversations.handle(conversation_id).query(
                    STATUS_QUERY,
                    result_type=ConversationStatus,
                    rpc_timeout=_seconds(settings.status_timeout_seconds),
                )
                turn_running = status.state in TURN_STATES
            except Exception as error:  # a courtesy: turns and cursor are what matter
                # The server holds a query while a workflow task runs (a model step as a local
                # activity): a running conversation that does not answer is in a turn.
                turn_running = True
                log.warning(
                    "status query failed", conversation_id=conversation_id, error=str(error)
                )
        return ConversationDetail(
            **_summary(conversation).model_dump(),
            turns=turns,
            status=status,
            cursor=str(cursor),
            turn_running=turn_running,
        )

    @app.post(
        "/v1/conversations/{conversation_id}/messages",
        response_model=TurnResult,
        tags=["conversations"],
        responses={
            200: {
                "content": {EVENT_STREAM: {}},
                "description": "The turn's result, or with `Accept: text/event-stream` its "
                "events (SSE) up to and including its answer or error.",
            }
        },
    )
    async def send_message(
        conversation_id: str,
        body: SendMessage,
        user: User,
        request: Request,
    ) -> Any:
        """Send a message. The same `message_id` sent again is answered once."""
        await owned(conversation_id, user)
        message_id = body.message_id or uuid.uuid4().hex
        wants_stream = EVENT_STREAM in request.headers.get("accept", "")
        if not wants_stream:
            try:
                return await services.conversations.send(
                    conversation_id, body.text, message_id=message_id, user=user
                )
            except Exception as error:
                raise send_error(error) from None
        after = await _turn_start(conversation_id, message_id, retry=body.message_id is not None)
        source = services.feeds.subscribe(conversation_id, after, until_message_id=message_id)
        first = asyncio.ensure_future(anext(source))
        accepting = asyncio.ensure_future(
            accept(services, conversation_id, body.text, message_id, user)
        )
        # A refusal (busy, ended, invalid) is a plain 4xx when it comes before the turn's first
        # event, which it does unless the conversation is busy with an earlier message.
        await asyncio.wait({first, accepting}, return_when=asyncio.FIRST_COMPLETED)
        if accepting.done() and accepting.exception() is not None:
            first.cancel()
            with contextlib.suppress(BaseException):
                await first
            await source.aclose()
            raise accepting.exception()  # type: ignore[misc]
        log.info("message sent", conversation_id=conversation_id, message_id=message_id)
        return StreamingResponse(
            streams.turn(
                services,
                source,
                accepting,
                first,
                conversation_id=conversation_id,
                text=body.text,
                message_id=message_id,
                user=user,
                after=after,
                keepalive=settings.keepalive_seconds,
            ),
            media_type=EVENT_STREAM,
            headers=streams.SSE_HEADERS,
        )

    async def _turn_start(conversation_id: str, message_id: str, *, retry: bool) -> StreamCursor:
        """Where a message's stream starts: the stream position now, or, for a message id the
        conversation already knows (a retried POST), the start of that message's turn."""
        if await _running(conversation_id) is None:
            return StreamCursor()
        now = await services.feeds.cursor(conversation_id)
        if not retry:
            return now
        try:
            page = await services.conversations.events(conversation_id, 0)
        except Exception:
            return now
        for event in page.events:
            if event.kind == "turn_started" and event.message_id == message_id:
                return StreamCursor(events=event.offset, tokens=now.tokens)
        return now

    @app.get(
        "/v1/conversations/{conversation_id}/events",
        tags=["conversations"],
        response_class=StreamingResponse,
        responses={200: {"content": {EVENT_STREAM: {}}, "description": "Live SSE stream."}},
    )
    async def follow(
        conversation_id: str,
        user: User,
        after: Annotated[
            str | None, Query(description="A cursor (an event id); default: now.")
        ] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """Every event of the conversation after the cursor, live, until you leave."""
        await owned(conversation_id, user)
        given = last_event_id if last_event_id is not None else after
        if given is not None:
            try:
                cursor = StreamCursor.parse(given)
            except ValueError as error:
                raise ApiError(400, "invalid_cursor", str(error)) from None
        elif await _running(conversation_id) is None:
            cursor = StreamCursor()
        else:
            cursor = await services.feeds.cursor(conversation_id)
        source = services.feeds.subscribe(conversation_id, cursor)
        return StreamingResponse(
            streams.live(source, settings.keepalive_seconds),
            media_type=EVENT_STREAM,
            headers=streams.SSE_HEADERS,
        )

    @app.post(
        "/v1/conversations/{conversation_id}/cancel",
        response_model=CancelResult,
        tags=["conversations"],
    )
    async def cancel(
        conversation_id: str, user: User, body: Annotated[CancelBody | None, Body()] = None
    ) -> CancelResult:
        """Cancel the running turn (messages queued behind it are answered next)."""
        await owned(conversation_id, user)
        request = CancelRequest(requested_by=user, reason=body.reason if body else "")
        try:
            return await services.conversations.cancel(conversation_id, request)
        except ConversationEndedError:
            raise ended() from None
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:  # no message yet: nothing runs
                return CancelResult(conversation_id=conversation_id, cancelled=False)
            raise temporal_error(error) from None
        except WorkflowUpdateFailedError as error:
            raise ApiError(409, "refused", innermost_message(error)) from None

    @app.post(
        "/v1/conversations/{conversation_id}/end", response_model=Usage, tags=["conversations"]
    )
    async def end(conversation_id: str, user: User) -> Usage:
        """End the conversation; its usage. An ended conversation takes no more messages."""
        await owned(conversation_id, user)
        try:
            return await services.conversations.end(conversation_id)
        except ConversationEndedError:
            raise ended() from None
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise ApiError(
                    409, "not_started", "the conversation has no messages yet; nothing to end"
                ) from None
            raise temporal_error(error) from None
        except WorkflowUpdateFailedError as error:
            raise ApiError(409, "refused", innermost_message(error)) from None

    @app.get("/v1/approvals", response_model=ApprovalList, tags=["approvals"])
    async def approvals(user: User) -> ApprovalList:
        """The tool calls waiting for a decision in your conversations."""

        async def own(conversation_ids: list[str]) -> list[str]:
            return await services.store.owned_among(user, conversation_ids)

        try:
            # Only the caller's conversations are asked: nobody else's status is read, and
            # others' pending calls cannot crowd the caller's out of the limit.
            pending = await services.conversations.pending_approvals(only=own)
        except RPCError as error:
            raise temporal_error(error) from None
        return ApprovalList(approvals=[approval(cid, call) for cid, call in pending])

    @app.post(
        "/v1/conversations/{conversation_id}/approvals/{call_id}",
        response_model=ApprovalRecord,
        tags=["approvals"],
    )
    async def decide(
        conversation_id: str, call_id: str, body: DecideBody, user: User
    ) -> ApprovalRecord:
        """Approve or deny a call waiting for a decision; you are the approver."""
        await owned(conversation_id, user)
        if not call_id or len(call_id) > 200:
            raise ApiError(400, "invalid_request", "call_id: 1 to 200 characters")
        decision = Decision(
            call_id=call_id, verdict=body.verdict, approver=user, reason=body.reason
        )
        try:
            return await services.conversations.decide(conversation_id, decision)
        except ConversationEndedError:
            raise ended() from None
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise ApiError(
                    404, "not_found", f"no call {call_id[:200]!r} waits for a decision"
                ) from None
            raise temporal_error(error) from None
        except WorkflowUpdateFailedError as error:
            raise ApiError(409, "refused", innermost_message(error)) from None

    async def _running(conversation_id: str) -> bool | None:
        """True while the conversation's workflow runs, False once it closed, None before its
        first message."""
        try:
            description = await services.conversations.handle(conversation_id).describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            raise temporal_error(error) from None
        return description.status == WorkflowExecutionStatus.RUNNING

    # ---- the web chat -------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return JSONResponse({"gateway": "ok", "docs": "/docs"})
        return FileResponse(page, media_type="text/html")

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _summary(conversation: OwnedConversation) -> ConversationSummary:
    return ConversationSummary(
        conversation_id=conversation.conversation_id,
        title=conversation.title,
        created_at=conversation.created_at,
    )


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
