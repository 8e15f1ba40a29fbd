"""`agent mcp`: our tools and `ask_agent` for an MCP client (Claude Desktop, an IDE) over stdio.

The client starts `agent mcp` and speaks MCP on its stdin and stdout; logs go to stderr. Calls act
as the operator (`--as`, else $AGENT_USER, else the OS user name), as every `agent` command does,
and reach Temporal with the same TEMPORAL_* settings (orchestrator.mcp_server says what each MCP
call becomes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.approval_commands import current_user
from orchestrator.cli_support import CliError, open_conversations, run
from orchestrator.client import InvalidMessageError, check_user
from shared.config import load_settings
from shared.log import get_logger

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext

log = get_logger("mcp")

AsOption = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="Who the MCP client's calls are for (tool calls' caller, conversations, budgets). "
        "Default: $AGENT_USER, else your user name.",
    ),
]


def mcp(as_: AsOption = None) -> None:
    """Serve the discovered tools and ask_agent to an MCP client over stdio."""
    # Imported here: the MCP SDK stays out of every other command's start-up.
    from mcp.server.stdio import stdio_server

    from orchestrator.mcp_server import AgentMcp, McpSettings

    user = (as_ or current_user()).strip()
    try:
        check_user(user)
    except InvalidMessageError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    settings = load_settings(McpSettings)

    async def work() -> None:
        conversations, temporal = await open_conversations()
        agent = AgentMcp(
            conversations=conversations,
            settings=settings,
        )

        def user_of(_: ServerRequestContext[Any, Any]) -> str:
            return user

        server = agent.server(user_of)
        log.info("serving MCP over stdio", user=user, task_queue=temporal.task_queue)
        try:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
        except BaseExceptionGroup as group:  # anyio's task groups: say what actually failed
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            log.debug("MCP server stopped", exc_info=leaf)
            raise CliError(f"the MCP server stopped: {type(leaf).__name__}: {leaf}") from None

    run(work)
