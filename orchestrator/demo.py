"""`make demo`: a scripted multi-turn conversation on the running embedded stack.

It uses local, IT and Finance tools, runs two tools in parallel in the first turns, and carries IT
session state (the Jira project and tracked addresses) from one turn to the next. It asks IT's
MCP-backed tools (mcp-server-time, and a notebook server that keeps a note per conversation and
reads it back in the next turn). Then it submits
two expenses over Finance's approval threshold: the turn pauses on each, and the demo itself, as
the operator `make-demo`, approves the first and denies the second, saying so. The last turn lists
the Finance ledger: the approved expense is there, the denied one is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.markup import escape

from orchestrator.approval_commands import current_user
from orchestrator.cli_support import CliError, open_conversations
from orchestrator.client import ConversationClient
from orchestrator.models import Decision, PendingApproval, TurnResult
from orchestrator.render import (
    OFFLINE_NOTICE,
    UI_ADDRESS,
    compact,
    describe_usage_cost,
    print_turn,
    send_with_status,
)
from orchestrator.trace_commands import conversation_traces, read_spans, render_tree, traces_file
from shared.telemetry import flush_spans
from shared.temporal import exit_process

Verdict = Literal["approve", "deny"]
DEMO_OPERATOR = "make-demo"
# (message, what the demo decides on the call that waits for approval, if one does)
SCRIPT: list[tuple[str, Verdict | None]] = [
    ("What is (17.5 * 4) + 3, and what's the weather in Paris?", None),
    ("Set my Jira project to OPS and track IP 192.0.2.10", None),
    ("Show the Jira metrics and my IP history", None),
    ("What's the stock price of AAPL and the ROI on 10000 at 7 percent for 5 years?", None),
    # Tools IT publishes from MCP servers: mcp-server-time, and its own stateful notebook.
    (
        "What is the current time in Asia/Tokyo, and add a note: VPN restored after the gw-2 reboot",
        None,
    ),
    ("Show my incident notes", None),
    # IT's triage agent, published over IT's endpoint: its own loop runs in the `it` namespace.
    ("Ask the IT triage agent: host 192.0.2.10 answered on an unexpected port", None),
    ("Submit an expense of 750 EUR for cost centre CC-1001: team offsite dinner", "approve"),
    ("Submit an expense of 2400 EUR for cost centre CC-1001: first-class upgrade", "deny"),
    ("Show the recent expenses", None),
]
POLL_SECONDS = 0.2
# The turn whose trace the demo shows: two tools on two services in parallel.
TRACED_TURN = 4
TRACE_WAIT_SECONDS = 5.0  # workers export spans in batches (every 0.5 s under `make up`)

console = Console()
# Where `make up` keeps the gateway's URL and the demo user's key.
RUN_DIR = Path(os.environ.get("DEVSTACK_RUN_DIR", ".run"))
GATEWAY_MESSAGE = "What's the stock price of MSFT?"


async def play() -> int:
    conversations, settings = await open_conversations()
    conversation_id = f"demo-{uuid.uuid4().hex[:8]}"
    user = current_user()
    console.rule(f"[bold]demo conversation {conversation_id}")
    failures = 0
    for index, (message, verdict) in enumerate(SCRIPT, start=1):
        console.print(f"\n[bold green]you ({index}/{len(SCRIPT)}):[/] {escape(message)}")
        if verdict is None:
            result = await send_with_status(
                conversations, conversation_id, message, live=console.is_terminal, user=user
            )
        else:
            result = await _send_and_decide(conversations, conversation_id, message, verdict, user)
        if index == 1:
            status = await conversations.status(conversation_id)
            model = "offline" if status.offline_model else status.model
            console.print(f"[dim]model: {model} · tools discovered: {', '.join(status.tools)}[/]")
            if status.offline_model:
                console.print(OFFLINE_NOTICE)
        print_turn(result)
        _describe_delegations(result)
        failures += 0 if _as_scripted(result, verdict) else 1
    usage = await conversations.end(conversation_id)
    console.rule("[bold]done")
    console.print(
        f"{len(SCRIPT)} turns · {usage.prompt_tokens} prompt + {usage.completion_tokens} "
        f"completion tokens · {describe_usage_cost(usage)}"
    )
    await _show_trace(conversation_id)
    console.print(
        f"Temporal UI: {UI_ADDRESS}/namespaces/{settings.namespace}/workflows/{conversation_id}"
    )
    console.print(f"Replay it: agent history {conversation_id}")
    console.print(f"Time and cost: agent trace {conversation_id} [TURN] · agent usage --by model")
    failures += await _through_the_gateway()
    if failures:
        console.print(f"[red]{failures} turn(s) had errors[/]")
    return 1 if failures else 0


async def _through_the_gateway() -> int:
    """One more conversation, as the gateway's demo user would have it in the web chat: over
    HTTP, its answer streamed as server-sent events. Returns 1 if it failed."""
    url_file, key_file = RUN_DIR / "gateway.json", RUN_DIR / "gateway-demo-key"
    if not url_file.is_file() or not key_file.is_file():
        console.print("[dim]no gateway running here (`make up` starts one): skipping its turn[/]")
        return 0
    from orchestrator.gateway_client import GatewayClient, GatewayError, send_live

    url = json.loads(url_file.read_text())["url"]
    console.rule(f"[bold]through the gateway ({url}), as the user `demo`, streamed")
    console.print(f"[bold green]you:[/] {escape(GATEWAY_MESSAGE)}")
    try:
        async with GatewayClient(url, key_file.read_text().strip(), str(key_file)) as gateway:
            conversation = await gateway.create("demo through the gateway")
            result, shown = await send_live(gateway, conversation.conversation_id, GATEWAY_MESSAGE)
            print_turn(result, answer_shown=shown.answer, tools_shown=shown.tools)
            await gateway.end(conversation.conversation_id)
    except GatewayError as error:
        console.print(f"[red]gateway: {escape(str(error))}[/]")
        return 1
    console.print(
        f"Web chat: {url}/ · sign in with the demo key in {key_file} "
        "(`uv run agent keys create NAME` makes more)"
    )
    return 0 if result.ok else 1


async def _show_trace(conversation_id: str) -> None:
    """Where one turn's time went, from the spans file `make up`'s processes write."""
    path = traces_file()
    if not path.is_file():
        return
    flush_spans()
    deadline = asyncio.get_running_loop().time() + TRACE_WAIT_SECONDS
    while True:
        traces = [
            t
            for t in conversation_traces(read_spans(path), conversation_id)
            if t.turn == TRACED_TURN
        ]
        services = {s.service for t in traces for s in t.spans}
        if {"orchestrator", "finance"} <= services or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    if traces:
        console.print(f"\n[bold]where turn {TRACED_TURN}'s time went[/] (agent trace):")
        console.print(render_tree(traces[0]))


async def _send_and_decide(
    conversations: ConversationClient,
    conversation_id: str,
    message: str,
    verdict: Verdict,
    user: str,
) -> TurnResult:
    """Send a message whose turn pauses on an approval, and decide it as the demo's operator."""
    turn = asyncio.create_task(conversations.send(conversation_id, message, user=user))
    pending = await _first_pending(conversations, conversation_id, turn)
    if pending is None:
        console.print("[red]the turn did not wait for approval[/]")
        return await turn
    verb = "approves" if verdict == "approve" else "denies"
    console.print(
        f"[yellow]waiting for approval:[/] {pending.tool} on {pending.service} "
        f"{escape(compact(pending.args))} ({escape(pending.reason)})"
    )
    console.print(
        f"[yellow]the demo {verb} this call itself, as '{DEMO_OPERATOR}'[/] "
        f"(by hand: agent {verdict} {conversation_id} {pending.call_id})"
    )
    reason = "within the offsite budget" if verdict == "approve" else "upgrades are not refunded"
    await conversations.decide(
        conversation_id,
        Decision(call_id=pending.call_id, verdict=verdict, approver=DEMO_OPERATOR, reason=reason),
    )
    return await turn


async def _first_pending(
    conversations: ConversationClient, conversation_id: str, turn: asyncio.Task[TurnResult]
) -> PendingApproval | None:
    while not turn.done():
        status = await conversations.status(conversation_id)
        if status.pending_approvals:
            return status.pending_approvals[0]
        await asyncio.wait({turn}, timeout=POLL_SECONDS)
    return None


def _describe_delegations(result: TurnResult) -> None:
    """Where a team agent's turn ran: its own loop, in its team's namespace."""
    for call in result.tool_calls:
        if call.usage is None or not isinstance(call.result, dict):
            continue
        proposed = [p.get("tool") for p in call.result.get("proposed_calls") or []]
        console.print(
            f"[dim]{call.name} ran its own loop in the {call.service} namespace "
            f"(TeamAgentWorkflow): {call.usage.model_steps} model steps, tools "
            f"{', '.join(c.get('tool', '?') for c in call.result.get('tool_calls') or [])}"
            + (f"; proposed for approval: {', '.join(map(str, proposed))}" if proposed else "")
            + "[/]"
        )


def _as_scripted(result: TurnResult, verdict: Verdict | None) -> bool:
    """Every call ran, except a call the demo denied on purpose."""
    if not result.ok:
        return False
    if verdict == "deny":
        return any(
            c.approval is not None and c.approval.verdict == "deny" for c in result.tool_calls
        )
    return all(c.ok for c in result.tool_calls)


def main() -> int:
    try:
        return asyncio.run(play())
    except CliError as error:
        console.print(f"[red]error:[/] {escape(str(error))}")
        return 1


if __name__ == "__main__":
    exit_process(main())
