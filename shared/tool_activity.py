"""The activity that runs a registered tool function inside the team's worker."""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from shared.log import bound_context, get_logger
from shared.tool_workflow import RUN_TOOL_ACTIVITY
from shared.tools import ToolArgumentsError, ToolCall, ToolContext, ToolError, ToolRegistry

log = get_logger(__name__)


class ToolActivities:
    def __init__(self, registry: ToolRegistry, client: Client) -> None:
        self._registry = registry
        self._client = client

    @activity.defn(name=RUN_TOOL_ACTIVITY)
    async def run_tool(self, call: ToolCall) -> Any:
        info = activity.info()
        with bound_context(
            namespace=info.namespace,
            workflow_id=info.workflow_id,
            conversation_id=call.conversation_id,
            tool=call.tool,
            attempt=info.attempt,
        ):
            registered = self._registry.get(call.tool)
            if registered is None:
                raise ApplicationError(
                    f"unknown tool '{call.tool}'", type="ToolError", non_retryable=True
                )
            context = ToolContext(
                call_id=call.call_id,
                conversation_id=call.conversation_id,
                namespace=info.namespace,
                task_queue=info.task_queue,
                client=self._client,
            )
            try:
                output = await registered.invoke(call.args, context)
            except ToolArgumentsError as err:
                raise ApplicationError(
                    str(err), type="ToolArgumentsError", non_retryable=True
                ) from None
            except ToolError as err:
                log.warning("tool refused", error=err.message, retryable=err.retryable)
                raise ApplicationError(
                    err.message,
                    type="ToolTransientError" if err.retryable else "ToolError",
                    non_retryable=not err.retryable,
                ) from None
            log.info("tool completed")
            return output
