"""What every `agent` command shares: reaching the conversations, and turning any SDK error into
one readable line (exit code 1), never a traceback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.client import ConversationClient, ConversationEndedError, InvalidMessageError
from orchestrator.render import print_error
from shared.caller import innermost_message
from shared.config import ConfigError, OrchestratorTemporalSettings, load_settings
from shared.telemetry import LOCAL_TRACES_FILE, TelemetrySettings, install_tracing
from shared.temporal import connect

T = TypeVar("T")


class CliError(Exception):
    """A problem to show as one line, with exit code 1."""


# ---- plumbing --------------------------------------------------------------------------------
async def open_conversations() -> tuple[ConversationClient, OrchestratorTemporalSettings]:
    settings = load_settings(OrchestratorTemporalSettings)
    trace_cli()
    try:
        client: Client = await connect(settings)
    except RuntimeError as error:
        reason = "connection refused" if "refused" in str(error).lower() else first_line(error)
        raise CliError(
            f"cannot reach Temporal at {settings.address} (namespace {settings.namespace}): "
            f"{reason}. Is the stack up? Run `make up`."
        ) from None
    return ConversationClient(client, settings.task_queue), settings


def trace_cli() -> None:
    """Trace this command's requests when tracing is configured, or when the local stack
    (`make up`) writes its spans file here: the client's update is the root of a turn's trace."""
    telemetry = load_settings(TelemetrySettings)
    if telemetry.telemetry_traces_file is None and LOCAL_TRACES_FILE.is_file():
        telemetry = telemetry.model_copy(update={"telemetry_traces_file": LOCAL_TRACES_FILE})
    install_tracing(telemetry, "agent-cli")


def run(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(translate(work))
    except (CliError, ConfigError) as error:
        fail(str(error))


async def translate(work: Callable[[], Awaitable[T]]) -> T:
    """Turn SDK errors into one readable line each."""
    try:
        return await work()
    except (InvalidMessageError, ConversationEndedError) as error:
        raise CliError(str(error)) from None
    except WorkflowUpdateFailedError as error:
        raise CliError(innermost_message(error)) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise CliError(
            "the conversation did not answer in time; it keeps working — "
            "check `agent history ID` later"
        ) from None
    except WorkflowAlreadyStartedError as error:
        raise CliError(f"conversation {error.workflow_id} has ended; start a new one") from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no such conversation ({first_line(error)})") from None
        raise CliError(f"Temporal refused the request: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def fail(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(1)


# ---- options the conversation commands share ----------------------------------------------
JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON object instead of text.")]
StreamOption = Annotated[
    bool | None,
    typer.Option(
        "--stream/--no-stream",
        help="Print the answer token by token and tool calls as they run. Default: in a terminal.",
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Operators: answer this turn with one of the deployment's models (LLM_MODEL or "
        "LLM_FALLBACK_MODELS), first in the list; the others stay its fallbacks.",
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="Who the conversation is for when this starts it (per-user budgets, "
        "`agent usage`; in `chat` also who decides approvals). Default: $AGENT_USER, else "
        "your user name.",
    ),
]

GatewayOption = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        envvar="AGENT_GATEWAY_URL",
        help="Talk to the HTTP gateway at this URL, as the user of the API key in "
        "$AGENT_API_KEY, instead of to Temporal directly.",
    ),
]
KeyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--api-key-file",
        help="With --gateway: read the API key from this file, not $AGENT_API_KEY.",
    ),
]
