"""The structural floor of an agent turn, for `bench.agent_loop` to compare against.

`FloorWorkflow` is long-running like a conversation; its `turn(tools)` update does only what a
turn structurally needs: a no-op activity (the model's tool-choosing step), `tools` workflow-backed
Nexus operations in parallel through `shared.caller.execute_tool` on the same endpoints and tools
as the real turn (so the tool workflows really run; the calls are the workflow's input, from the
teams' sample calls), then a no-op activity (the final model step).
No transcript, no model, no discovery, no payloads beyond the tool calls.

This module defines a workflow, so it must never be the `__main__` module.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

with workflow.unsafe.imports_passed_through():
    from bench.calls import BenchCall
    from shared.caller import execute_tool
    from shared.tools import ToolCall

FLOOR_WORKFLOW = "BenchFloor"
FLOOR_TASK_QUEUE = "bench-floor"
ACTIVITY_TIMEOUT = timedelta(seconds=30)
TOOL_TIMEOUT = timedelta(seconds=60)


@activity.defn(name="bench_floor_noop")
async def floor_noop() -> None:
    """Stands for an LLM step with a 0 ms model: a scheduled, dispatched, completed activity."""


@workflow.defn(name=FLOOR_WORKFLOW)
class FloorWorkflow:
    @workflow.init
    def __init__(self, calls: list[BenchCall]) -> None:
        # The same calls the fake model asks the real loop for, on the endpoints that serve them.
        self._calls = calls
        self._turns = 0
        self._ended = False

    @workflow.run
    async def run(self, calls: list[BenchCall]) -> int:
        await workflow.wait_condition(lambda: self._ended and workflow.all_handlers_finished())
        return self._turns

    @workflow.update
    async def turn(self, tools: int) -> int:
        if not 0 <= tools <= len(self._calls):
            raise ApplicationError(f"tools must be 0..{len(self._calls)}", non_retryable=True)
        self._turns += 1
        turn = self._turns
        run_tag = workflow.info().first_execution_run_id[:8]
        await workflow.execute_activity(floor_noop, start_to_close_timeout=ACTIVITY_TIMEOUT)
        outcomes = await asyncio.gather(
            *(
                execute_tool(
                    call.endpoint,
                    ToolCall(
                        call_id=f"{workflow.info().workflow_id}-{run_tag}-{turn}-{index}",
                        tool=call.tool,
                        args=dict(call.args),
                        conversation_id=workflow.info().workflow_id,
                    ),
                    timeout=TOOL_TIMEOUT,
                )
                for index, call in enumerate(self._calls[:tools])
            )
        )
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise ApplicationError(
                f"floor tool {failed[0].tool} failed: {failed[0].error}", non_retryable=True
            )
        await workflow.execute_activity(floor_noop, start_to_close_timeout=ACTIVITY_TIMEOUT)
        return len(outcomes)

    @workflow.signal
    def end(self) -> None:
        self._ended = True


def build_floor_worker(client: Client, task_queue: str = FLOOR_TASK_QUEUE) -> Worker:
    # Unsandboxed, like the orchestrator's default: the floor must not pay for a sandbox the agent
    # skips.
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[FloorWorkflow],
        activities=[floor_noop],
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
