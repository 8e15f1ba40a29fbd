"""Model lists with fallbacks on the orchestrator's loop: two fake providers, one failing.

Both providers are OpenAI-compatible HTTP servers that LiteLLM reaches over real HTTP; the
failing one answers as an outage, a rate limit or a context-window overflow would."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType

from orchestrator.client import ConversationClient
from orchestrator.config import LLMSettings
from orchestrator.store import open_store
from orchestrator.worker import build_orchestrator_worker
from shared.llm_names import ModelChoice
from tests.conftest import STORE_URL, Stack, orchestrator_settings
from tests.support.fake_http import Reply
from tests.support.fake_llm import FakeModelServer, completion, error

FALLBACK_KEY_VARIABLE = "FALLBACK_TEST_KEY"


@pytest.fixture(scope="module")
def backup_model() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture
async def with_fallback(
    stack: Stack, fake_model: FakeModelServer, backup_model: FakeModelServer
) -> AsyncIterator[ConversationClient]:
    backup_model.reset()
    os.environ[FALLBACK_KEY_VARIABLE] = "sk-backup"
    llm = LLMSettings(
        model="openai/primary",
        api_base=f"{fake_model.url}/v1",
        api_key=SecretStr("sk-primary"),
        timeout_seconds=3,
        temperature=0,
        fallback_models=[
            ModelChoice(
                model="openai/backup",
                api_base=f"{backup_model.url}/v1",
                api_key_env=FALLBACK_KEY_VARIABLE,
            )
        ],
    )
    client = stack.client("orchestrator")
    task_queue = f"orchestrator-fallback-{uuid.uuid4().hex[:8]}"
    worker = build_orchestrator_worker(
        client, task_queue=task_queue, settings=orchestrator_settings(), llm_settings=llm
    )
    async with worker:
        yield ConversationClient(client, task_queue)


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (error(503, "the service is overloaded"), "unavailable"),
        (error(429, "rate limit reached", {"retry-after": "30"}), "rate limited"),
        (
            error(
                400,
                "This model's maximum context length is 8192 tokens. However, your messages "
                "resulted in 9000 tokens. (context_length_exceeded)",
            ),
            "context window exceeded",
        ),
    ],
)
async def test_a_failing_model_falls_back_to_the_next_and_the_turn_says_so(
    stack: Stack,
    with_fallback: ConversationClient,
    fake_model: FakeModelServer,
    backup_model: FakeModelServer,
    failure: Reply,
    reason: str,
) -> None:
    cid = f"fallback-{uuid.uuid4()}"
    fake_model.script(failure, completion("the primary is back"))
    backup_model.script(completion("answered by the backup"))
    result = await with_fallback.send(cid, "hello")
    assert result.ok, result.error
    assert result.answer == "answered by the backup"
    note = f"model openai/primary {reason}; fell back to openai/backup"
    assert note in result.notes
    # The backup was asked with its own key, read from its variable.
    [asked] = backup_model.requests
    assert asked.headers.get("authorization") == "Bearer sk-backup"
    # Its usage row names the model that answered, not the first of the list.
    store = open_store(STORE_URL)
    try:
        [row] = [r for r in await store.usage_steps() if r.conversation_id == cid]
    finally:
        await store.close()
    assert row.model == "openai/backup"
    # The next step starts again from the first model, which answers now.
    second = await with_fallback.send(cid, "again")
    assert second.answer == "the primary is back" and second.notes == []
    # The fallback is in the conversation's history, in the turn's recorded result.
    history = await stack.client("orchestrator").get_workflow_handle(cid).fetch_history()
    completed = [
        e.workflow_execution_update_completed_event_attributes.outcome.success.payloads[0].data
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED
    ]
    assert note in json.loads(completed[0])["notes"]


async def test_a_refused_request_does_not_fall_back(
    with_fallback: ConversationClient, fake_model: FakeModelServer, backup_model: FakeModelServer
) -> None:
    """Bad credentials fail the same way on any model of the list: no fallback, a clear error."""
    fake_model.script(error(401, "invalid api key"))
    result = await with_fallback.send(f"fallback-{uuid.uuid4()}", "hello")
    assert not result.ok and "rejected the credentials" in (result.error or "")
    assert backup_model.requests == []


def test_fallback_models_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_FALLBACK_MODELS", "openai/b, anthropic/c")
    assert [m.model for m in LLMSettings().fallback_models] == ["openai/b", "anthropic/c"]
    monkeypatch.setenv(
        "LLM_FALLBACK_MODELS", '[{"model": "openai/b", "api_base": "http://x/v1"}, "openai/c"]'
    )
    models = LLMSettings(model="openai/a").models
    assert [(m.model, m.api_base) for m in models] == [
        ("openai/a", None),
        ("openai/b", "http://x/v1"),
        ("openai/c", None),
    ]
    monkeypatch.setenv("LLM_FALLBACK_MODELS", '[{"modle": "x"}]')
    with pytest.raises(ValueError, match="model"):
        LLMSettings()


async def test_a_turn_s_chosen_model_goes_first_and_the_others_stay_its_fallbacks(
    with_fallback: ConversationClient, fake_model: FakeModelServer, backup_model: FakeModelServer
) -> None:
    cid = f"fallback-{uuid.uuid4()}"
    backup_model.script(error(503, "down for a moment"))
    fake_model.script(completion("the primary stood in"))
    result = await with_fallback.with_model("openai/backup").send(cid, "hello")
    assert result.answer == "the primary stood in"
    assert result.notes == [
        "model chosen for this turn: openai/backup",
        "model openai/backup unavailable; fell back to openai/primary",
    ]
    # The next message, with no choice, is the deployment's order again.
    fake_model.script(completion("primary again"))
    assert (await with_fallback.send(cid, "and now")).answer == "primary again"
    assert len(backup_model.requests) == 1
