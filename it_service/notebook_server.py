"""The IT team's incident notebook: a small stateful MCP server, written with the MCP SDK's
MCPServer (FastMCP in SDK 1.x), that the team publishes through its Nexus endpoint.

Its notes live in this process's memory, which is the point of the example: the worker runs one
process per conversation (`session = "conversation"` in team.toml), so each conversation has its
own notebook. When that process dies with its worker, the next call rebuilds the notebook by
replaying the conversation's recorded `add_note` and `clear_notes` calls (`rebuild`). The time a
note was written is not replayed; each note's number is, because it follows from the calls.

    python -m it_service.notebook_server        # speaks MCP over stdio
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

MAX_NOTES = 200


class Note(BaseModel):
    number: int
    text: str
    tag: str = ""


class Notebook(BaseModel):
    notes: list[Note] = Field(default_factory=list)
    next_number: int = 1


def create_server() -> MCPServer:
    notebook = Notebook()
    server = MCPServer("it-incident-notebook", subscriptions=False)

    @server.tool(
        name="add_note",
        description="Write a note into this conversation's incident notebook (findings, "
        "actions taken, follow-ups). Returns the note with its number.",
    )
    def add_note(
        text: Annotated[str, Field(min_length=1, max_length=2000, description="The note.")],
        tag: Annotated[
            str, Field(default="", max_length=40, description="Optional label, e.g. 'vpn'.")
        ] = "",
    ) -> Note:
        if len(notebook.notes) >= MAX_NOTES:
            raise ToolError(f"the notebook holds {MAX_NOTES} notes; clear it first")
        note = Note(number=notebook.next_number, text=text.strip(), tag=tag.strip())
        notebook.next_number += 1
        notebook.notes.append(note)
        return note

    @server.tool(
        name="list_notes",
        description="Read back every note in this conversation's incident notebook, oldest first.",
    )
    def list_notes() -> Notebook:
        return notebook

    @server.tool(
        name="clear_notes",
        description="Empty this conversation's incident notebook. Note numbers keep counting.",
    )
    def clear_notes() -> Notebook:
        notebook.notes.clear()
        return notebook

    return server


def main() -> None:
    asyncio.run(create_server().run_stdio_async())


if __name__ == "__main__":
    main()
