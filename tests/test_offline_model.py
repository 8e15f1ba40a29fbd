"""The offline model through the real `litellm.acompletion`, with the real tool schemas. No Temporal.

The tools are built the way the orchestrator builds them: each team registry's `ToolSpec` through
`openai_tool`. The arguments the router produces are checked against the tools' own validation, and
the local and Finance tools (pure functions) are run for real to feed the summary step.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import litellm  # conftest sets LITELLM_LOCAL_MODEL_COST_MAP before any test module loads
import pytest
from pydantic_core import to_jsonable_python

from finance_service.tools import registry as finance_registry
from it_service.tools import registry as it_registry
from orchestrator.models import OFFLINE_MODEL
from orchestrator.offline_model import OfflineKeywordRouter, register_offline_model
from orchestrator.tools import openai_tool
from orchestrator.tools import registry as local_registry
from shared.tools import RegisteredTool

REGISTRIES = {"local": local_registry, "it": it_registry, "finance": finance_registry}
REGISTERED: dict[str, RegisteredTool] = {
    t.spec.name: t for registry in REGISTRIES.values() for t in registry
}


def tool_dicts(qualified: bool = False) -> list[dict[str, Any]]:
    tools = []
    for service, registry in REGISTRIES.items():
        for registered in registry:
            spec = registered.spec
            name = f"{service}__{spec.name}" if qualified else spec.name
            tools.append(openai_tool(name, spec.description, spec.parameters))
    return tools


TOOLS = tool_dicts()

DEMO_TURNS = [
    (
        "What is (17.5 * 4) + 3, and what's the weather in Paris?",
        [("calculator", {"expression": "(17.5 * 4) + 3"}), ("weather", {"city": "Paris"})],
    ),
    (
        "Set my Jira project to OPS and track IP 192.0.2.10",
        [("set_jira_project", {"project": "OPS"}), ("track_ip", {"ip": "192.0.2.10"})],
    ),
    (
        "Show the Jira metrics and my IP history",
        [("jira_metrics", {}), ("get_ip_history", {})],
    ),
    (
        "What's the stock price of AAPL and the ROI on 10000 at 7 percent for 5 years?",
        [
            ("stock_price", {"ticker": "AAPL"}),
            ("calculate_roi", {"principal": 10000, "rate": 7, "years": 5}),
        ],
    ),
    ("What is my IP address?", [("get_ip", {})]),
]
SERVICE_OF = {t.spec.name: t.spec.service for t in REGISTERED.values()}

# litellm's own response types trip a pydantic warning the first time they are built.
pytestmark = pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier")


@pytest.fixture(scope="module", autouse=True)
def offline_model() -> None:
    register_offline_model()


async def complete(messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    kwargs.setdefault("tools", TOOLS)
    return await litellm.acompletion(
        model=OFFLINE_MODEL, messages=messages, num_retries=0, **kwargs
    )


def calls_of(response: Any) -> list[tuple[str, dict[str, Any]]]:
    return [
        (call.function.name, json.loads(call.function.arguments))
        for call in response.choices[0].message.tool_calls or []
    ]


def user(text: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text},
    ]


async def run_turn(text: str) -> tuple[list[dict[str, Any]], Any]:
    """Ask, and append the assistant message with its tool calls, as the orchestrator would."""
    messages = user(text)
    response = await complete(messages)
    message = response.choices[0].message
    messages.append(
        {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
                for call in message.tool_calls
            ],
        }
    )
    return messages, message


async def run_tool(name: str, arguments: str) -> Any:
    registered = REGISTERED[name]
    output = await registered.function(**registered.validate_arguments(json.loads(arguments)))
    return to_jsonable_python(output)


@pytest.mark.parametrize(("text", "expected"), DEMO_TURNS, ids=[t for t, _ in DEMO_TURNS])
async def test_demo_messages_route_to_the_right_tools(
    text: str, expected: list[tuple[str, dict[str, Any]]]
) -> None:
    response = await complete(user(text))

    choice = response.choices[0]
    assert calls_of(response) == expected
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert choice.message.content is None
    ids = [call.id for call in choice.message.tool_calls]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"offline-\d+-[0-9a-f]{6,}", i) for i in ids)
    assert all(call.type == "function" for call in choice.message.tool_calls)
    assert response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens > 0
    assert response.model == OFFLINE_MODEL
    # The arguments pass the tools' own validation: the router read the real schemas.
    for name, args in expected:
        REGISTERED[name].validate_arguments(args)


@pytest.mark.parametrize(("text", "expected"), DEMO_TURNS, ids=[t for t, _ in DEMO_TURNS])
async def test_service_qualified_tool_names_route_the_same(
    text: str, expected: list[tuple[str, dict[str, Any]]]
) -> None:
    response = await complete(user(text), tools=tool_dicts(qualified=True))

    assert calls_of(response) == [(f"{SERVICE_OF[n]}__{n}", args) for n, args in expected]


async def test_tool_results_are_summarised_in_a_final_answer() -> None:
    messages, message = await run_turn(DEMO_TURNS[0][0])
    for call in message.tool_calls:
        output = await run_tool(call.function.name, call.function.arguments)
        messages.append(
            {
                "role": "tool",
                "tool_call_id": call.id,
                "name": call.function.name,
                "content": json.dumps(output),
            }
        )

    response = await complete(messages)

    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    lines = choice.message.content.splitlines()
    assert lines[0] == "calculator: 73"
    assert lines[1].startswith("weather: Paris, ")
    assert lines[1].endswith("(demo data)")
    assert any(line.startswith("Note: demo data") for line in lines)


async def test_summary_reports_errors_and_demo_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUOTE_API_URL", raising=False)
    messages, message = await run_turn(DEMO_TURNS[3][0])
    quote = await run_tool("stock_price", message.tool_calls[0].function.arguments)
    roi = await run_tool("calculate_roi", message.tool_calls[1].function.arguments)
    # Tool messages without `name`: the router finds it from the assistant's tool calls.
    messages.append(
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": json.dumps(quote)}
    )
    messages.append(
        {"role": "tool", "tool_call_id": message.tool_calls[1].id, "content": json.dumps(roi)}
    )

    answer = (await complete(messages)).choices[0].message.content

    expected_final = (Decimal(10000) * Decimal("1.07") ** 5).quantize(Decimal("0.01")).normalize()
    assert re.search(r"^stock_price: AAPL, price [\d.]+ USD \(demo data\)$", answer, re.M)
    assert "calculate_roi: principal 10000" in answer
    assert f"final value {expected_final}" in answer
    assert "Note: demo data: set QUOTE_API_URL for live quotes" in answer

    error = {"error": "bad_request", "message": "invalid arguments for tool 'track_ip': 'ip'"}
    messages, message = await run_turn("track IP 999.1.1.1")
    messages.append(
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": json.dumps(error)}
    )
    answer = (await complete(messages)).choices[0].message.content
    assert answer == "track_ip: error (bad_request): invalid arguments for tool 'track_ip': 'ip'"


async def test_same_input_gives_the_same_output() -> None:
    text = DEMO_TURNS[3][0]
    first, second = await complete(user(text)), await complete(user(text))

    assert first.id == second.id
    assert first.created == second.created
    assert first.choices[0].model_dump() == second.choices[0].model_dump()
    assert first.usage.model_dump() == second.usage.model_dump()
    # A later turn of the same conversation gets fresh call ids (a repeated call is a new call).
    later = await complete([*user("hello"), {"role": "assistant", "content": "hi"}, *user(text)])
    assert calls_of(later) == calls_of(first)
    assert {c.id for c in later.choices[0].message.tool_calls}.isdisjoint(
        {c.id for c in first.choices[0].message.tool_calls}
    )


async def test_no_matching_tool_gets_a_plain_answer() -> None:
    response = await complete(user("Tell me a joke about penguins"))

    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert "found no tool" in choice.message.content
    for name in REGISTERED:
        assert name in choice.message.content


async def test_arguments_come_from_the_text_not_from_tool_names() -> None:
    response = await complete(
        user("Price of MSFT stock, then weather for New York; also what is 2 ** 10")
    )
    assert calls_of(response) == [
        ("stock_price", {"ticker": "MSFT"}),
        ("weather", {"city": "New York"}),
        ("calculator", {"expression": "2 ** 10"}),
    ]
    # The same tool twice with the same arguments is one call; different arguments are two.
    response = await complete(
        user("Track IP 192.0.2.1 and track IP 192.0.2.1 and track 2001:db8::1")
    )
    assert calls_of(response) == [
        ("track_ip", {"ip": "192.0.2.1"}),
        ("track_ip", {"ip": "2001:db8::1"}),
    ]
    # A required argument the text does not give is sent anyway: the service says what is wrong.
    response = await complete(user("What's the weather like?"))
    assert calls_of(response) == [("weather", {"city": ""})]


async def test_tool_choice_is_honoured() -> None:
    response = await complete(user("What is my IP address?"), tool_choice="none")
    assert response.choices[0].finish_reason == "stop"
    assert not response.choices[0].message.tool_calls

    forced = {"type": "function", "function": {"name": "weather"}}
    response = await complete(user("Tell me about Paris"), tool_choice=forced)
    assert calls_of(response) == [("weather", {"city": "Paris"})]


async def test_works_without_tools_and_through_sync_completion() -> None:
    response = await litellm.acompletion(
        model=OFFLINE_MODEL, messages=user("What is my IP address?"), num_retries=0
    )
    assert "found no tool" in response.choices[0].message.content

    response = litellm.completion(
        model=OFFLINE_MODEL, messages=user("weather in Oslo"), tools=TOOLS
    )
    assert calls_of(response) == [("weather", {"city": "Oslo"})]
    assert litellm.completion_cost(completion_response=response) == 0.0


def test_registration_is_idempotent_and_keeps_other_providers() -> None:
    other: Any = {"provider": "someone-else", "custom_handler": OfflineKeywordRouter()}
    saved = list(litellm.custom_provider_map)
    litellm.custom_provider_map.append(other)
    try:
        register_offline_model()
        register_offline_model()
        providers = [entry["provider"] for entry in litellm.custom_provider_map]
        assert providers.count("offline") == 1
        assert other in litellm.custom_provider_map
    finally:
        litellm.custom_provider_map[:] = saved
