"""The generic Nexus handler that serves any team's tool registry.

`execute_tool` always runs the tool as a durable workflow in the team's namespace. It has a fast
path: the handler starts the workflow, then waits for its result, for up to a budget (5 s by
default, never past the request's own deadline). A tool that finishes within it is answered
synchronously, which skips the callback round trip of a workflow-backed operation. A slower tool
falls back to the ordinary asynchronous workflow-run operation: the handler re-issues the start
with the Nexus completion callback attached to the already-running workflow (USE_EXISTING), and
returns its token.

The budget is long on purpose. Attaching the callback late costs the server extra work (the
tool workflow's in-flight task fails with UnhandledCommand and runs again), and a short budget
(it was 500 ms) is exceeded by ordinary tools as soon as the machine is busy: the more load, the
more fall-backs, the more load. With seconds of budget only tools that are slow by nature fall
back, and for them the extra task is small beside their own run time.

Idempotency comes from the workflow id, which is derived from the call id, with REJECT_DUPLICATE:
a call whose workflow already closed is answered from that run's result instead of running again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import nexusrpc
import nexusrpc.handler
from nexusrpc import HandlerError, HandlerErrorType, OperationError, OperationErrorState
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.nexus import (
    TemporalNexusClient,
    TemporalOperationHandler,
    TemporalOperationResult,
    TemporalStartOperationContext,
)

from shared.agent_workflow import TeamAgentWorkflow
from shared.agents import RegisteredAgent, agent_run_input
from shared.contract import MAX_AGENT_DEPTH, ListToolsRequest, ToolService
from shared.log import bound_context, get_logger
from shared.telemetry import span_in_trace
from shared.tool_workflow import ToolWorkflow
from shared.tools import (
    ToolArgumentsError,
    ToolCall,
    ToolCatalog,
    ToolRegistry,
    ToolResult,
    ToolWorkflowInput,
)

log = get_logger(__name__)

DEFAULT_FAST_PATH_BUDGET = timedelta(seconds=5)
# Left of the request's deadline for the fall-back start, which attaches the callback.
DEADLINE_MARGIN = timedelta(seconds=1)


class ExecuteToolHandler(TemporalOperationHandler[ToolCall, ToolResult]):
    def __init__(
        self, registry: ToolRegistry, task_queue: str, fast_path_budget: timedelta
    ) -> None:
        self._registry = registry
        self._task_queue = task_queue
        self._budget = fast_path_budget.total_seconds()

    async def start_operation(
        self,
        ctx: TemporalStartOperationContext,
        client: TemporalNexusClient,
        input: ToolCall,
    ) -> TemporalOperationResult[ToolResult]:
        call = input
        known = call.tool if self._registry.get(call.tool) is not None else "unknown"
        handled = span_in_trace(
            f"handle {self._registry.service}.{known}",
            {"agent.call_id": call.call_id, "conversation.id": call.conversation_id},
            server=True,
        )
        with (
            handled,
            bound_context(
                namespace=client.client.namespace,
                conversation_id=call.conversation_id,
                workflow_id=call.workflow_id,
                tool=call.tool,
            ),
        ):
            request = self._validated_request(call)
            start_options: dict[str, Any] = {
                "id": call.workflow_id,
                "task_queue": self._task_queue,
                "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
                "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
                "static_summary": f"{call.tool} for {call.conversation_id or 'unknown caller'}",
            }
            registered = self._registry.get(call.tool)
            if isinstance(registered, RegisteredAgent):
                # An agent's loop takes model steps: always the asynchronous operation, so the
                # caller's cancel reaches the run from its first moment.
                agent_run = agent_run_input(call, registered, self._registry)
                try:
                    # Bounded here, in the team: a caller that stopped waiting does not keep
                    # the team's models busy past the agent's own limit.
                    return await client.start_workflow(
                        TeamAgentWorkflow.run,
                        agent_run,
                        execution_timeout=timedelta(seconds=agent_run.agent.timeout_seconds),
                        **start_options,
                    )
                except WorkflowAlreadyStartedError:
                    return TemporalOperationResult.sync(await self._closed_run_result(client, call))
            budget = self._budget_for(ctx)
            if budget > 0:
                try:
                    # Eager start hands the first workflow task straight to this worker.
                    handle = await client.client.start_workflow(
                        ToolWorkflow.run, request, request_eager_start=True, **start_options
                    )
                except WorkflowAlreadyStartedError:
                    return TemporalOperationResult.sync(await self._closed_run_result(client, call))
                try:
                    # Measured again: the start itself may have taken a while under load, and the
                    # fall-back start must still fit before the request's deadline.
                    result = await asyncio.wait_for(_result(handle), timeout=self._budget_for(ctx))
                    log.info("tool answered on the fast path")
                    return TemporalOperationResult.sync(result)
                except TimeoutError:
                    log.info("tool outlived the fast-path budget; completing asynchronously")
            try:
                started = await client.start_workflow(ToolWorkflow.run, request, **start_options)
            except WorkflowAlreadyStartedError:
                # Closed between the budget running out and the callback being attached.
                return TemporalOperationResult.sync(await self._closed_run_result(client, call))
            return started

    def _budget_for(self, ctx: TemporalStartOperationContext) -> float:
        """Seconds to wait on the fast path: the budget, cut short by the request's deadline."""
        deadline = ctx.request_deadline
        if deadline is None or self._budget <= 0:
            return self._budget
        left = (deadline - datetime.now(UTC) - DEADLINE_MARGIN).total_seconds()
        return max(0.0, min(self._budget, left))

    def _validated_request(self, call: ToolCall) -> ToolWorkflowInput:
        registered = self._registry.get(call.tool)
        if registered is None:
            known = ", ".join(sorted(self._registry.names())) or "none"
            raise HandlerError(
                f"unknown tool '{call.tool}' in service '{self._registry.service}' "
                f"(available: {known})",
                type=HandlerErrorType.NOT_FOUND,
            )
        if isinstance(registered, RegisteredAgent) and call.depth >= MAX_AGENT_DEPTH:
            raise HandlerError(
                f"agent '{call.tool}' refused: the call is {call.depth} agents deep "
                f"(at most {MAX_AGENT_DEPTH} may delegate in a row)",
                type=HandlerErrorType.BAD_REQUEST,
            )
        try:
            problem = registered.approval_problem(call)
        except ToolArgumentsError as err:
            log.info("rejected tool arguments", error=str(err))
            raise HandlerError(str(err), type=HandlerErrorType.BAD_REQUEST) from None
        if problem:
            # The team's own gate: whatever the caller decided, a call its policy holds back runs
            # only with an approval for this call id (bound by the caller's signed token).
            log.warning("refused a call without its approval", error=problem)
            raise HandlerError(problem, type=HandlerErrorType.UNAUTHORIZED)
        return ToolWorkflowInput(
            call=call,
            service=self._registry.service,
            timeout_seconds=registered.spec.timeout_seconds,
            max_attempts=registered.max_attempts,
            local_activity=registered.local_activity,
        )

    async def _closed_run_result(self, client: TemporalNexusClient, call: ToolCall) -> ToolResult:
        handle = client.client.get_workflow_handle_for(ToolWorkflow.run, call.workflow_id)
        log.info("call already executed; answering from its recorded result")
        return await _result(handle)


async def _result(handle: WorkflowHandle[Any, ToolResult]) -> ToolResult:
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        cause = err.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        raise OperationError(message, state=OperationErrorState.FAILED) from None


@nexusrpc.handler.service_handler(service=ToolService)
class ToolServiceHandler:
    """Serves `list_tools` and `execute_tool` for one team's registry."""

    def __init__(
        self,
        registry: ToolRegistry,
        task_queue: str,
        fast_path_budget: timedelta = DEFAULT_FAST_PATH_BUDGET,
    ) -> None:
        self._registry = registry
        self._execute_tool = ExecuteToolHandler(registry, task_queue, fast_path_budget)

    @nexusrpc.handler.sync_operation
    async def list_tools(
        self, ctx: nexusrpc.handler.StartOperationContext, input: ListToolsRequest
    ) -> ToolCatalog:
        return self._registry.catalog()

    @nexusrpc.handler.operation_handler
    def execute_tool(self) -> nexusrpc.handler.OperationHandler[ToolCall, ToolResult]:
        return self._execute_tool
