"""What the gateway's API takes and answers (the shapes /openapi.json documents)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from orchestrator.client import nul_problem, utf8_problem
from orchestrator.models import ConversationStatus, PendingApproval, TurnResult
from shared.approval import Verdict

MAX_TITLE_CHARS = 200
MAX_MESSAGE_ID_CHARS = 128
MAX_REASON_CHARS = 2000


class _Request(BaseModel):
    # A misspelt field is named in a 400 instead of being silently dropped.
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _encodable(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON can carry lone surrogates (an escaped \ud800), which no store or payload can encode.
        if isinstance(value, str):
            problem = utf8_problem(value)
            if problem:
                raise ValueError(f"not valid UTF-8 text: {problem}")
            # A message's text is stored inside JSON, escaped, and may hold anything a person
            # types; a title or a message id is stored as it is.
            nul = nul_problem(value) if info.field_name != "text" else None
            if nul:
                raise ValueError(f"holds {nul}, which no store keeps")
        return value


class CreateConversation(_Request):
    title: str = Field(default="", max_length=MAX_TITLE_CHARS)


class SendMessage(_Request):
    text: str = Field(description="The message.")
    message_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MESSAGE_ID_CHARS,
        description="Idempotency key: the same id sent again is answered once, with the same "
        "answer. Made up by the gateway when missing.",
    )


class CancelBody(_Request):
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)


class DecideBody(_Request):
    verdict: Verdict
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)


class Me(BaseModel):
    user: str


class Health(BaseModel):
    ok: bool = True


class ConversationSummary(BaseModel):
    conversation_id: str
    title: str
    created_at: str


class ConversationList(BaseModel):
    conversations: list[ConversationSummary]


class ConversationDetail(ConversationSummary):
    turns: list[TurnResult]
    status: ConversationStatus | None = Field(
        description="The running conversation's status; null before its first message and "
        "after it ended."
    )
    cursor: str = Field(description="The stream position now: GET .../events?after=<cursor>.")
    turn_running: bool = Field(
        default=False,
        description="A turn is under way: follow it from `cursor`. True also when the status "
        "could not be read because the conversation is busy in a model step (it answers its "
        "status query when the step ends).",
    )


class Approval(PendingApproval):
    conversation_id: str


class ApprovalList(BaseModel):
    approvals: list[Approval]


def approval(conversation_id: str, pending: PendingApproval) -> Approval:
    values: dict[str, Any] = pending.model_dump()
    return Approval(conversation_id=conversation_id, **values)
