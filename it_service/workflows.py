"""The IT team's per-conversation session: one long-running entity workflow per conversation.

Session tools reach it by update-with-start, so the first call creates it and later calls find it.
Each update's id is the tool call id, so a retried activity never applies the same change twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from temporalio import workflow

SESSION_WORKFLOW_NAME = "ITSessionWorkflow"
DEFAULT_IDLE_TIMEOUT = timedelta(days=30)
# The session's state is returned by every update and carried at continue-as-new: keep it small
# whatever a conversation does. The oldest tracked addresses make way for new ones.
MAX_TRACKED_ADDRESSES = 100


def session_workflow_id(conversation_id: str) -> str:
    return f"it-session-{conversation_id}"


class TrackedAddress(BaseModel):
    ip: str
    label: str = ""
    tracked_at: datetime
    call_id: str


class SessionState(BaseModel):
    conversation_id: str
    jira_project: str | None = None
    ip_history: list[TrackedAddress] = Field(default_factory=list)


class SessionStart(BaseModel):
    state: SessionState
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT.total_seconds()


class TrackAddressRequest(BaseModel):
    ip: str
    label: str = ""
    call_id: str


@workflow.defn(name=SESSION_WORKFLOW_NAME)
class ITSessionWorkflow:
    @workflow.init
    def __init__(self, start: SessionStart) -> None:
        self._state = start.state
        self._touched = False

    @workflow.run
    async def run(self, start: SessionStart) -> SessionState:
        idle_timeout = timedelta(seconds=start.idle_timeout_seconds)
        while True:
            self._touched = False
            try:
                await workflow.wait_condition(
                    lambda: self._touched or workflow.info().is_continue_as_new_suggested(),
                    timeout=idle_timeout,
                )
            except TimeoutError:
                await workflow.wait_condition(workflow.all_handlers_finished)
                return self._state
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    SessionStart(state=self._state, idle_timeout_seconds=start.idle_timeout_seconds)
                )

    @workflow.update
    def set_jira_project(self, project: str) -> SessionState:
        self._state.jira_project = project
        self._touched = True
        return self._state

    @workflow.update
    def track_address(self, request: TrackAddressRequest) -> SessionState:
        self._state.ip_history.append(
            TrackedAddress(
                ip=request.ip,
                label=request.label,
                tracked_at=workflow.now(),
                call_id=request.call_id,
            )
        )
        del self._state.ip_history[:-MAX_TRACKED_ADDRESSES]
        self._touched = True
        return self._state

    @workflow.query
    def state(self) -> SessionState:
        return self._state
