"""`agent approvals|approve|deny|cancel`, and the approval prompts of `agent chat` and `agent send`.

Registered on the main `agent` app by `register(app)`: they share its options and its error
handling (one line, exit 1) through `orchestrator.cli_support`.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from orchestrator.cli_support import CliError, open_conversations, run, translate
from orchestrator.client import (
    ConversationClient,
    ConversationEndedError,
    check_conversation_id,
    utf8_problem,
)
from orchestrator.models import (
    ApprovalRecord,
    CancelRequest,
    CancelResult,
    Decision,
    PendingApproval,
)
from orchestrator.render import (
    ApprovalHandler,
    compact,
    describe_approvers,
    describe_decision,
    describe_expiry,
    err,
    out,
    print_error,
    print_pending,
)
from shared.approval import Verdict

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ConversationArg = Annotated[str, typer.Argument(help="Conversation id.")]
CallArg = Annotated[str, typer.Argument(help="The call id (from `agent approvals`).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why: kept with the decision.")]
AsOption = Annotated[
    str | None,
    typer.Option("--as", help="Who decides (default: $AGENT_USER, else your user name)."),
]

APPROVE_WORDS = frozenset({"y", "yes"})
DENY_WORDS = frozenset({"n", "no"})


def current_user() -> str:
    """Who is at the keyboard: $AGENT_USER, else the OS user name."""
    named = os.environ.get("AGENT_USER", "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container user without a passwd entry or $USER
        return f"uid-{os.getuid()}"


def make_decision(call_id: str, verdict: Verdict, approver: str, reason: str) -> Decision:
    """The `decide` update's argument, checked here so a bad one is one line before anything is
    sent (text that cannot be encoded would otherwise fail deep in the SDK)."""
    for label, value in (("call id", call_id), ("approver", approver), ("reason", reason)):
        problem = utf8_problem(value)
        if problem:
            raise CliError(f"the {label} is not valid UTF-8: {problem}")
    try:
        return Decision(
            call_id=call_id.strip(), verdict=verdict, approver=approver.strip(), reason=reason
        )
    except ValidationError as error:
        raise CliError(_validation_line(error)) from None


def _validation_line(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]).replace("_", " ")
    return f"the {field} is invalid: {first['msg'][0].lower()}{first['msg'][1:]}"


def parse_answer(line: str) -> tuple[Verdict, str] | None:
    """`y looks fine` → ("approve", "looks fine"); None for anything but y/yes/n/no first."""
    word, _, rest = line.strip().partition(" ")
    word = word.lower()
    if word in APPROVE_WORDS:
        return "approve", rest.strip()
    if word in DENY_WORDS:
        return "deny", rest.strip()
    return None


def pending_json(conversation_id: str, pending: PendingApproval) -> dict[str, Any]:
    return {"conversation_id": conversation_id, **pending.model_dump(mode="json")}


# ---- prompts while a message is answered ------------------------------------------------------
def prompt_for_approval(
    conversations: ConversationClient, conversation_id: str, approver: str
) -> ApprovalHandler:
    """`agent chat`: show the call, ask y/n (and an optional reason), send the decision.

    End of input while asking raises EOFError: the turn keeps waiting on the server."""

    async def decide(pending: PendingApproval) -> None:
        print_pending(conversation_id, pending)
        while True:
            line = await asyncio.to_thread(
                out.input,
                f"[bold]approve? {escape('[y/n]')}[/] [dim](optionally followed by a reason)[/] ",
            )
            answer = parse_answer(line)
            if answer is None:
                out.print("answer y or n, optionally followed by a reason")
                continue
            try:
                decision = make_decision(pending.call_id, answer[0], approver, answer[1])
            except CliError as error:
                print_error(str(error))
                continue
            break
        try:
            record = await translate(lambda: conversations.decide(conversation_id, decision))
        except CliError as error:
            # Decided elsewhere first, timed out, or not ours to decide: the chat goes on.
            print_error(str(error))
            return
        out.print(f"{escape(pending.tool)}: {escape(describe_decision(record))}", soft_wrap=True)

    return decide


def announce_approval(conversation_id: str) -> ApprovalHandler:
    """`agent send`/`ask` in a terminal: say the turn waits, and which command decides it."""

    async def announce(pending: PendingApproval) -> None:
        command = f"agent approve {conversation_id} {pending.call_id}"
        err.print(
            f"[yellow]waiting for approval:[/] {escape(pending.tool)} on "
            f"{escape(pending.service)} ({escape(pending.reason)}; "
            f"{escape(describe_approvers(pending))} may decide) · run `{escape(command)}` "
            f"(or `agent deny …`)",
            soft_wrap=True,
        )

    return announce


# ---- commands -----------------------------------------------------------------------------------
def approvals(
    as_json: JsonOption = False,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="How many running conversations to look at.")
    ] = 200,
) -> None:
    """Calls waiting for approval, across running conversations."""

    async def work() -> list[tuple[str, PendingApproval]]:
        conversations, _ = await open_conversations()
        return await conversations.pending_approvals(limit)

    rows = run(work)
    if as_json:
        print(json.dumps([pending_json(cid, p) for cid, p in rows], ensure_ascii=False))
        return
    if not rows:
        out.print("no calls are waiting for approval")
        return
    table = Table(
        "conversation",
        "call id",
        "tool",
        "service",
        "args",
        "reason",
        "who may approve",
        "expires",
    )
    for conversation_id, pending in rows:
        table.add_row(
            escape(conversation_id),
            escape(pending.call_id),
            escape(pending.tool),
            escape(pending.service),
            escape(compact(pending.args, 80)),
            escape(pending.reason),
            escape(describe_approvers(pending)),
            escape(describe_expiry(pending.expires_at)),
        )
    out.print(table)


def _decide(
    conversation_id: str,
    call_id: str,
    verdict: Verdict,
    reason: str,
    approver: str | None,
    as_json: bool,
) -> None:
    async def work() -> ApprovalRecord:
        check_conversation_id(conversation_id)
        decision = make_decision(call_id, verdict, approver or current_user(), reason)
        conversations, _ = await open_conversations()
        return await conversations.decide(conversation_id, decision)

    record = run(work)
    if as_json:
        print(json.dumps(record.model_dump(mode="json"), ensure_ascii=False))
        return
    out.print(
        escape(
            f"{record.tool} on {record.service} (call {record.call_id}, conversation "
            f"{conversation_id}, turn {record.turn}): {describe_decision(record)}"
        ),
        soft_wrap=True,
    )


def approve(
    conversation_id: ConversationArg,
    call_id: CallArg,
    reason: ReasonOption = "",
    approver: AsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Approve a call waiting for approval: it runs, and the turn goes on."""
    _decide(conversation_id, call_id, "approve", reason, approver, as_json)


def deny(
    conversation_id: ConversationArg,
    call_id: CallArg,
    reason: ReasonOption = "",
    approver: AsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deny a call waiting for approval: it does not run, and the model is told why."""
    _decide(conversation_id, call_id, "deny", reason, approver, as_json)


CancelReasonOption = Annotated[
    str, typer.Option("--reason", help="Why: the turn's result and the model are told.")
]
RequesterOption = Annotated[
    str | None,
    typer.Option("--as", help="Who cancels (default: $AGENT_USER, else your user name)."),
]


def cancel(
    conversation_id: ConversationArg,
    reason: CancelReasonOption = "",
    requested_by: RequesterOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel the turn running (or waiting for approval): its tool calls are cancelled and its
    approvals dropped. Messages queued behind it are answered next."""

    async def work() -> tuple[CancelResult, bool]:
        check_conversation_id(conversation_id)
        for label, value in (("reason", reason), ("requester", requested_by or "")):
            problem = utf8_problem(value)
            if problem:
                raise CliError(f"the {label} is not valid UTF-8: {problem}")
        try:
            request = CancelRequest(requested_by=requested_by or current_user(), reason=reason)
        except ValidationError as error:
            raise CliError(_validation_line(error)) from None
        conversations, _ = await open_conversations()
        try:
            return await conversations.cancel(conversation_id, request), False
        except ConversationEndedError:
            # Exit 0, like `agent end` on an ended conversation: nothing runs, as was asked.
            return CancelResult(conversation_id=conversation_id, cancelled=False), True

    result, ended = run(work)
    if as_json:
        print(json.dumps(result.model_dump(mode="json"), ensure_ascii=False))
        return
    if not result.cancelled:
        why = "has already ended" if ended else "has no turn running"
        out.print(f"nothing to cancel: conversation {escape(conversation_id)} {why}")
        return
    parts = [f"cancelled turn {result.turn} of conversation {conversation_id}"]
    if result.dropped_approvals:
        parts.append("dropped approvals: " + ", ".join(result.dropped_approvals))
    out.print(escape(" · ".join(parts)), soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(approvals)
    app.command()(approve)
    app.command()(deny)
    app.command()(cancel)
