"""Live MCP sessions inside a team's worker, with the official `mcp` SDK.

A `McpConnection` is one open `mcp.Client`: a subprocess speaking stdio, or a streamable HTTP
session. The SDK's client must be entered and left in the same task, so each connection owns a
task that holds it open until closed; calls come from the tool activities' tasks.

`McpConnections` keeps them by key: one per server for a shared session, one per conversation
for a stateful server, one per user where the user's name goes into the env or headers. It
closes the least recently used past a bound, and drops a connection after any failure, so
the next attempt (the tool workflow's retry policy) opens a fresh one. A server that keeps
failing trips a small breaker: calls fail at once, as unavailable, until the cooldown ends.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Coroutine
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, Tool
from mcp_types.jsonrpc import CONNECTION_CLOSED, REQUEST_TIMEOUT

from shared.log import get_logger
from shared.mcp_config import (
    ENVIRONMENT_REFERENCE,
    PYTHON_PLACEHOLDER,
    USER_PLACEHOLDER,
    McpServerSource,
)
from shared.tools import ToolError

log = get_logger(__name__)

MAX_OPEN_SESSIONS = 32
MAX_TOOL_PAGES = 100
# A server that could not be listed at start is listed again this often, in the background.
LIST_RETRY_SECONDS = 30.0
BREAKER_FAILURES = 3
BREAKER_COOLDOWN_SECONDS = 30.0


class McpUnavailableError(ToolError):
    """The MCP server could not answer: it did not start, crashed, hung or spoke no MCP."""

    def __init__(self, source: str, why: str, *, timed_out: bool = False) -> None:
        super().__init__(f"MCP server '{source}' is unavailable: {why}", retryable=True)
        self.timed_out = timed_out
        self.fresh = False  # raised by a session opened for this very call


def resolve_template(value: str, user: str, source: str) -> str:
    """`${NAME}` from the worker's environment and `{user}` from the signed caller token."""

    def variable(match: Any) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise McpUnavailableError(source, f"the worker has no environment variable {name}")
        return os.environ[name]

    return ENVIRONMENT_REFERENCE.sub(variable, value).replace(USER_PLACEHOLDER, user)


def stdio_parameters(source: McpServerSource, user: str, root: Path) -> StdioServerParameters:
    """How to start a `command` source's server for this user."""
    assert source.command is not None
    argv = [sys.executable if part == PYTHON_PLACEHOLDER else part for part in source.command]
    return StdioServerParameters(
        command=argv[0],
        args=argv[1:],
        env={name: resolve_template(v, user, source.name) for name, v in source.env.items()},
        cwd=source.cwd or str(root),
    )


def http_headers(source: McpServerSource, user: str) -> dict[str, str]:
    """The headers of a `url` source's requests for this user."""
    return {name: resolve_template(v, user, source.name) for name, v in source.headers.items()}


@dataclass
class McpConnection:
    source: McpServerSource
    user: str
    root: Path
    client: Client | None = None
    # Calls this live session has applied, by call id: a retried activity on the same session
    # (its journal record failed after the call) is answered, not applied twice.
    applied: dict[str, CallToolResult] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _error: BaseException | None = None
    in_flight: int = 0

    async def open(self) -> None:
        self._task = asyncio.create_task(self._hold(), name=f"mcp {self.source.name}")
        try:
            await asyncio.wait_for(self._ready.wait(), self.source.startup_timeout_seconds)
        except TimeoutError:
            await self.close()
            raise McpUnavailableError(
                self.source.name, f"no MCP handshake within {self.source.startup_timeout_seconds} s"
            ) from None
        except BaseException:  # cancelled while starting: nothing else would ever stop it
            await asyncio.shield(self.close())
            raise
        if self.client is None:
            raise McpUnavailableError(self.source.name, f"could not start: {reason(self._error)}")

    async def _hold(self) -> None:
        try:
            async with AsyncExitStack() as stack:
                source, user = self.source, self.user
                target: Any
                if source.url is None:
                    target = stdio_parameters(source, user, self.root)
                else:
                    headers = http_headers(source, user)
                    http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
                    url = resolve_template(source.url, user, source.name)
                    target = streamable_http_client(url, http_client=http)
                # A conversation's session over HTTP needs a session id: the initialize handshake.
                mode = "legacy" if self.source.session == "conversation" else "auto"
                client = await stack.enter_async_context(Client(target, mode=mode))
                self.client = client
                self._ready.set()
                await self._closing.wait()
        except BaseException as err:  # whatever ended it, the session is gone
            self._error = err
            self.client = None
            self._ready.set()
            if not isinstance(err, asyncio.CancelledError | GeneratorExit):
                log.warning("MCP session ended", source=self.source.name, error=reason(err))

    @property
    def alive(self) -> bool:
        return self.client is not None and self._task is not None and not self._task.done()

    def retire(self) -> None:
        """Never use this session again (it is closed in the background)."""
        self.client = None
        self._closing.set()

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except (TimeoutError, Exception):  # closing: nothing left to save
                self._task.cancel()
                with suppress(BaseException):
                    await self._task
        self.client = None

    async def list_tools(self) -> list[Tool]:
        """Every page of the server's tools, within the start-up timeout."""
        assert self.client is not None
        client = self.client
        tools: list[Tool] = []

        async def pages() -> None:
            cursor: str | None = None
            for _ in range(MAX_TOOL_PAGES):
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    return
            raise McpUnavailableError(self.source.name, f"lists more than {MAX_TOOL_PAGES} pages")

        timeout = self.source.startup_timeout_seconds
        try:
            await asyncio.wait_for(pages(), timeout)
        except TimeoutError:
            raise McpUnavailableError(
                self.source.name, f"no tool list within {timeout} s"
            ) from None
        return tools

    async def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        """One call, bounded by the source's timeout. A server's own JSON-RPC refusal of the call
        is the tool's error (ToolError); any failure to get an answer is McpUnavailableError, and
        so is a cancelled call (its outcome is unknown): the session is retired either way, so a
        retry starts from a known state."""
        if not self.alive:
            ended = f": {reason(self._error)}" if self._error else ""
            raise McpUnavailableError(self.source.name, f"its session has ended{ended}")
        assert self.client is not None
        timeout = self.source.timeout_seconds
        self.in_flight += 1
        try:
            return await asyncio.wait_for(
                self.client.call_tool(tool, arguments, read_timeout_seconds=timeout), timeout + 1
            )
        except MCPError as err:
            if err.code not in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                raise ToolError(f"MCP tool '{tool}' refused the call: {err.message}") from None
            self.retire()
            raise McpUnavailableError(self.source.name, reason(err)) from None
        except TimeoutError:
            self.retire()
            raise McpUnavailableError(
                self.source.name, f"no answer within {timeout} s", timed_out=True
            ) from None
        except Exception as err:  # a crashed server or an answer that is no MCP
            self.retire()
            raise McpUnavailableError(self.source.name, reason(err)) from None
        except BaseException:  # cancelled mid-call: whether the server applied it is unknown
            self.retire()
            raise
        finally:
            self.in_flight -= 1


def reason(error: BaseException | None) -> str:
    """The innermost error's own words, for a person: task groups wrap what really happened."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if error is None:
        return "unknown"
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else text[:300] + "…"


@dataclass
class _Breaker:
    failures: int = 0
    open_until: float = 0.0


class McpConnections:
    """The worker's live MCP sessions, by (source, conversation, user)."""

    def __init__(
        self,
        root: Path,
        max_open: int = MAX_OPEN_SESSIONS,
        retry_seconds: float = LIST_RETRY_SECONDS,
    ) -> None:
        self.root = root
        self.retry_seconds = retry_seconds
        self._background: set[asyncio.Task[None]] = set()
        self._max_open = max_open
        self._open: OrderedDict[tuple[str, str, str], McpConnection] = OrderedDict()
        self._opening: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._breakers: dict[str, _Breaker] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def connection(
        self, source: McpServerSource, conversation_id: str, user: str
    ) -> tuple[McpConnection, bool]:
        """The live connection for this key, opened if needed; True when it was just opened."""
        self._check_breaker(source)
        if source.per_user and not user:
            raise ToolError(
                f"MCP server '{source.name}' opens a session per user, and this call names none"
            )
        key = (
            source.name,
            conversation_id if source.session == "conversation" else "",
            user if source.per_user else "",
        )
        async with self._opening.setdefault(key, asyncio.Lock()):
            existing = self._open.get(key)
            if existing is not None and existing.alive:
                self._open.move_to_end(key)
                return existing, False
            if existing is not None:
                del self._open[key]
            connection = McpConnection(source, user if source.per_user else "", self.root)
            try:
                await connection.open()
            except McpUnavailableError:
                self.failed(source)
                raise
            self._open[key] = connection
            self._evict_idle()
            return connection, True

    def _evict_idle(self) -> None:
        """Past the bound, close the least recently used sessions no call is using, in the
        background (a slow close must not hold up the call that opened a new one)."""
        for key, candidate in list(self._open.items()):
            if len(self._open) <= self._max_open:
                return
            if candidate.lock.locked() or candidate.in_flight:
                continue
            del self._open[key]
            task = asyncio.create_task(candidate.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _check_breaker(self, source: McpServerSource) -> None:
        breaker = self._breakers.get(source.name)
        if breaker is None:
            return
        left = breaker.open_until - time.monotonic()
        if left > 0:
            raise McpUnavailableError(
                source.name,
                f"failed {breaker.failures} times in a row; not calling it for another {left:.0f} s",
            )

    def failed(self, source: McpServerSource) -> None:
        breaker = self._breakers.setdefault(source.name, _Breaker())
        breaker.failures += 1
        if breaker.failures >= BREAKER_FAILURES:
            breaker.open_until = time.monotonic() + BREAKER_COOLDOWN_SECONDS

    def succeeded(self, source: McpServerSource) -> None:
        self._breakers.pop(source.name, None)

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` until it ends or the worker closes these connections."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        connections = list(self._open.values())
        self._open.clear()
        await asyncio.gather(
            *(c.close() for c in connections), *self._closing, return_exceptions=True
        )
