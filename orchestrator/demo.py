"""`make demo`: a scripted multi-turn conversation on the running embedded stack.

It uses local, IT and Finance tools, runs two tools in parallel in every turn, and carries IT
session state (the Jira project and tracked addresses) from one turn to the next.
"""

from __future__ import annotations

import asyncio
import uuid

from rich.console import Console
from rich.markup import escape

from orchestrator.cli_support import CliError, open_conversations
from orchestrator.render import OFFLINE_NOTICE, UI_ADDRESS, print_turn, send_with_status
from shared.temporal import exit_process

SCRIPT = [
    "What is (17.5 * 4) + 3, and what's the weather in Paris?",
    "Set my Jira project to OPS and track IP 192.0.2.10",
    "Show the Jira metrics and my IP history",
    "What's the stock price of AAPL and the ROI on 10000 at 7 percent for 5 years?",
]

console = Console()


async def play() -> int:
    conversations, settings = await open_conversations()
    conversation_id = f"demo-{uuid.uuid4().hex[:8]}"
    console.rule(f"[bold]demo conversation {conversation_id}")
    failures = 0
    for index, message in enumerate(SCRIPT, start=1):
        console.print(f"\n[bold green]you ({index}/{len(SCRIPT)}):[/] {escape(message)}")
        result = await send_with_status(
            conversations, conversation_id, message, live=console.is_terminal
        )
        if index == 1:
            status = await conversations.status(conversation_id)
            model = "offline" if status.offline_model else status.model
            console.print(f"[dim]model: {model} · tools discovered: {', '.join(status.tools)}[/]")
            if status.offline_model:
                console.print(OFFLINE_NOTICE)
        print_turn(result)
        failures += 0 if result.ok and all(c.ok for c in result.tool_calls) else 1
    usage = await conversations.end(conversation_id)
    console.rule("[bold]done")
    console.print(
        f"{len(SCRIPT)} turns · {usage.prompt_tokens} prompt + {usage.completion_tokens} "
        f"completion tokens · ${usage.cost_usd:.4f}"
    )
    console.print(
        f"Temporal UI: {UI_ADDRESS}/namespaces/{settings.namespace}/workflows/{conversation_id}"
    )
    console.print(f"Replay it: agent history {conversation_id}")
    if failures:
        console.print(f"[red]{failures} turn(s) had errors[/]")
    return 1 if failures else 0


def main() -> int:
    try:
        return asyncio.run(play())
    except CliError as error:
        console.print(f"[red]error:[/] {escape(str(error))}")
        return 1


if __name__ == "__main__":
    exit_process(main())
