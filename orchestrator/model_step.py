"""One model step of a conversation, as workflow code: the LLM activity, run local or regular.

By default (`AgentConfig.model_step == "local"`) the step is a local activity: it runs inside the
workflow task, so a turn schedules, dispatches and reports no activity task per step and needs no
workflow task to wake the loop afterwards. The step is idempotent (keyed by sequence number in the
store), so a rerun after a crash answers the same. As a regular activity it heartbeats.

The tool list travels once per change (a discovery, or tools loaded on demand: see
orchestrator.disclosure); later steps name it by its digest, and a step whose store has lost the
list is sent again with it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as StepTimeoutError

with workflow.unsafe.imports_passed_through():
    from orchestrator.disclosure import catalog_digest, visible_tools
    from orchestrator.loop_settings import AgentConfig
    from orchestrator.models import (
        LLM_STEP_ACTIVITY,
        TOOL_CATALOG_MISSING_ERROR,
        CarriedState,
        LlmRequest,
        LlmStepResult,
    )
    from shared.heartbeat import HEARTBEAT_TIMEOUT
    from shared.llm_names import NON_RETRYABLE_LLM_ERRORS

# Model steps as local activities (AgentConfig.model_step); conversations recorded before run
# theirs as regular activities.
LOCAL_MODEL_STEP_PATCH = "local-model-step"
# How a failed model step surfaces: a regular activity's failure is wrapped in ActivityError; a
# local activity's arrives as the activity's own error (or its timeout).
MODEL_STEP_FAILURES = (ActivityError, ApplicationError, StepTimeoutError)

LLM_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=8,
    non_retryable_error_types=NON_RETRYABLE_LLM_ERRORS,
)


async def ask_model(
    conversation_id: str,
    config: AgentConfig,
    memory: CarriedState,
    turn: int = 0,
    step: int = 0,
    *,
    model: str | None = None,
) -> LlmStepResult:
    """Store `memory.pending`, ask the model, and advance the sequence numbers past its reply."""
    # Named afresh each step: loading tools on demand changes the list, and so may this run's
    # settings (its disclosure thresholds) against the run that discovered the tools.
    tools = visible_tools(config, memory)
    digest = memory.catalog_digest = catalog_digest(tools)
    try:
        unsent = tools if memory.catalog_stored != digest else None
        reply = await _step(conversation_id, config, memory, unsent, turn, step, model)
    except MODEL_STEP_FAILURES as err:
        cause = err.cause if isinstance(err, ActivityError) else err
        if not (isinstance(cause, ApplicationError) and cause.type == TOOL_CATALOG_MISSING_ERROR):
            raise
        reply = await _step(conversation_id, config, memory, tools, turn, step, model)
    memory.catalog_stored = digest
    # The activity stored the delta and the reply under these sequence numbers.
    memory.pending = []
    memory.next_seq += 1
    return reply


async def _step(
    conversation_id: str,
    config: AgentConfig,
    memory: CarriedState,
    tools: list[dict[str, Any]] | None,
    turn: int,
    step: int,
    model: str | None,
) -> LlmStepResult:
    request = LlmRequest(
        conversation_id=conversation_id,
        new_messages=memory.pending,
        reply_seq=memory.next_seq,
        tools=tools,
        tools_digest=memory.catalog_digest,
        user=memory.user,
        turn=turn,
        step=step,
        model=model,
    )
    # Each model of the list may be asked twice (the step, then again after compaction) and
    # the summary once more each.
    timeout = timedelta(seconds=3 * config.models_in_list * config.llm_timeout_seconds + 10)
    if config.model_step == "local" and workflow.patched(LOCAL_MODEL_STEP_PATCH):
        local: LlmStepResult = await workflow.execute_local_activity(
            LLM_STEP_ACTIVITY,
            request,
            result_type=LlmStepResult,
            start_to_close_timeout=timeout,
            retry_policy=LLM_RETRY_POLICY,
            summary="model step",
        )
        return local
    remote: LlmStepResult = await workflow.execute_activity(
        LLM_STEP_ACTIVITY,
        request,
        result_type=LlmStepResult,
        start_to_close_timeout=timeout,
        # A killed worker's step is retried on another within seconds, not after the whole
        # start-to-close timeout.
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=LLM_RETRY_POLICY,
        summary="model step",
    )
    return remote
