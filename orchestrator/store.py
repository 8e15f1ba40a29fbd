"""The conversation store: the transcript lives here, not in workflow history.

The workflow passes ids, sequence numbers and small deltas; activities append them idempotently
(keyed by conversation id and sequence number, so a retried activity never duplicates a message)
and load what the model needs. One URL picks the backend:

- `sqlite:///path/to/file.db` — the embedded default, one orchestrator worker;
- `postgresql://user:pass@host:5432/db` — shared by several orchestrator workers.

This module is the interface both backends keep (`store_sqlite.py`, `store_postgres.py`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, Field

from orchestrator.models import ApprovalRecord, ChatMessage, StoredMessage, TurnResult
from orchestrator.store_accounts import ACCOUNTS_SCHEMA, Accounts
from orchestrator.store_stream import STREAM_SCHEMA, StreamTokens

T = TypeVar("T")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS messages (
        conversation_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (conversation_id, seq))""",
    """CREATE TABLE IF NOT EXISTS summaries (
        conversation_id TEXT NOT NULL,
        upto_seq BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (conversation_id, upto_seq))""",
    """CREATE TABLE IF NOT EXISTS turns (
        conversation_id TEXT NOT NULL,
        turn BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (conversation_id, turn))""",
    # The tool lists conversations send their model, by content digest: a model step names its
    # list instead of carrying ~6 KB of schemas through history. Not part of what a backup must
    # hold: a step that finds no list by its digest is sent the list again (see llm_step).
    """CREATE TABLE IF NOT EXISTS tool_catalogs (
        digest TEXT PRIMARY KEY,
        body TEXT NOT NULL)""",
    # Who approved or denied which tool call, when and why: written as each decision is made,
    # before the call runs, so the audit trail does not wait for the turn to end.
    """CREATE TABLE IF NOT EXISTS approvals (
        conversation_id TEXT NOT NULL,
        call_id TEXT NOT NULL,
        turn BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (conversation_id, call_id))""",
    # What each model step used, one row per kept reply (keyed like the reply, so a retried step
    # writes it once): budgets read their totals here and `agent usage` rolls them up.
    # `cost_usd` is NULL and `priced` 0 when the model has no known price; `tool_calls` is the
    # JSON list of {"service", "tool"} the reply asked for (`service` null when the step could
    # not tell: resolved from the conversation's turn records when rolled up).
    # `user_name`, not `user`: USER is a reserved word in PostgreSQL.
    """CREATE TABLE IF NOT EXISTS usage_steps (
        conversation_id TEXT NOT NULL,
        reply_seq BIGINT NOT NULL,
        day TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        user_name TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cost_usd DOUBLE PRECISION,
        priced INTEGER NOT NULL,
        tool_calls TEXT NOT NULL,
        PRIMARY KEY (conversation_id, reply_seq))""",
    "CREATE INDEX IF NOT EXISTS usage_steps_user_day ON usage_steps (user_name, day)",
    "CREATE INDEX IF NOT EXISTS usage_steps_day ON usage_steps (day)",
    *STREAM_SCHEMA,
    *ACCOUNTS_SCHEMA,
]


class ToolUse(BaseModel):
    """One tool call a model step asked for, as its usage row keeps it."""

    service: str | None = None  # None: not known at the step; resolved when rolled up
    tool: str


# The `model` of a team agent's usage row: `agent usage` attributes it to the agent, not a call.
AGENT_MODEL_PREFIX = "agent "


class UsageStep(BaseModel):
    """One model step's usage row (table `usage_steps`)."""

    conversation_id: str
    reply_seq: int
    day: str  # YYYY-MM-DD, UTC
    recorded_at: str  # ISO 8601, UTC
    user: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # None: the model has no known price
    tool_calls: list[ToolUse] = Field(default_factory=list)

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageTotal:
    """What a set of model steps used: all tokens, and the priced steps' cost."""

    tokens: int = 0
    cost_usd: float = 0.0
    steps: int = 0
    unpriced_steps: int = 0


class Summary(BaseModel):
    upto_seq: int
    text: str


@dataclass
class StepStart:
    """What a model step finds when it starts (see `ConversationStore.start_step`)."""

    held: int  # messages stored below the step's first new one
    reply: ChatMessage | None  # what the store already holds at the step's reply number


@dataclass
class ContextRows:
    """What the model's view is built from: the system prompt, the latest summary, and every
    message after the summary."""

    system: list[StoredMessage]
    summary: Summary | None
    recent: list[StoredMessage]


class ConversationStore(StreamTokens, Accounts, ABC):
    """The store's interface. The plain queries are written once, here, in SQL both backends
    run (`?` placeholders, turned into the driver's `PLACEHOLDER`); a backend supplies `_run`
    and may serve the multi-query calls below in fewer round trips."""

    PLACEHOLDER: ClassVar[str] = "?"

    @abstractmethod
    async def _run(self, sql: str, rows: list[tuple[Any, ...]] | tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement; a list of parameter tuples runs it once per tuple (no result)."""

    async def _sql(self, sql: str, rows: list[tuple[Any, ...]] | tuple[Any, ...] = ()) -> list[Any]:
        return await self._run(sql.replace("?", self.PLACEHOLDER), rows)

    @abstractmethod
    async def close(self) -> None: ...

    async def append(self, conversation_id: str, messages: list[StoredMessage]) -> None:
        """Insert messages; a (conversation, seq) already present is left as it is."""
        if messages:
            await self._sql(
                "INSERT INTO messages (conversation_id, seq, body) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(conversation_id, m.seq, m.message.model_dump_json()) for m in messages],
            )

    async def messages(
        self, conversation_id: str, *, after_seq: int = -1, limit: int | None = None
    ) -> list[StoredMessage]:
        rows = await self._sql(
            "SELECT seq, body FROM messages WHERE conversation_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (conversation_id, after_seq, self._no_limit if limit is None else limit),
        )
        return [message_from_row(seq, body) for seq, body in rows]

    # What `LIMIT` takes for "no limit": NULL in PostgreSQL; SQLite needs a negative number.
    _no_limit: ClassVar[int | None] = None

    async def put(self, conversation_id: str, messages: list[StoredMessage]) -> None:
        """Write messages at their sequence numbers, replacing what is there: the workflow's
        record of its own messages wins over a reply an abandoned model step left behind."""
        if messages:
            await self._sql(
                "INSERT INTO messages (conversation_id, seq, body) VALUES (?, ?, ?) "
                "ON CONFLICT (conversation_id, seq) DO UPDATE SET body = excluded.body",
                [(conversation_id, m.seq, m.message.model_dump_json()) for m in messages],
            )

    async def count_before(self, conversation_id: str, seq: int) -> int:
        """How many messages of the conversation have a sequence number below `seq`."""
        rows = await self._sql(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND seq < ?",
            (conversation_id, seq),
        )
        return int(rows[0][0])

    async def summary(self, conversation_id: str) -> Summary | None:
        """The latest summary, if the conversation was ever compacted."""
        rows = await self._sql(
            "SELECT upto_seq, body FROM summaries WHERE conversation_id = ? "
            "ORDER BY upto_seq DESC LIMIT 1",
            (conversation_id,),
        )
        return Summary(upto_seq=rows[0][0], text=rows[0][1]) if rows else None

    async def put_summary(self, conversation_id: str, summary: Summary) -> None:
        await self._sql(
            "INSERT INTO summaries (conversation_id, upto_seq, body) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [(conversation_id, summary.upto_seq, summary.text)],
        )

    async def put_turn(self, conversation_id: str, turn: int, result: TurnResult) -> None:
        await self._sql(
            "INSERT INTO turns (conversation_id, turn, body) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [(conversation_id, turn, result.model_dump_json())],
        )

    async def turns(
        self, conversation_id: str, *, offset: int = 0, limit: int = 1000
    ) -> list[TurnResult]:
        rows = await self._sql(
            "SELECT body FROM turns WHERE conversation_id = ? ORDER BY turn LIMIT ? OFFSET ?",
            (conversation_id, limit, offset),
        )
        return [TurnResult.model_validate_json(body) for (body,) in rows]

    async def latest_turns(self, conversation_id: str, limit: int = 1000) -> list[TurnResult]:
        """The conversation's newest `limit` turns, oldest of them first."""
        rows = await self._sql(
            "SELECT body FROM turns WHERE conversation_id = ? ORDER BY turn DESC LIMIT ?",
            (conversation_id, limit),
        )
        return [TurnResult.model_validate_json(body) for (body,) in reversed(rows)]

    async def put_approval(self, conversation_id: str, record: ApprovalRecord) -> None:
        """Keep a decision; the first one recorded for a call id stands."""
        await self._sql(
            "INSERT INTO approvals (conversation_id, call_id, turn, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [(conversation_id, record.call_id, record.turn, record.model_dump_json())],
        )

    async def approvals(self, conversation_id: str) -> list[ApprovalRecord]:
        rows = await self._sql(
            "SELECT body FROM approvals WHERE conversation_id = ? ORDER BY turn, call_id",
            (conversation_id,),
        )
        return [ApprovalRecord.model_validate_json(body) for (body,) in rows]

    async def put_catalog(self, digest: str, tools: list[dict[str, Any]]) -> None:
        """Keep a tool list under its digest (a digest already present is left as it is)."""
        await self._sql(
            "INSERT INTO tool_catalogs (digest, body) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(digest, json.dumps(tools))],
        )

    async def catalog(self, digest: str) -> list[dict[str, Any]] | None:
        rows = await self._sql("SELECT body FROM tool_catalogs WHERE digest = ?", (digest,))
        return catalog_from_rows(rows)

    # ---- usage: one row per model step ----------------------------------------------------
    async def put_usage_step(self, step: UsageStep) -> None:
        """Keep a model step's usage; the first row recorded for its reply stands."""
        await self._sql(
            "INSERT INTO usage_steps (conversation_id, reply_seq, day, recorded_at, user_name, "
            "model, prompt_tokens, completion_tokens, cost_usd, priced, tool_calls) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                (
                    step.conversation_id,
                    step.reply_seq,
                    step.day,
                    step.recorded_at,
                    step.user,
                    step.model,
                    step.prompt_tokens,
                    step.completion_tokens,
                    step.cost_usd,
                    1 if step.priced else 0,
                    json.dumps([use.model_dump() for use in step.tool_calls]),
                )
            ],
        )

    async def conversation_usage(self, conversation_id: str) -> UsageTotal:
        """Every recorded step of one conversation, summed."""
        return await self._usage_total("conversation_id = ?", (conversation_id,))

    async def user_day_usage(self, user: str, day: str) -> UsageTotal:
        """Every recorded step of one user's conversations on one UTC day, summed."""
        return await self._usage_total("user_name = ? AND day = ?", (user, day))

    async def _usage_total(self, where: str, params: tuple[Any, ...]) -> UsageTotal:
        rows = await self._sql(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0), "
            "COALESCE(SUM(cost_usd), 0), COUNT(*), COALESCE(SUM(1 - priced), 0) "
            f"FROM usage_steps WHERE {where}",
            params,
        )
        tokens, cost, steps, unpriced = rows[0]
        # PostgreSQL sums BIGINTs as NUMERIC (Decimal): plain numbers either way.
        return UsageTotal(
            tokens=int(tokens), cost_usd=float(cost), steps=int(steps), unpriced_steps=int(unpriced)
        )

    async def usage_step(self, conversation_id: str, reply_seq: int) -> UsageStep | None:
        """The usage row of one model step, if it was recorded."""
        rows = await self._sql(
            "SELECT conversation_id, reply_seq, day, recorded_at, user_name, model, "
            "prompt_tokens, completion_tokens, cost_usd, priced, tool_calls FROM usage_steps "
            "WHERE conversation_id = ? AND reply_seq = ?",
            (conversation_id, reply_seq),
        )
        return usage_step_from_row(rows[0]) if rows else None

    async def usage_steps(
        self, *, since_day: str | None = None, user: str | None = None
    ) -> list[UsageStep]:
        """The recorded steps from `since_day` on (all without), of one user or everyone's."""
        where, params = "day >= ?", [since_day or ""]
        if user is not None:
            where, params = where + " AND user_name = ?", [*params, user]
        rows = await self._sql(
            "SELECT conversation_id, reply_seq, day, recorded_at, user_name, model, "
            "prompt_tokens, completion_tokens, cost_usd, priced, tool_calls FROM usage_steps "
            f"WHERE {where} ORDER BY day, conversation_id, reply_seq",
            tuple(params),
        )
        return [usage_step_from_row(row) for row in rows]

    # ---- what one model step does, as single calls a backend can serve in one round trip ----
    async def start_step(
        self,
        conversation_id: str,
        stored_before: int,
        new_messages: list[StoredMessage],
        reply_seq: int,
    ) -> StepStart:
        """Count the messages below `stored_before`; only if none is missing, write
        `new_messages` and read what is stored at `reply_seq`."""
        held = await self.count_before(conversation_id, stored_before)
        if held != stored_before:
            return StepStart(held=held, reply=None)
        await self.put(conversation_id, new_messages)
        stored = await self.messages(conversation_id, after_seq=reply_seq - 1, limit=1)
        reply = stored[0].message if stored and stored[0].seq == reply_seq else None
        return StepStart(held=held, reply=reply)

    async def put_reply(self, conversation_id: str, seq: int, reply: ChatMessage) -> ChatMessage:
        """Store a model reply at `seq` unless one is there already; return the one kept."""
        await self.append(conversation_id, [StoredMessage(seq=seq, message=reply)])
        stored = await self.messages(conversation_id, after_seq=seq - 1, limit=1)
        return stored[0].message if stored and stored[0].seq == seq else reply

    async def context_rows(self, conversation_id: str) -> ContextRows:
        system = await self.messages(conversation_id, after_seq=-1, limit=1)
        summary = await self.summary(conversation_id)
        start = summary.upto_seq if summary else 0
        recent = await self.messages(conversation_id, after_seq=start)
        return ContextRows(system=system, summary=summary, recent=recent)


def open_store(url: str, password: str | None = None) -> ConversationStore:
    """The store a URL names. `password` (PostgreSQL only) is kept out of the URL, so the URL can
    sit in a committed env file and the password in a secret file."""
    if url.startswith("sqlite:///"):
        from orchestrator.store_sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        from orchestrator.store_postgres import PostgresStore

        return PostgresStore(url, password)
    raise ValueError(
        f"unsupported store URL {url!r}: use sqlite:///path.db or postgresql://user@host/db"
    )


def catalog_from_rows(rows: list[Any]) -> list[dict[str, Any]] | None:
    if not rows:
        return None
    tools = json.loads(rows[0][0])
    return tools if isinstance(tools, list) else None


def usage_step_from_row(row: Any) -> UsageStep:
    (cid, seq, day, recorded_at, user, model, prompt, completion, cost, priced, calls) = row
    uses = json.loads(calls) if calls else []
    return UsageStep(
        conversation_id=cid,
        reply_seq=int(seq),
        day=day,
        recorded_at=recorded_at,
        user=user,
        model=model,
        prompt_tokens=int(prompt),
        completion_tokens=int(completion),
        cost_usd=float(cost) if priced and cost is not None else None,
        tool_calls=[ToolUse.model_validate(use) for use in uses if isinstance(use, dict)],
    )


def message_from_row(seq: int, body: str) -> StoredMessage:
    return StoredMessage(seq=seq, message=ChatMessage.model_validate_json(body))
