"""The one Nexus service contract every team serves, whatever its tools are.

Imported by workflow code on the caller side, so it holds types only.
"""

from __future__ import annotations

import nexusrpc
from pydantic import BaseModel

from shared.tools import ToolCall, ToolCatalog, ToolResult

TOOL_SERVICE_NAME = "ToolService"


class ListToolsRequest(BaseModel):
    """Room to grow (filters, caller identity) without changing the operation's signature."""

    caller: str = ""


@nexusrpc.service(name=TOOL_SERVICE_NAME)
class ToolService:
    list_tools: nexusrpc.Operation[ListToolsRequest, ToolCatalog]
    execute_tool: nexusrpc.Operation[ToolCall, ToolResult]
