"""Bad input from every side ends in validation errors, never in a failed workflow task.

Hypothesis drives the fake model to send random and malformed tool arguments (wrong types,
unicode, deeply nested JSON, unknown fields and tools), and the user to send unicode-heavy and
oversized messages. Afterwards, no recorded history holds a WorkflowTaskFailed event.
"""

from __future__ import annotations

import json
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError

from orchestrator.client import InvalidMessageError
from tests.conftest import Orchestrator, Stack
from tests.support.fake_llm import FakeModelServer, completion

TOOLS = ["calculator", "weather", "track_ip", "calculate_roi", "stock_price", "set_jira_project"]
RUN_TAG = uuid.uuid4().hex[:6]
# Conversations the fuzz test started (the client refuses a blank message before any starts).
started: list[str] = []

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
deep_nesting = st.integers(min_value=20, max_value=200).map(
    lambda depth: json.loads("[" * depth + "1" + "]" * depth)
)
arguments = st.one_of(
    st.dictionaries(
        st.sampled_from(["expression", "city", "ip", "principal", "rate", "years", "ticker", "x"]),
        json_values | deep_nesting,
        max_size=4,
    ).map(json.dumps),
    st.text(max_size=60),  # not JSON at all, or JSON that is not an object
    json_values.map(json.dumps),
)
tool_names = st.sampled_from(TOOLS) | st.text(min_size=1, max_size=20)
messages = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=3000)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=tool_names, raw_args=arguments, text=messages)
async def test_fuzzed_tool_calls_and_messages(
    orchestrator: Orchestrator,
    fake_model: FakeModelServer,
    name: str,
    raw_args: str,
    text: str,
) -> None:
    fake_model.reset()
    fake_model.script(completion(tool_calls=[(name, raw_args)]), completion("done"))
    cid = f"fuzz-{RUN_TAG}-{uuid.uuid4().hex[:8]}"
    try:
        if text.strip():
            started.append(cid)
        result = await orchestrator.conversations.send(cid, text)
    except InvalidMessageError as refused:  # the client refuses empty messages before sending
        assert not text.strip(), refused
        return
    except WorkflowUpdateFailedError as rejected:  # oversized for this worker's settings
        assert not text.strip() or len(text) > 2000, rejected
        return
    assert result.ok, result.error
    assert len(result.tool_calls) == 1
    call = result.tool_calls[0]
    if not call.ok:
        assert isinstance(call.result, str) and call.result  # a readable reason for the model


async def test_no_fuzzed_history_has_a_failed_workflow_task(stack: Stack) -> None:
    checked = 0
    for namespace, prefix in [
        ("orchestrator", f"fuzz-{RUN_TAG}-"),
        ("finance", f"tool-fuzz-{RUN_TAG}-"),
        ("it", f"tool-fuzz-{RUN_TAG}-"),
    ]:
        checked += await _assert_no_failed_tasks(stack.client(namespace), prefix)
    assert started, "the fuzz test above must have run first and recorded histories"
    assert checked >= len(started)


async def _assert_no_failed_tasks(client: Client, prefix: str) -> int:
    count = 0
    async for execution in client.list_workflows(f"WorkflowId STARTS_WITH '{prefix}'"):
        history = await client.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        failed = [
            e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
        assert not failed, f"{execution.id}: {failed[0]}"
        count += 1
    return count
