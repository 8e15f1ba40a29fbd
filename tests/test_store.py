"""The conversation store suite, run against both backends: SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from orchestrator.models import ChatMessage, LlmToolCall, TurnResult
from orchestrator.store import ConversationStore, StoredMessage, Summary, open_store
from tests.support.postgres import PostgresUnavailable, running_postgres


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    try:
        with running_postgres() as url:
            yield url
    except PostgresUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = open_store(url)
    yield opened
    await opened.close()


def _msg(seq: int, text: str, role: str = "user") -> StoredMessage:
    return StoredMessage(seq=seq, message=ChatMessage(role=role, content=text))  # type: ignore[arg-type]


async def test_append_is_idempotent_by_sequence(
    store: ConversationStore, request: pytest.FixtureRequest
) -> None:
    cid = f"c-{request.node.name}"
    await store.append(cid, [_msg(0, "system", "system"), _msg(1, "hello")])
    # A retried activity appends the same sequence numbers again, plus one new message.
    await store.append(cid, [_msg(1, "hello"), _msg(2, "hi there", "assistant")])
    messages = await store.messages(cid)
    assert [(m.seq, m.message.content) for m in messages] == [
        (0, "system"),
        (1, "hello"),
        (2, "hi there"),
    ]
    assert [m.seq for m in await store.messages(cid, after_seq=0, limit=1)] == [1]
    assert await store.messages("other") == []


async def test_tool_calls_round_trip(
    store: ConversationStore, request: pytest.FixtureRequest
) -> None:
    cid = f"c-{request.node.name}"
    call = LlmToolCall(id="call_1", name="stock_price", arguments='{"ticker": "AAPL"}')
    await store.append(
        cid,
        [
            StoredMessage(seq=5, message=ChatMessage(role="assistant", tool_calls=[call])),
            StoredMessage(
                seq=6,
                message=ChatMessage(
                    role="tool", tool_call_id="call_1", name="stock_price", content="{}"
                ),
            ),
        ],
    )
    loaded = await store.messages(cid)
    assert loaded[0].message.tool_calls == [call]
    assert loaded[1].message.tool_call_id == "call_1"


async def test_summaries_keep_the_latest(
    store: ConversationStore, request: pytest.FixtureRequest
) -> None:
    cid = f"c-{request.node.name}"
    assert await store.summary(cid) is None
    await store.put_summary(cid, Summary(upto_seq=10, text="first"))
    await store.put_summary(cid, Summary(upto_seq=30, text="second"))
    await store.put_summary(cid, Summary(upto_seq=30, text="retried: ignored"))
    assert await store.summary(cid) == Summary(upto_seq=30, text="second")


async def test_turns_page_in_order(
    store: ConversationStore, request: pytest.FixtureRequest
) -> None:
    cid = f"c-{request.node.name}"
    for turn in (2, 1, 3):
        await store.put_turn(
            cid, turn, TurnResult(conversation_id=cid, answer=f"a{turn}", message=f"m{turn}")
        )
    await store.put_turn(cid, 2, TurnResult(conversation_id=cid, answer="duplicate"))
    assert [t.answer for t in await store.turns(cid)] == ["a1", "a2", "a3"]
    assert [t.answer for t in await store.turns(cid, offset=1, limit=1)] == ["a2"]


def test_unknown_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("mysql://x")


async def test_a_step_starts_with_one_call_and_keeps_the_first_reply(
    store: ConversationStore, request: pytest.FixtureRequest
) -> None:
    cid = f"c-{request.node.name}"
    await store.append(cid, [_msg(0, "system", "system")])
    # Two messages missing below the step's first new one: nothing is written.
    behind = await store.start_step(cid, 3, [_msg(3, "lost?")], 4)
    assert (behind.held, behind.reply) == (1, None)
    assert [m.seq for m in await store.messages(cid)] == [0]
    started = await store.start_step(cid, 1, [_msg(1, "hello")], 2)
    assert (started.held, started.reply) == (1, None)
    # Two attempts of one step race: the store keeps the first reply and both get it back.
    first = ChatMessage(role="assistant", content="first")
    assert await store.put_reply(cid, 2, first) == first
    assert await store.put_reply(cid, 2, ChatMessage(role="assistant", content="second")) == first
    again = await store.start_step(cid, 1, [_msg(1, "hello")], 2)
    assert again.reply == first
    rows = await store.context_rows(cid)
    assert [m.seq for m in rows.system] == [0] and rows.summary is None
    assert [m.message.content for m in rows.recent] == ["hello", "first"]


async def test_token_chunks_page_in_stream_order_and_are_pruned(
    store: ConversationStore, request: pytest.FixtureRequest
) -> None:
    from orchestrator.events import TOKEN_CURSOR_START, TokenChunk
    from orchestrator.store_stream import TOKEN_STEPS_KEPT_SEQ

    cid = f"c-{request.node.name}"

    def chunk(seq: int, attempt: int, index: int) -> TokenChunk:
        return TokenChunk(
            reply_seq=seq,
            attempt=attempt,
            index=index,
            turn=1,
            step=1,
            text=f"{seq}.{attempt}.{index}",
        )

    assert await store.last_token(cid) is None
    # Written out of order, and one twice (a retried write): read back once, in stream order.
    await store.put_tokens(cid, [chunk(5, 2, 0), chunk(3, 1, 1), chunk(3, 1, 0), chunk(5, 1, 0)])
    await store.put_tokens(cid, [chunk(3, 1, 1)])
    everything = await store.tokens_after(cid, TOKEN_CURSOR_START)
    assert [c.text for c in everything] == ["3.1.0", "3.1.1", "5.1.0", "5.2.0"]
    assert [c.text for c in await store.tokens_after(cid, (3, 1, 1))] == ["5.1.0", "5.2.0"]
    assert [c.text for c in await store.tokens_after(cid, (5, 1, 0), limit=1)] == ["5.2.0"]
    assert await store.last_token(cid) == (5, 2, 0)
    assert await store.tokens_after("other", TOKEN_CURSOR_START) == []
    # Steps far enough behind the newest are forgotten; recent ones stay.
    await store.prune_tokens(cid, 5 + TOKEN_STEPS_KEPT_SEQ)
    assert [c.text for c in await store.tokens_after(cid, TOKEN_CURSOR_START)] == ["5.1.0", "5.2.0"]


async def test_api_keys_and_owners(
    store: ConversationStore, request: pytest.FixtureRequest
) -> None:
    from orchestrator.store_accounts import ApiKeyRecord, OwnedConversation

    name = request.node.name
    key = ApiKeyRecord(
        key_id=f"k-{name}"[:60], user="alice", secret_sha256="ab" * 32, created_at="2026-11-23"
    )
    await store.put_api_key(key)
    assert await store.api_key(key.key_id) == key
    assert await store.api_key("missing") is None
    assert await store.revoke_api_key(key.key_id, "2026-11-24") is True
    assert await store.revoke_api_key(key.key_id, "2026-11-25") is False  # once
    revoked = await store.api_key(key.key_id)
    assert revoked is not None and revoked.revoked_at == "2026-11-24"

    cid = f"c-{name}"
    first = OwnedConversation(conversation_id=cid, user="alice", created_at="2026-11-23T10:00")
    assert await store.claim_conversation(first) == "alice"
    # Someone else claiming the same id does not take it over.
    taken = first.model_copy(update={"user": "mallory"})
    assert await store.claim_conversation(taken) == "alice"
    assert await store.conversation_owner(cid) == "alice"
    assert await store.owned_conversation(cid) == first
    assert await store.owned_conversation("missing") is None
    mine = await store.owned_conversations("alice")
    assert cid in [c.conversation_id for c in mine]
    assert cid not in [c.conversation_id for c in await store.owned_conversations("mallory")]
    # Among a list of ids, only alice's, in the order asked; 600 ids span two statements.
    others = [f"{cid}-x{n}" for n in range(600)]
    assert await store.owned_among("alice", [*others, cid]) == [cid]
    assert await store.owned_among("mallory", [cid]) == []


async def test_latest_turns_are_the_newest_oldest_first(
    store: ConversationStore, request: pytest.FixtureRequest
) -> None:
    cid = f"c-{request.node.name}"
    for turn in range(1, 8):
        await store.put_turn(cid, turn, TurnResult(conversation_id=cid, answer=f"answer {turn}"))
    newest = await store.latest_turns(cid, 3)
    assert [t.answer for t in newest] == ["answer 5", "answer 6", "answer 7"]
    assert len(await store.latest_turns(cid)) == 7


async def test_each_execution_of_a_step_streams_under_its_own_attempt(
    store: ConversationStore, request: pytest.FixtureRequest
) -> None:
    """A step re-run after a crash may be numbered attempt 1 again by Temporal: the store hands
    out the attempts, so two executions' chunks never mix."""
    from orchestrator.events import TOKEN_CURSOR_START, TokenChunk

    cid = f"c-{request.node.name}"

    def first(text: str) -> TokenChunk:
        return TokenChunk(reply_seq=7, attempt=1, index=0, turn=1, step=1, text=text)

    assert await store.claim_stream(cid, first("Hel")) == 1
    assert await store.claim_stream(cid, first("Sure")) == 2
    chunks = await store.tokens_after(cid, TOKEN_CURSOR_START)
    assert [(c.attempt, c.text) for c in chunks] == [(1, "Hel"), (2, "Sure")]
