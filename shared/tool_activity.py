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
    """The team worker's `run_tool` activity, bound to the team's registry."""

    def __init__(self, registry: ToolRegistry, client: Client) -> None:
        self._registry = registry
        self._client = client

    @activity.defn(name=RUN_TOOL_ACTIVITY)
    async def run_tool(self, call: ToolCall) -> Any:
        return await run_registered_tool(self._registry, self._client, call)


async def run_registered_tool(registry: ToolRegistry, client: Client, call: ToolCall) -> Any:
    """Run one call from inside an activity, mapping tool errors onto Temporal's retry rules."""
    info = activity.info()
    with bound_context(
        namespace=info.namespace,
        workflow_id=info.workflow_id,
        conversation_id=call.conversation_id,
        tool=call.tool,
        attempt=info.attempt,
    ):
        registered = registry.get(call.tool)
        if registered is None:
            raise ApplicationError(
                f"unknown tool '{call.tool}'", type="ToolNotFound", non_retryable=True
            )
        context = ToolContext(
            call_id=call.call_id,
            conversation_id=call.conversation_id,
            namespace=info.namespace,
            task_queue=info.task_queue,
            client=client,
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
