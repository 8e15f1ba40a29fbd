"""`agent usage`: tokens and cost rolled up from the conversation store's per-step usage rows.

Reads the store directly (ORCHESTRATOR_STORE_URL, like `agent store`): no Temporal connection.
Registered on the main `agent` app by `register(app)`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.client import utf8_problem
from orchestrator.config import OrchestratorSettings
from orchestrator.render import describe_cost, out, print_error
from orchestrator.store import AGENT_MODEL_PREFIX, ConversationStore, UsageStep, open_store
from shared.config import ConfigError, load_settings

DIMENSIONS = ("day", "user", "team", "tool", "model")
# Where a step that asked for no tool (it answered) is attributed.
ANSWER_TEAM = "-"
ANSWER_TOOL = "(answer)"
# A call whose service neither the step nor the conversation's turn records name.
UNKNOWN_TEAM = "unknown"
MAX_DAYS = 100_000
BAD_INPUT = 2  # exit code for options that cannot be used, like click's own usage errors
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

USAGE_HELP = "\n\n".join(
    [
        "Tokens and cost per day, user, team, tool or model, from the conversation store.",
        "Attribution: each model step's usage goes to the tools its reply asked for, split "
        "evenly between its calls (a step that called two tools gives each half its tokens and "
        'cost); a step that called no tool (the answer) goes to team "-", tool "(answer)".',
        "Steps of a model with no known price (the offline model, local models) are counted as "
        "unpriced steps, never as $0. Cost is LiteLLM's price for the model asked for.",
    ]
)


class UsageInputError(Exception):
    """An option that cannot be used, explained in one line (exit code 2)."""


# ---- options ---------------------------------------------------------------------------------
def parse_by(values: Iterable[str]) -> list[str]:
    """`--by day,team --by model` → ["day", "team", "model"] (in order, each once)."""
    chosen: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in DIMENSIONS:
                raise UsageInputError(
                    f"unknown --by value {part.strip()!r}: use {', '.join(DIMENSIONS[:-1])} "
                    f"or {DIMENSIONS[-1]}"
                )
            if name not in chosen:
                chosen.append(name)
    return chosen or ["day"]


def parse_since(since: str | None, days: str | None, today: date) -> str | None:
    """The first UTC day to count (YYYY-MM-DD), or None for every day recorded."""
    if since is not None and days is not None:
        raise UsageInputError("give --since or --days, not both")
    if since is not None:
        text = since.strip()
        try:
            if not _DATE.match(text):
                raise ValueError
            return date.fromisoformat(text).isoformat()
        except ValueError:
            raise UsageInputError(f"--since {since!r} is not a date: use YYYY-MM-DD") from None
    if days is not None:
        try:
            count = int(days.strip())
        except ValueError:
            raise UsageInputError(f"--days {days!r} is not a whole number of days") from None
        if not 1 <= count <= MAX_DAYS:
            raise UsageInputError(f"--days must be between 1 and {MAX_DAYS}, not {count}")
        return (today - timedelta(days=count - 1)).isoformat()
    return None


def check_user_filter(user: str | None) -> str | None:
    if user is None:
        return None
    problem = utf8_problem(user)
    if problem:
        raise UsageInputError(f"--user is not valid UTF-8: {problem}")
    if not user.strip():
        raise UsageInputError("--user is empty")
    return user.strip()


# ---- the roll-up -----------------------------------------------------------------------------
@dataclass
class Group:
    """One row of the roll-up: shares of steps' tokens and cost, and which steps touched it."""

    key: tuple[str, ...]
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    cost_usd: float = 0.0
    tool_calls: int = 0
    steps: set[tuple[str, int]] = field(default_factory=set)
    priced: set[tuple[str, int]] = field(default_factory=set)
    unpriced: set[tuple[str, int]] = field(default_factory=set)

    def add(self, step: UsageStep, share: float, calls: int) -> None:
        ident = (step.conversation_id, step.reply_seq)
        self.prompt_tokens += step.prompt_tokens * share
        self.completion_tokens += step.completion_tokens * share
        self.tool_calls += calls
        self.steps.add(ident)
        if step.cost_usd is None:
            self.unpriced.add(ident)
        else:
            self.cost_usd += step.cost_usd * share
            self.priced.add(ident)


def attribution(step: UsageStep, services: dict[str, str]) -> list[tuple[str, str, float, int]]:
    """(team, tool, share, calls) for one step: its calls share it evenly; no call: the answer.

    `services` maps the conversation's tool names to their service (its turn records), for the
    calls the step could not place itself."""
    if not step.tool_calls:
        return [(ANSWER_TEAM, ANSWER_TOOL, 1.0, 0)]
    if step.model.startswith(AGENT_MODEL_PREFIX):  # the agent's own steps; its call is counted
        agent = step.tool_calls[0]  # with the step that asked for it
        return [(agent.service or UNKNOWN_TEAM, agent.tool, 1.0, 0)]
    share = 1.0 / len(step.tool_calls)
    merged: dict[tuple[str, str], tuple[float, int]] = {}
    for use in step.tool_calls:
        team = use.service or services.get(use.tool) or UNKNOWN_TEAM
        got, calls = merged.get((team, use.tool), (0.0, 0))
        merged[(team, use.tool)] = (got + share, calls + 1)
    return [(team, tool, got, calls) for (team, tool), (got, calls) in merged.items()]


def roll_up(
    steps: list[UsageStep], by: list[str], services: dict[str, dict[str, str]]
) -> list[Group]:
    """Rows keyed by the `by` dimensions, in key order. When neither team nor tool is asked
    for, a step counts whole in its one row."""
    groups: dict[tuple[str, ...], Group] = {}
    split = "team" in by or "tool" in by
    for step in steps:
        parts = (
            attribution(step, services.get(step.conversation_id, {}))
            if split
            else [("", "", 1.0, len(step.tool_calls))]
        )
        # Parts with the same key (two tools of one team, grouped by team) add up in one row.
        for team, tool, share, calls in parts:
            values = {
                "day": step.day,
                "user": step.user or "-",
                "team": team,
                "tool": tool,
                "model": step.model or "-",
            }
            key = tuple(values[name] for name in by)
            groups.setdefault(key, Group(key)).add(step, share, calls)
    return [groups[key] for key in sorted(groups)]


def total_of(steps: list[UsageStep]) -> Group:
    total = Group(())
    for step in steps:
        total.add(step, 1.0, len(step.tool_calls))
    return total


def _number(value: float) -> int | float:
    rounded = round(value, 2)
    return int(rounded) if float(rounded).is_integer() else rounded


def group_json(group: Group, by: list[str]) -> dict[str, Any]:
    """A row for --json: `cost_usd` is null when none of its steps had a price."""
    payload: dict[str, Any] = dict(zip(by, group.key, strict=True))
    payload.update(
        prompt_tokens=_number(group.prompt_tokens),
        completion_tokens=_number(group.completion_tokens),
        total_tokens=_number(group.prompt_tokens + group.completion_tokens),
        cost_usd=round(group.cost_usd, 8) if group.priced else None,
        steps=len(group.steps),
        priced_steps=len(group.priced),
        unpriced_steps=len(group.unpriced),
        tool_calls=group.tool_calls,
    )
    return payload


# ---- reading the store -----------------------------------------------------------------------
async def load_usage(
    store: ConversationStore, since: str | None, user: str | None
) -> tuple[list[UsageStep], dict[str, dict[str, str]]]:
    """The steps to roll up, and for each conversation with a call the step could not place,
    its tool names' services from its turn records."""
    try:
        steps = await store.usage_steps(since_day=since, user=user)
        unplaced = sorted(
            {s.conversation_id for s in steps if any(u.service is None for u in s.tool_calls)}
        )
        services: dict[str, dict[str, str]] = {}
        for conversation_id in unplaced:
            names: dict[str, str] = {}
            offset = 0
            while True:
                page = await store.turns(conversation_id, offset=offset, limit=500)
                for turn in page:
                    for call in turn.tool_calls:
                        if call.service and call.service != UNKNOWN_TEAM:
                            names.setdefault(call.name, call.service)
                if len(page) < 500:
                    break
                offset += len(page)
            services[conversation_id] = names
        return steps, services
    finally:
        await store.close()


def _open_store() -> ConversationStore:
    try:
        settings = load_settings(OrchestratorSettings)
    except ConfigError as error:
        _fail(str(error), 1)
    url = settings.store_url
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            # Never create an empty store by reading (a relative path read from elsewhere).
            _fail(f"there is no conversation store at {path} (ORCHESTRATOR_STORE_URL)", 1)
    password = settings.store_password.get_secret_value() if settings.store_password else None
    return open_store(url, password)


# ---- the command -----------------------------------------------------------------------------
def usage(
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by",
            metavar="DIM[,DIM]",
            help="Group by day, user, team, tool or model: repeat it or give a comma list "
            "(default: day).",
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="YYYY-MM-DD", help="From this UTC day on.")
    ] = None,
    days: Annotated[
        str | None,
        typer.Option("--days", metavar="N", help="The last N UTC days, today included."),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's usage.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    try:
        dimensions = parse_by(by or [])
        first_day = parse_since(since, days, datetime.now(UTC).date())
        who = check_user_filter(user)
    except UsageInputError as error:
        _fail(str(error), BAD_INPUT)
    store = _open_store()
    try:
        steps, services = asyncio.run(load_usage(store, first_day, who))
    except Exception as error:  # the store cannot be read: one line, never a traceback
        lines = str(error).strip().splitlines()
        _fail(
            f"cannot read the conversation store: {lines[0] if lines else type(error).__name__}", 1
        )
    groups = roll_up(steps, dimensions, services)
    total = total_of(steps)
    if as_json:
        payload = {
            "by": dimensions,
            "since": first_day,
            "user": who,
            "rows": [group_json(group, dimensions) for group in groups],
            "total": group_json(total, []),
        }
        print(json.dumps(payload, ensure_ascii=False))
        return
    if not steps:
        scope = f" since {first_day}" if first_day else ""
        out.print(f"no model steps recorded{scope}{f' for user {escape(who)}' if who else ''}")
        return
    table = Table(show_header=True, header_style="bold")
    for name in dimensions:
        table.add_column(name)
    for name in ("steps", "prompt", "completion", "cost"):
        table.add_column(name, justify="right")
    for group in [*groups, total]:
        label = list(group.key) if group.key else ["total", *[""] * (len(dimensions) - 1)]
        table.add_row(
            *(escape(value) for value in label),
            str(len(group.steps)),
            f"{round(group.prompt_tokens):,}",
            f"{round(group.completion_tokens):,}",
            describe_cost(group.cost_usd if group.priced else None, len(group.unpriced)),
            end_section=group is groups[-1] if groups else False,
        )
    out.print(table)


usage.__doc__ = USAGE_HELP


def _fail(message: str, code: int) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command(help=USAGE_HELP)(usage)
