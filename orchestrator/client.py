"""Client-side access to conversations, shared by the CLI, the demo and the tests.

Imports no litellm and no workflow code: it talks to the workflow by name.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.events import EVENTS_QUERY, EventsPage
from orchestrator.models import (
    CANCEL_UPDATE,
    CONVERSATION_CONTINUED_ERROR,
    CONVERSATION_WORKFLOW,
    DECIDE_UPDATE,
    END_UPDATE,
    READ_CONVERSATION_WORKFLOW,
    REFRESH_TOOLS_UPDATE,
    SEND_MESSAGE_UPDATE,
    STATUS_QUERY,
    TURNS_QUERY,
    ApprovalRecord,
    CancelRequest,
    CancelResult,
    ConversationInput,
    ConversationStatus,
    Decision,
    PendingApproval,
    ReadConversationInput,
    TurnResult,
    Usage,
)
from shared.config import AWAITING_APPROVAL_ATTRIBUTE
from shared.telemetry import client_span, traces

R = TypeVar("R")

# The server refuses payloads over 2 MB and a too-large message fails the conversation's workflow
# task again and again (PAYLOADS_TOO_LARGE) instead of being refused: refuse far below that, on
# the client, before anything is sent. A message also travels in the turn's result and in the
# answers a conversation carries across continue-as-new, hence the wide margin.
# The root of a turn's trace: one user message, as the client sent it (and sent it again).
MESSAGE_SPAN = "agent message"
MAX_MESSAGE_BYTES = 256 * 1024
# ConversationInput.user's own limit, checked before anything is sent.
MAX_USER_CHARS = 200
# A message sent again after its conversation continued as new is answered by the next run; a
# bound keeps a misbehaving workflow from turning that into an endless loop.
MAX_CONTINUED_RETRIES = 10
# `pending_approvals` queries every running conversation: a conversation whose worker is gone
# would hold a query until the server gives up, so each gets a short deadline and is skipped.
STATUS_QUERY_TIMEOUT = timedelta(seconds=5)
STATUS_QUERY_CONCURRENCY = 16
# Conversations awaiting a decision looked at when only some of them are wanted (one user's):
# finding ids is a cheap visibility page; only the wanted ones are then asked for their calls.
MAX_AWAITING_SCANNED = 10_000


class InvalidMessageError(ValueError):
    """A message or conversation id that cannot be sent: not valid UTF-8, empty, or too large."""


class ConversationEndedError(Exception):
    """The conversation has ended; `usage` is its final total when the server still has it."""

    def __init__(self, conversation_id: str, usage: Usage | None = None) -> None:
        super().__init__(f"conversation {conversation_id} has already ended")
        self.conversation_id = conversation_id
        self.usage = usage


def utf8_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (naming the character and its 1-based position), or
    None. Python turns invalid UTF-8 bytes in argv or stdin into lone surrogates U+DC80..U+DCFF
    (surrogateescape); the original byte is recovered to name it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        character = text[error.start]
        position = error.start + 1
        if 0xDC80 <= ord(character) <= 0xDCFF:
            return f"invalid UTF-8 byte 0x{ord(character) - 0xDC00:02x} at character {position}"
        return f"unpaired surrogate U+{ord(character):04X} at character {position}"
    return None


def nul_problem(text: str) -> str | None:
    """Where `text` holds a NUL character, or None. PostgreSQL's text columns refuse it: ids,
    user names and titles are stored as they are (a 500 or a failing step, not a clear error).
    A message's text may hold one: it is stored inside JSON, escaped."""
    position = text.find("\x00")
    return None if position < 0 else f"a NUL character (U+0000) at character {position + 1}"


def check_message(text: str) -> None:
    """Raise InvalidMessageError unless `text` can be sent as a message."""
    problem = utf8_problem(text)
    if problem:
        raise InvalidMessageError(f"the message is not valid UTF-8: {problem}")
    if not text.strip():
        raise InvalidMessageError("the message is empty")
    size = len(text.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise InvalidMessageError(
            f"the message is {size} bytes of UTF-8; the limit is {MAX_MESSAGE_BYTES} bytes "
            f"({MAX_MESSAGE_BYTES // 1024} KiB)"
        )


def check_conversation_id(conversation_id: str) -> None:
    """Raise InvalidMessageError unless `conversation_id` can be used as a workflow id."""
    problem = utf8_problem(conversation_id)
    if problem:
        raise InvalidMessageError(f"the conversation id is not valid UTF-8: {problem}")
    if nul_problem(conversation_id):
        raise InvalidMessageError(f"the conversation id holds {nul_problem(conversation_id)}")
    if not conversation_id.strip():
        raise InvalidMessageError("the conversation id is empty")


def check_user(user: str) -> None:
    """Raise InvalidMessageError unless `user` can name who a conversation is for."""
    problem = utf8_problem(user)
    if problem:
        raise InvalidMessageError(f"the user name is not valid UTF-8: {problem}")
    if nul_problem(user):
        raise InvalidMessageError(f"the user name holds {nul_problem(user)}")
    if len(user.strip()) > MAX_USER_CHARS:
        raise InvalidMessageError(
            f"the user name is {len(user.strip())} characters; the limit is {MAX_USER_CHARS}"
        )


class ConversationClient:
    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        # A message's span is the root of its turn's trace, when the client carries the trace on.
        self._traced = traces(client)
        self._task_queue = task_queue
        self._model: str | None = None

    def with_model(self, model: str | None) -> ConversationClient:
        """This client, sending each message with an operator's choice of model for its turn
        (one of the deployment's LLM_MODEL and LLM_FALLBACK_MODELS)."""
        chosen = copy.copy(self)
        chosen._model = model
        return chosen

    @property
    def client(self) -> Client:
        return self._client

    @property
    def task_queue(self) -> str:
        return self._task_queue

    def handle(self, conversation_id: str) -> WorkflowHandle[object, Usage]:
        # Checked here, not left to the SDK: it fails on an unencodable id while it builds the
        # request, and a surrogate in an id would otherwise surface as a bare UnicodeEncodeError.
        check_conversation_id(conversation_id)
        return self._client.get_workflow_handle(conversation_id, result_type=Usage)

    async def send(
        self, conversation_id: str, text: str, *, message_id: str | None = None, user: str = ""
    ) -> TurnResult:
        """Send a message, starting the conversation if it is not running (update-with-start).

        Sending the same message again with the same `message_id` (after a timeout, a crash, a
        server restart) returns its answer instead of asking twice. Without one, an id is made up
        here: a message that waited while its conversation continued as new is sent to the next
        run under that same id, and answered once.

        Raises InvalidMessageError, before contacting the server, for a message that is not valid
        UTF-8, is empty or is over MAX_MESSAGE_BYTES, and for an unusable conversation or message
        id, or user.

        `user` is who the conversation is for (per-user budgets, `agent usage`): kept when this
        message starts the conversation; a running conversation keeps the user it started with.
        """
        check_conversation_id(conversation_id)
        check_message(text)
        check_user(user)
        id_problem = utf8_problem(message_id) if message_id is not None else None
        if id_problem:
            raise InvalidMessageError(f"the message id is not valid UTF-8: {id_problem}")
        message_id = message_id or uuid.uuid4().hex

        async def attempt() -> TurnResult:
            start: WithStartWorkflowOperation[object, Usage] = WithStartWorkflowOperation(
                CONVERSATION_WORKFLOW,
                ConversationInput(conversation_id=conversation_id, user=user.strip()),
                id=conversation_id,
                task_queue=self._task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                # An ended conversation stays ended: its id is not silently reused.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
            try:
                result: TurnResult = await self._client.execute_update_with_start_workflow(
                    SEND_MESSAGE_UPDATE,
                    # Without a choice, the one argument every version of the update takes.
                    args=[text] if self._model is None else [text, self._model],
                    start_workflow_operation=start,
                    result_type=TurnResult,
                    id=message_id,
                )
            except BaseException:
                await collect_start_error(start)
                raise
            return result

        with client_span(
            MESSAGE_SPAN,
            {"conversation.id": conversation_id, "agent.message_id": message_id},
            traced=self._traced,
        ):
            return await _following_continue_as_new(attempt)

    async def send_existing(
        self, conversation_id: str, text: str, *, message_id: str | None = None
    ) -> TurnResult:
        """Send a message to a conversation that must already exist."""
        check_message(text)
        handle = self.handle(conversation_id)
        message_id = message_id or uuid.uuid4().hex

        async def attempt() -> TurnResult:
            # The handle names no run: each attempt reaches the conversation's latest run.
            result: TurnResult = await handle.execute_update(
                SEND_MESSAGE_UPDATE, text, id=message_id, result_type=TurnResult
            )
            return result

        with client_span(
            MESSAGE_SPAN,
            {"conversation.id": conversation_id, "agent.message_id": message_id},
            traced=self._traced,
        ):
            return await _following_continue_as_new(attempt)

    async def decide(self, conversation_id: str, decision: Decision) -> ApprovalRecord:
        """Approve or deny one call waiting for approval.

        The workflow refuses (WorkflowUpdateFailedError) an unknown or already decided call, a
        decision after its turn ended, and an approver its policy does not allow. Raises
        ConversationEndedError for an ended conversation."""
        return await self._update(conversation_id, DECIDE_UPDATE, ApprovalRecord, decision)

    async def cancel(self, conversation_id: str, request: CancelRequest) -> CancelResult:
        """Cancel the running turn (messages queued behind it are answered next); `cancelled`
        is False when nothing was running. Raises ConversationEndedError for an ended conversation."""
        return await self._update(conversation_id, CANCEL_UPDATE, CancelResult, request)

    async def pending_approvals(
        self, limit: int = 200, only: Callable[[list[str]], Awaitable[list[str]]] | None = None
    ) -> list[tuple[str, PendingApproval]]:
        """(conversation id, call) for every call waiting for approval in up to `limit`
        conversations. A conversation that does not answer its status query is left out: one
        stuck conversation must not hide everyone else's pending calls.

        Conversations waiting for a decision set the AgentAwaitingApproval search attribute, so
        one visibility query finds them (visibility trails by about a second); in a namespace
        without the attribute, every running conversation is asked. `only` narrows the ids
        found (say, to one user's) before any conversation is asked, and `limit` then applies
        to those."""
        running = f"ExecutionStatus = 'Running' AND WorkflowType = '{CONVERSATION_WORKFLOW}'"
        found_limit = limit if only is None else MAX_AWAITING_SCANNED
        try:
            ids = await self._ids(
                f"{running} AND {AWAITING_APPROVAL_ATTRIBUTE} = true", found_limit
            )
        except RPCError as error:
            if error.status != RPCStatusCode.INVALID_ARGUMENT:
                raise
            ids = await self._ids(running, found_limit)
        if only is not None:
            ids = (await only(ids))[:limit]
        gate = asyncio.Semaphore(STATUS_QUERY_CONCURRENCY)

        async def pending(conversation_id: str) -> list[PendingApproval]:
            async with gate:
                try:
                    status: ConversationStatus = await self.handle(conversation_id).query(
                        STATUS_QUERY,
                        result_type=ConversationStatus,
                        rpc_timeout=STATUS_QUERY_TIMEOUT,
                    )
                except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
                    return []
                return status.pending_approvals

        found = await asyncio.gather(*(pending(conversation_id) for conversation_id in ids))
        return [
            (conversation_id, call)
            for conversation_id, calls in zip(ids, found, strict=True)
            for call in calls
        ]

    async def _ids(self, query: str, limit: int) -> list[str]:
        ids: list[str] = []
        async for execution in self._client.list_workflows(query, limit=limit):
            ids.append(execution.id)
            if len(ids) >= limit:
                break
        return ids

    async def status(self, conversation_id: str) -> ConversationStatus:
        status: ConversationStatus = await self.handle(conversation_id).query(
            STATUS_QUERY, result_type=ConversationStatus
        )
        return status

    async def events(self, conversation_id: str, after: int = 0) -> EventsPage:
        """The conversation's turn events from offset `after` on (orchestrator.events)."""
        page: EventsPage = await self.handle(conversation_id).query(
            EVENTS_QUERY, after, result_type=EventsPage
        )
        return page

    async def recent_turns(self, conversation_id: str) -> list[TurnResult]:
        """The last few turns, from the running workflow's state."""
        turns: list[TurnResult] = await self.handle(conversation_id).query(
            TURNS_QUERY, result_type=list[TurnResult]
        )
        return turns

    async def turns(self, conversation_id: str, page_size: int = 500) -> list[TurnResult]:
        """Every turn of a conversation, read from the store through a `ReadConversation` run."""
        await self.handle(conversation_id).describe()  # a clear NOT_FOUND for unknown ids
        turns: list[TurnResult] = []
        while True:
            page = await self._client.execute_workflow(
                READ_CONVERSATION_WORKFLOW,
                ReadConversationInput(
                    conversation_id=conversation_id, offset=len(turns), limit=page_size
                ),
                id=f"{conversation_id}/read/{uuid.uuid4().hex[:8]}",
                task_queue=self._task_queue,
                result_type=list[TurnResult],
            )
            turns.extend(page)
            if len(page) < page_size:
                return turns

    async def refresh_tools(self, conversation_id: str) -> ConversationStatus:
        """Ask the conversation to discover its tools again; its status lists what it found.

        Raises ConversationEndedError for an ended conversation."""
        return await self._update(conversation_id, REFRESH_TOOLS_UPDATE, ConversationStatus)

    async def end(self, conversation_id: str) -> Usage:
        """End the conversation and return its usage.

        Raises ConversationEndedError (with the final usage when known) if it had already ended.
        """
        return await self._update(conversation_id, END_UPDATE, Usage)

    async def _update(
        self, conversation_id: str, update: str, result_type: type[R], *args: Any
    ) -> R:
        """Execute an update on a conversation that must be running; raises
        ConversationEndedError when it has ended."""
        try:
            result: R = await self.handle(conversation_id).execute_update(
                update, args=args, result_type=result_type
            )
        except RPCError as error:
            raise await self._ended_or(error, conversation_id) from None
        return result

    async def _ended_or(self, error: RPCError, conversation_id: str) -> BaseException:
        """ConversationEndedError when `error` is the server's NOT_FOUND for an update to a closed
        workflow ("workflow execution already completed"); otherwise `error` itself.

        Decided by describing the workflow, not by the wording of the server's message."""
        if error.status != RPCStatusCode.NOT_FOUND:
            return error
        handle = self.handle(conversation_id)
        try:
            description = await handle.describe()
        except RPCError:
            return error  # no such conversation at all
        if description.status == WorkflowExecutionStatus.RUNNING:
            return error
        usage = None
        if description.status == WorkflowExecutionStatus.COMPLETED:
            try:
                usage = await handle.result()
            except Exception:  # usage is a courtesy; the conversation has ended either way
                usage = None
        return ConversationEndedError(conversation_id, usage)

    async def list(self, limit: int = 50) -> AsyncIterator[tuple[str, str, str]]:
        """(conversation id, status, start time) of recent conversations, newest first."""
        query = f"WorkflowType = '{CONVERSATION_WORKFLOW}'"
        count = 0
        async for execution in self._client.list_workflows(query, limit=limit):
            status = (
                execution.status.name.lower()
                if isinstance(execution.status, WorkflowExecutionStatus)
                else "unknown"
            )
            yield execution.id, status, execution.start_time.isoformat(timespec="seconds")
            count += 1
            if count >= limit:
                return


def continued_as_new(error: BaseException) -> bool:
    """Whether a message's update failed because its conversation continued as new while the
    message waited: the next run answers it when it is sent again under the same id."""
    if not isinstance(error, WorkflowUpdateFailedError):
        return False
    cause = error.cause
    return isinstance(cause, ApplicationError) and cause.type == CONVERSATION_CONTINUED_ERROR


async def _following_continue_as_new(attempt: Callable[[], Awaitable[TurnResult]]) -> TurnResult:
    for tries in itertools.count(1):
        try:
            return await attempt()
        except WorkflowUpdateFailedError as error:
            if tries > MAX_CONTINUED_RETRIES or not continued_as_new(error):
                raise
        # The next run exists once the update has failed (continue-as-new is atomic); the pause
        # only keeps a workflow that continues in a loop from being hammered.
        await asyncio.sleep(min(0.05 * tries, 0.5))
    raise AssertionError("unreachable")


async def collect_start_error(start: WithStartWorkflowOperation[object, Usage]) -> None:
    """Retrieve the start operation's error, if it has one, so asyncio does not log it later as
    "Future exception was never retrieved".

    The SDK settles the start operation only once the request was built. When building it failed
    (a payload or id that cannot be encoded), the operation is never settled, and awaiting it
    hung forever: look without waiting.
    """
    waiter = asyncio.ensure_future(start.workflow_handle())
    await asyncio.sleep(0)  # one loop step: a settled operation completes the waiter right away
    if waiter.done():
        if not waiter.cancelled():
            waiter.exception()
    else:
        waiter.cancel()
