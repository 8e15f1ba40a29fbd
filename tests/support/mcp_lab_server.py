"""MCP servers for the tests, written with the MCP SDK's MCPServer, one behaviour per mode:

- `stateful`: `append` adds to a list held in this process; `items` reads it back. With
  `hold=true`, `append` writes `entered-<item>` into $MCP_LAB_GATE_DIR after adding, then waits
  for `release-<item>` there: a test kills the worker in between.
- `crash`: `explode` ends the process; `hang`: `stall` never answers; `garbage`: `babble` writes
  bytes that are no JSON-RPC to stdout instead of an answer.
- `directory PORT`: streamable HTTP; `whoami` echoes the user header and checks the bearer token.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import Context, MCPServer


def stateful(server: MCPServer) -> None:
    items: list[str] = []

    @server.tool(description="Append an item to this session's list; returns the list.")
    async def append(item: str, hold: bool = False) -> dict[str, object]:
        items.append(item)
        if hold:
            gate = Path(os.environ["MCP_LAB_GATE_DIR"])
            (gate / f"entered-{item}").write_text(str(os.getpid()))
            while not (gate / f"release-{item}").exists():  # noqa: ASYNC110 - another process writes it
                await asyncio.sleep(0.05)
        return {"items": list(items), "pid": os.getpid()}

    @server.tool(description="This session's list.")
    def items_so_far() -> dict[str, object]:
        return {"items": list(items), "pid": os.getpid()}


def crash(server: MCPServer) -> None:
    @server.tool(description="Ends the server's process.")
    def explode() -> str:
        os._exit(3)


def hang(server: MCPServer) -> None:
    @server.tool(description="Never answers.")
    async def stall() -> str:
        await asyncio.sleep(3600)
        return "late"


def garbage(server: MCPServer) -> None:
    @server.tool(description="Writes bytes that are not JSON-RPC instead of an answer.")
    async def babble() -> str:
        os.write(1, b"\x00\xff}{ this is not json-rpc\n")
        await asyncio.sleep(3600)
        return "late"


def directory(server: MCPServer) -> None:
    @server.tool(description="Who the request says it is for, and whether its token is right.")
    def whoami(ctx: Context) -> dict[str, object]:
        headers = ctx.headers or {}
        expected = f"Bearer {os.environ['MCP_LAB_TOKEN']}"
        return {
            "user": headers.get("x-agent-user", ""),
            "token_ok": headers.get("authorization") == expected,
        }


MODES = {
    "stateful": stateful,
    "crash": crash,
    "hang": hang,
    "garbage": garbage,
    "directory": directory,
}

if __name__ == "__main__":
    lab = MCPServer(f"mcp-lab-{sys.argv[1]}", subscriptions=False)
    MODES[sys.argv[1]](lab)
    if sys.argv[1] == "directory":  # streamable HTTP on the port given
        uvicorn.run(
            lab.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning"
        )
    else:
        asyncio.run(lab.run_stdio_async())
