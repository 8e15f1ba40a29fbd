"""The offline model through the real `litellm.acompletion`, with the real tool schemas. No Temporal.

The tools are built the way the orchestrator builds them: each team registry's `ToolSpec` through
`openai_tool`. The arguments the router produces are checked against the tools' own validation, and
the local and Finance tools (pure functions) are run for real to feed the summary step. Tools that
are not ours check that everything comes from the schemas; a guard checks that the package names
none of our tools, result fields or demo labels.
"""

from __future__ import annotations

import ast
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, get_type_hints

import jsonschema
import litellm  # conftest sets LITELLM_LOCAL_MODEL_COST_MAP before any test module loads
import pytest
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

import shared.offline_model as offline_package
from finance_service.tools import registry as finance_registry
from it_service.tools import registry as it_registry
from orchestrator.demo import SCRIPT as DEMO_SCRIPT
from orchestrator.disclosure import LOAD_TOOLS, visible_tools
from orchestrator.dispatch import build_routes
from orchestrator.loop_settings import LoopSettings
from orchestrator.models import CarriedState
from orchestrator.tools import openai_tool
from orchestrator.tools import registry as local_registry
from shared.approval import CallApproval
from shared.caller import ToolOutcome
from shared.llm_names import OFFLINE_MODEL
from shared.manifest import find_team
from shared.offline_model import OfflineKeywordRouter, register_offline_model
from shared.tools import RegisteredTool, ToolArgumentsError, ToolCall
from shared.worker import prepare_team_code

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
    # The chaos script's turns (infrastructure/chaos.py).
    (
        "Track IP 192.0.2.7 and what is (7 + 2) * 3?",
        [("track_ip", {"ip": "192.0.2.7"}), ("calculator", {"expression": "(7 + 2) * 3"})],
    ),
    (
        "Set my Jira project to OPS and what's the weather in Paris?",
        [("set_jira_project", {"project": "OPS"}), ("weather", {"city": "Paris"})],
    ),
    ("Show my IP history", [("get_ip_history", {})]),
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


def tool_message(call_id: str, content: Any, name: str | None = None) -> dict[str, Any]:
    message = {"role": "tool", "tool_call_id": call_id, "content": json.dumps(content)}
    return message | ({"name": name} if name else {})


# Turns that use IT's MCP servers' tools, whose schemas come from the servers themselves.
MCP_DEMO_TURNS = [
    (
        "What is the current time in Asia/Tokyo, and add a note: VPN restored after the gw-2 reboot",
        [
            ("get_current_time", {"timezone": "Asia/Tokyo"}),
            ("add_note", {"text": "VPN restored after the gw-2 reboot"}),
        ],
    ),
    ("Show my incident notes", [("list_notes", {})]),
    # IT's triage agent, discovered as a tool: the text after the colon is its task.
    (
        "Ask the IT triage agent: host 192.0.2.10 answered on an unexpected port",
        [("it_triage", {"task": "host 192.0.2.10 answered on an unexpected port"})],
    ),
]


@pytest.fixture(scope="module")
async def tools_with_mcp() -> list[dict[str, Any]]:
    """The demo's whole catalog: the Python tools, and IT's MCP tools as the servers list them."""
    code = await prepare_team_code(find_team("it_service"))
    try:
        listed = [
            openai_tool(t.spec.name, t.spec.description, t.spec.parameters) for t in code.registry
        ]
    finally:
        await code.close()
    names = {tool["function"]["name"] for tool in listed}
    return [*listed, *(tool for tool in TOOLS if tool["function"]["name"] not in names)]


@pytest.mark.parametrize(("text", "expected"), MCP_DEMO_TURNS, ids=[t for t, _ in MCP_DEMO_TURNS])
async def test_demo_messages_route_to_mcp_tools(
    text: str, expected: list[tuple[str, dict[str, Any]]], tools_with_mcp: list[dict[str, Any]]
) -> None:
    response = await complete(user(text), tools=tools_with_mcp)
    assert calls_of(response) == expected


async def test_the_triage_agent_s_own_step_routes_its_task_to_its_tools(
    tools_with_mcp: list[dict[str, Any]],
) -> None:
    """In the team: the agent's task template frames the caller's task, and the offline model
    calls the three tools the instructions name (create_ticket is then proposed, not run)."""
    [triage] = find_team("it_service").agents
    own = [t for t in tools_with_mcp if t["function"]["name"] in triage.tools]
    task = triage.task_template.replace("{task}", "host 192.0.2.10 answered on an unexpected port")
    response = await complete(user(task), tools=own)
    assert calls_of(response) == [
        ("get_ip_history", {}),
        ("jira_metrics", {}),
        (
            "create_ticket",
            {"project": "OPS", "summary": "host 192.0.2.10 answered on an unexpected port"},
        ),
    ]


def test_the_demo_script_is_what_is_tested_here() -> None:
    demo = [text for text, _ in DEMO_SCRIPT]
    tested = {text for text, _ in [*DEMO_TURNS, *GATED_TURNS, *MCP_DEMO_TURNS]}
    assert [text for text, _ in DEMO_TURNS[:4]] == demo[:4]
    assert [text for text in demo if text not in tested] == []


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
    outputs = {}
    for call in message.tool_calls:
        outputs[call.function.name] = await run_tool(call.function.name, call.function.arguments)
        messages.append(tool_message(call.id, outputs[call.function.name], call.function.name))

    response = await complete(messages)

    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    lines = choice.message.content.splitlines()
    assert lines[0] == "calculator: expression (17.5 * 4) + 3, result 73"
    weather = outputs["weather"]
    assert lines[1] == (
        f"weather: city Paris, temperature c {weather['temperature_c']}, "
        f"conditions {weather['conditions']}, source {weather['source']}"
    )
    # A sentence the tool wrote about its result reaches the user as written, on its own line.
    assert lines[2:] == [f"  note: {weather['note']}"]


async def test_finance_results_and_a_validation_error_are_summarised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("QUOTE_API_URL", raising=False)
    messages, message = await run_turn(DEMO_TURNS[3][0])
    quote = await run_tool("stock_price", message.tool_calls[0].function.arguments)
    roi = await run_tool("calculate_roi", message.tool_calls[1].function.arguments)
    # Tool messages without `name`: the router finds it from the assistant's tool calls.
    messages += [tool_message(message.tool_calls[0].id, quote)]
    messages += [tool_message(message.tool_calls[1].id, roi)]

    answer = (await complete(messages)).choices[0].message.content

    expected_final = (Decimal(10000) * Decimal("1.07") ** 5).quantize(Decimal("0.01"))
    assert answer.splitlines() == [
        f"stock_price: ticker AAPL, price {quote['price']}, currency USD, source {quote['source']}",
        f"  note: {quote['note']}",
        f"calculate_roi: principal 10000, rate percent 7, years 5, final value {expected_final}, "
        f"profit {roi['profit']}, roi percent {roi['roi_percent']}",
    ]

    # An invalid address is not taken from the text: the call goes out empty, the tool refuses.
    messages, message = await run_turn("track IP 999.1.1.1")
    assert calls_of_message(message) == [("track_ip", {"ip": ""})]
    with pytest.raises(ToolArgumentsError) as refused:
        REGISTERED["track_ip"].validate_arguments({"ip": ""})
    error = {"error": "bad_request", "message": str(refused.value)}
    messages.append(tool_message(message.tool_calls[0].id, error))
    answer = (await complete(messages)).choices[0].message.content
    assert answer == f"track_ip: error bad_request\n  message: {refused.value}"


GATED_TURNS = [
    (
        "Submit an expense of 750 EUR for cost centre CC-1001: team offsite dinner",
        [
            (
                "submit_expense",
                {
                    "amount": 750,
                    "currency": "EUR",
                    "cost_centre": "CC-1001",
                    "reason": "team offsite dinner",
                },
            )
        ],
    ),
    (
        "Submit an expense of 120 EUR for cost centre CC-1001: taxi",
        [
            (
                "submit_expense",
                {"amount": 120, "currency": "EUR", "cost_centre": "CC-1001", "reason": "taxi"},
            )
        ],
    ),
    (
        "Submit an expense of 2400 EUR for cost centre CC-1001: first-class upgrade",
        [
            (
                "submit_expense",
                {
                    "amount": 2400,
                    "currency": "EUR",
                    "cost_centre": "CC-1001",
                    "reason": "first-class upgrade",
                },
            )
        ],
    ),
    (
        "Create a ticket in OPS: VPN drops every hour",
        [("create_ticket", {"project": "OPS", "summary": "VPN drops every hour"})],
    ),
    ("Show the recent expenses", [("list_expenses", {})]),
]


@pytest.mark.parametrize(("text", "expected"), GATED_TURNS, ids=[t for t, _ in GATED_TURNS])
async def test_write_requests_route_with_their_arguments(
    text: str, expected: list[tuple[str, dict[str, Any]]]
) -> None:
    assert calls_of(await complete(user(text))) == expected
    assert calls_of(await complete(user(text), tools=tool_dicts(qualified=True))) == [
        (f"{SERVICE_OF[n]}__{n}", args) for n, args in expected
    ]
    for name, args in expected:
        REGISTERED[name].validate_arguments(args)


@pytest.mark.parametrize(
    "verdict", [None, "deny"], ids=["refused-without-approval", "denied-by-a-person"]
)
async def test_a_refused_gated_call_is_answered_in_words(verdict: str | None) -> None:
    messages, message = await run_turn(GATED_TURNS[0][0])
    [tool_call] = message.tool_calls
    registered = REGISTERED["submit_expense"]
    approval = (
        None
        if verdict is None
        else CallApproval(
            call_id=tool_call.id, verdict="deny", approver="ada", decided_at="2026-01-05T10:00:00Z"
        )
    )
    gated = ToolCall(
        call_id=tool_call.id,
        tool="submit_expense",
        args=json.loads(tool_call.function.arguments),
        approval=approval,
    )
    # What the team's handler answers, as the orchestrator passes it to the model.
    problem = registered.approval_problem(gated)
    assert problem is not None
    messages.append(tool_message(tool_call.id, {"error": "unauthenticated", "message": problem}))

    answer = (await complete(messages)).choices[0].message.content

    assert answer == f"submit_expense: error unauthenticated\n  message: {problem}"
    assert ("nothing was started" if verdict is None else "denied by ada") in answer


async def test_a_call_denied_before_it_was_sent_is_answered_in_words() -> None:
    messages, message = await run_turn(GATED_TURNS[3][0])
    [tool_call] = message.tool_calls
    # The shape of a call the conversation itself did not send: an error kind and a sentence.
    denied = {"error": "denied", "message": "not run: ada denied this call: use the VPN runbook"}
    messages.append(tool_message(tool_call.id, denied))

    answer = (await complete(messages)).choices[0].message.content

    assert answer.splitlines() == [
        "create_ticket: error denied",
        "  message: not run: ada denied this call: use the VPN runbook",
    ]


def calls_of_message(message: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]


async def test_any_json_result_is_rendered_generically() -> None:
    results = {
        "nested": {"flag": True, "missing": None, "empty": "", "inner": {"a": 1, "b": [1, 2]}},
        "rows": [
            {"on": True, "id": "r1", "x": 1},
            {"id": "r2", "x": 2},
            *({"n": n} for n in range(3, 8)),
        ],
        "array": [],
        "text": "plain words",
        "prose_only": {"explanation": "nothing was found for this query today"},
        "twice": {"value": 1, "caveat": "numbers are rounded to whole units"},
        "again": {"value": 2, "caveat": "numbers are rounded to whole units"},
        "long": {"blob": "y" * 400},
        "empty": {},
    }
    messages: list[dict[str, Any]] = user("anything")
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": "{}"}}
        for i, n in enumerate(results)
    ]
    messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    messages += [tool_message(f"c{i}", r) for i, r in enumerate(results.values())]
    messages.append({"role": "tool", "tool_call_id": "c9", "name": "raw", "content": "not JSON"})

    lines = (await complete(messages)).choices[0].message.content.splitlines()

    assert lines[:4] == [
        "nested: flag yes, inner (a 1, b [1, 2])",
        "rows: [r1, r2, 3, 4, 5] (+2 more)",
        "array: none",
        "text: plain words",
    ]
    assert lines[4] == "prose_only: explanation: nothing was found for this query today"
    # The same sentence from two results is said once.
    assert lines[5:8] == [
        "twice: value 1",
        "  caveat: numbers are rounded to whole units",
        "again: value 2",
    ]
    assert lines[8].startswith("long: blob yyy") and lines[8].endswith("...")
    assert len(lines[8]) == 300
    assert lines[9:] == ["empty: done", "raw: not JSON"]


BOOK_ROOM = {
    "type": "function",
    "function": {
        "name": "book_room",
        "description": "Reserve a hotel room.",
        "parameters": {
            "type": "object",
            "properties": {
                "room": {"type": "string", "pattern": "^R\\d{3}$"},
                "nights": {"type": "integer", "minimum": 1},
                "guests": {"type": "integer", "minimum": 1},
                "view": {"type": "string", "enum": ["sea", "garden"]},
            },
            "required": ["room", "nights"],
        },
    },
}
OTHER_TOOLS: list[dict[str, Any]] = [
    BOOK_ROOM,
    openai_tool(
        "ping_host",
        "Send an echo request to a host.",
        {
            "type": "object",
            "properties": {"host": {"type": "string", "format": "ipv4"}},
            "required": ["host"],
        },
    ),
    openai_tool(
        "evaluate_formula",
        "Work out a value.",
        {
            "type": "object",
            "properties": {"formula": {"type": "string", "description": "A math formula."}},
            "required": ["formula"],
        },
    ),
    openai_tool(
        "translate_text",
        "Translate a phrase into a language.",
        {
            "type": "object",
            "properties": {
                "language": {"type": "string", "description": "Target language name."},
                "formal": {"type": "boolean"},
            },
            "required": ["language", "formal"],
        },
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Book room R101 for 2 guests for 3 nights with a garden view",
            ("book_room", {"room": "R101", "nights": 3, "guests": 2, "view": "garden"}),
        ),
        ("Ping 2001:db8::1 and 10.0.0.1", ("ping_host", {"host": "10.0.0.1"})),
        ("Evaluate 2 plus 3 times 4", ("evaluate_formula", {"formula": "2 + 3 * 4"})),
        ("Translate this into German", ("translate_text", {"language": "German", "formal": False})),
    ],
)
async def test_arguments_of_any_tool_come_from_its_schema(
    text: str, expected: tuple[str, dict[str, Any]]
) -> None:
    response = await complete(user(text), tools=OTHER_TOOLS)

    assert calls_of(response) == [expected]
    schema = next(
        t["function"]["parameters"] for t in OTHER_TOOLS if t["function"]["name"] == expected[0]
    )
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(expected[1])


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


# ------------------------------------------------------------------------------------------------
# Tools disclosed on demand: the tool list the orchestrator builds past its thresholds.


def disclosed_tools(loaded: list[str]) -> list[dict[str, Any]]:
    """`load_tools` with an index of every tool, and the full schemas of `loaded` only."""
    routes = build_routes([(None, t.spec) for t in REGISTERED.values()])
    state = CarriedState(routes=routes, loaded_tools=loaded)
    tools = visible_tools(LoopSettings(disclose_tools_over_count=1), state)
    assert tools[0]["function"]["name"] == LOAD_TOOLS
    return tools


def after(messages: list[dict[str, Any]], response: Any, results: list[Any]) -> list[Any]:
    """The conversation after the response's calls, answered with `results` in order."""
    calls = response.choices[0].message.tool_calls
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in calls
        ],
    }
    answers = [tool_message(c.id, r, c.function.name) for c, r in zip(calls, results, strict=True)]
    return [*messages, assistant, *answers]


async def test_with_an_index_it_loads_the_tools_it_picks_then_calls_them() -> None:
    text = DEMO_TURNS[3][0]  # a stock price and an ROI: two tools
    messages = user(text)
    first = await complete(messages, tools=disclosed_tools([]))
    assert calls_of(first) == [(LOAD_TOOLS, {"names": ["stock_price", "calculate_roi"]})]

    loaded = {"loaded": ["stock_price", "calculate_roi"], "unknown": [], "message": "Loaded."}
    messages = after(messages, first, [loaded])
    second = await complete(messages, tools=disclosed_tools(["stock_price", "calculate_roi"]))
    # Routed again, now against the full schemas: the calls the whole catalog would give.
    assert calls_of(second) == DEMO_TURNS[3][1]
    assert calls_of(second) == calls_of(await complete(user(text)))

    outputs = [
        await run_tool(c.function.name, c.function.arguments)
        for c in second.choices[0].message.tool_calls
    ]
    third = await complete(
        after(messages, second, outputs), tools=disclosed_tools(["stock_price", "calculate_roi"])
    )
    answer = third.choices[0].message.content
    assert not third.choices[0].message.tool_calls
    assert "stock_price" in answer and "calculate_roi" in answer
    assert LOAD_TOOLS not in answer  # the loader's answer is not a result to report


async def test_a_loaded_tool_is_called_without_loading_it_again() -> None:
    response = await complete(user("weather in Oslo"), tools=disclosed_tools(["weather"]))
    assert calls_of(response) == [("weather", {"city": "Oslo"})]


async def test_with_an_index_and_no_matching_tool_it_answers_plainly() -> None:
    response = await complete(user("Tell me a joke about penguins"), tools=disclosed_tools([]))
    assert not response.choices[0].message.tool_calls
    assert "found no tool" in response.choices[0].message.content
    # After a loader's answer that loaded nothing it fits, it answers instead of loading again.
    messages = [
        *user("Tell me a joke about penguins"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "load-1",
                    "type": "function",
                    "function": {"name": LOAD_TOOLS, "arguments": '{"names":["jokes"]}'},
                }
            ],
        },
        tool_message("load-1", {"error": "not_found", "unknown": ["jokes"]}),
    ]
    again = await complete(messages, tools=disclosed_tools([]))
    assert not again.choices[0].message.tool_calls


async def test_a_tool_named_like_the_loader_without_an_index_is_an_ordinary_tool() -> None:
    plain = openai_tool(LOAD_TOOLS, "Load the tool inventory of a warehouse.", {"type": "object"})
    response = await complete(user("load tools inventory"), tools=[plain])
    assert calls_of(response) == [(LOAD_TOOLS, {})]


# ------------------------------------------------------------------------------------------------
# The guard: the package learns tools and results at run time, so it names none of ours.

PACKAGE = Path(offline_package.__file__).parent


def _field_names(schema: Any) -> set[str]:
    if isinstance(schema, list):
        return set().union(*map(_field_names, schema))
    if not isinstance(schema, dict):
        return set()
    own = set(schema.get("properties", {})) if isinstance(schema.get("properties"), dict) else set()
    return own.union(*map(_field_names, schema.values()))


def _our_names() -> tuple[set[str], set[str]]:
    """(words that may appear nowhere, field names that may not be string constants)."""
    tools = {name.lower() for name in REGISTERED} | {"jira", "roi", "demo"}
    fields = {"ok", "output", "error_kind", "error", "message"}  # outcome and failure shapes
    assert fields <= set(ToolOutcome.model_fields) | {"message"}
    for registered in REGISTERED.values():
        returned = get_type_hints(registered.function)["return"]
        assert issubclass(returned, BaseModel)
        fields |= _field_names(returned.model_json_schema())
    return tools | {f for f in fields if "_" in f}, fields


def offences(source: str) -> list[str]:
    """Our tool names, result fields and demo labels found in one module's source."""
    anywhere, as_constants = _our_names()
    found = [w for w in anywhere if re.search(rf"\b{re.escape(w)}\b", source, re.IGNORECASE)]
    constants = [
        node.value.lower()
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    return found + [c for c in constants if c in as_constants]


def test_the_guard_catches_names_of_ours() -> None:
    assert offences('"""Nothing of ours."""\nx = data.get("value")\n') == []
    assert offences("# what the weather tool returns\n") == ["weather"]
    assert offences('if key in ("source", "Note"):\n    pass\n') == ["source", "note"]
    assert offences("value = data['result']\n") == ["result"]
    assert offences('"""Reads temperature_c."""\n') == ["temperature_c"]
    assert offences("label = 'Demo data'\n") == ["demo"]


@pytest.mark.parametrize("module", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_the_package_names_no_tool_result_field_or_label_of_ours(module: Path) -> None:
    source = module.read_text()
    assert offences(source) == []
    assert len(source.splitlines()) <= 250
