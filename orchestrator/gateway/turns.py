"""Sending a message through the gateway: accepted (or refused) first, answered later.

With a stream, the HTTP status must be known before the first event goes out: the message's update
is sent and waited on only until the conversation *accepts* it (its validator ran). A refusal
(busy, ended, invalid) is then a plain 4xx; an accepted message is a 200 stream of its turn.
"""

from __future__ import annotations

import asyncio
import contextlib

from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.client import (
    ConversationEndedError,
    InvalidMessageError,
    check_message,
    collect_start_error,
    continued_as_new,
    utf8_problem,
)
from orchestrator.gateway.errors import ApiError
from orchestrator.gateway.services import Services
from orchestrator.models import (
    CONVERSATION_WORKFLOW,
    SEND_MESSAGE_UPDATE,
    ConversationInput,
    TurnResult,
    Usage,
)
from orchestrator.workflows import BUSY, MOVING
from shared.caller import innermost_message

QUEUE_FULL = "messages already wait behind the running turn"


async def accept(
    services: Services, conversation_id: str, text: str, message_id: str, user: str
) -> WorkflowUpdateHandle[TurnResult]:
    """Send the message (starting the conversation on its first one) and return once the
    conversation has accepted it. Raises ApiError when it is refused."""
    try:
        check_message(text)
        problem = utf8_problem(message_id)
        if problem:
            raise InvalidMessageError(f"the message id is not valid UTF-8: {problem}")
    except InvalidMessageError as error:
        raise ApiError(400, "invalid_message", str(error)) from None
    start: WithStartWorkflowOperation[object, Usage] = WithStartWorkflowOperation(
        CONVERSATION_WORKFLOW,
        ConversationInput(conversation_id=conversation_id, user=user),
        id=conversation_id,
        task_queue=services.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )
    try:
        handle: WorkflowUpdateHandle[
            TurnResult
        ] = await services.client.start_update_with_start_workflow(
            SEND_MESSAGE_UPDATE,
            text,
            start_workflow_operation=start,
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            id=message_id,
            result_type=TurnResult,
        )
    except BaseException as error:
        await collect_start_error(start)
        if isinstance(error, Exception):
            raise send_error(error) from None
        raise
    # A message the validator refused comes back "accepted" with its outcome, a failure, already
    # known: result() then settles at once, without asking the server. Read it now, while a 4xx
    # can still be sent; an outcome still to come is left to the stream.
    known = asyncio.ensure_future(handle.result())
    await asyncio.sleep(0)
    if not known.done():
        known.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await known
        return handle
    refused = known.exception()
    if isinstance(refused, Exception):
        raise send_error(refused) from None
    return handle


async def answer(
    services: Services,
    handle: WorkflowUpdateHandle[TurnResult],
    conversation_id: str,
    text: str,
    message_id: str,
    user: str,
) -> TurnResult:
    """The accepted message's answer. A message that waited while its conversation continued as
    new is sent to the next run under the same id, which answers it once."""
    try:
        return await handle.result()
    except WorkflowUpdateFailedError as error:
        if not continued_as_new(error):
            raise
    return await services.conversations.send(
        conversation_id, text, message_id=message_id, user=user
    )


def send_error(error: Exception) -> ApiError:
    """The 4xx/5xx for a message the conversation did not take, or could not answer."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, InvalidMessageError):
        return ApiError(400, "invalid_message", str(error))
    if isinstance(error, WorkflowAlreadyStartedError | ConversationEndedError):
        return ended()
    if isinstance(error, WorkflowUpdateFailedError):
        message = innermost_message(error)
        if message == BUSY or QUEUE_FULL in message or message == MOVING:
            return ApiError(409, "busy", message)
        if "has ended" in message:
            return ended()
        return ApiError(400, "invalid_message", message)
    return temporal_error(error)


def temporal_error(error: Exception) -> ApiError:
    if isinstance(error, WorkflowUpdateRPCTimeoutOrCancelledError):
        return ApiError(
            504,
            "timeout",
            "the conversation did not answer in time; it keeps working: read it again later",
        )
    if isinstance(error, RPCError):
        if error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return ApiError(503, "unavailable", "Temporal is not reachable; try again shortly")
        return ApiError(502, "temporal_error", f"Temporal refused the request: {error.message}")
    raise error


def ended() -> ApiError:
    return ApiError(409, "ended", "the conversation has ended; start a new one")
