"""One MCP server behind the gateway: a client session kept open for the gateway's life, speaking raw MCP.

Requests go up and answers come back as JSON objects, untouched (no model drops a field the SDK does not know), so
the agent sees exactly what the server wrote. What the server sends on its own (sampling, elicitation and roots
requests, log messages, `resources/updated`, `list_changed`) goes to the gateway's `Relay`, which knows the clients.
The server's lists (tools, prompts, resources, templates) are fetched whole, every page, once, and again only after
the server says one changed: tools/list then costs no round trip (about 45 ms each for notion + github).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED
from pydantic import TypeAdapter, ValidationError

from agentbox.errors import one_line
from agentbox.gateway.catalog import Upstream

RAW = TypeAdapter(dict[str, Any])
LISTS = {  # list method -> the result's field
    "tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
CHANGED = {  # notification -> the lists it makes stale
    "notifications/tools/list_changed": ("tools/list",),
    "notifications/prompts/list_changed": ("prompts/list",),
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list"),
}
MAX_PAGES = 100
Progress = Callable[[float, float | None, str | None], Awaitable[None]]


class ConnectionLost(MCPError):
    """The server's connection closed while a request was under way: it may have been carried out."""


class Relay(Protocol):
    """Where the gateway's clients are: what an upstream server sends of its own accord goes there."""

    async def server_request(self, upstream: UpstreamServer, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Ask a client (sampling, elicitation, roots); its answer, or raises MCPError."""

    async def server_notification(self, upstream: UpstreamServer, method: str, params: dict[str, Any] | None) -> None:
        """Pass a notification on to the clients it concerns."""


def raw_request(method: str, params: dict[str, Any] | None) -> types.Request:
    return types.Request[dict[str, Any] | None, str](method=method, params=params)


def dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


@dataclass(eq=False)
class UpstreamServer:
    """A server's session, its capabilities, its lists, and its state: starting, ready or failed (why)."""

    spec: Upstream
    relay: Relay
    state: str = "starting"
    error: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)
    session: ClientSession | None = None
    lists: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # the last one fetched of each
    stale: set[str] = field(default_factory=set)  # lists the server said changed since
    changes: int = 0  # how many list_changed the server sent
    in_flight: list[Any] = field(default_factory=list)  # the clients' requests now being served by this server
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> str:
        return self.spec.key

    async def run(self, started: asyncio.Event, timeout: float) -> None:
        """Connect, initialize and list everything within `timeout`; then hold the session until `close()`."""
        try:
            async with self._connect() as streams, self._session(streams) as session:
                async with asyncio.timeout(timeout):
                    init = await session.initialize()
                    self.capabilities = dump(init.capabilities)
                    self.session = session
                    for method in LISTS:
                        if self.serves(method):
                            await self.listing(method)
                self.state = "ready"
                started.set()
                await self.closing.wait()
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if not self.closing.is_set():  # it never started, or it died (health says so from now on)
                self.state, self.error = "failed", describe(exc)
        finally:
            self.session = None
            started.set()

    def close(self) -> None:
        self.closing.set()

    def serves(self, method: str) -> bool:
        """Whether the server declared the capability `method` needs."""
        family = method.split("/")[0]
        if method in ("resources/subscribe", "resources/unsubscribe"):
            return bool((self.capabilities.get("resources") or {}).get("subscribe"))
        if family == "completion":
            return "completions" in self.capabilities
        return family in self.capabilities

    async def request(self, method: str, params: dict[str, Any] | None, progress: Progress | None = None,
                      client: Any = None) -> dict[str, Any]:
        """Send one request as it is and return the answer as it is (MCPError if the server answers an error).
        `client` is the client request this one serves: a sampling request the server makes meanwhile goes there."""
        if self.session is None:
            raise MCPError(types.INTERNAL_ERROR, f"The MCP server {self.key} is not running: {self.error}")
        if client is not None:
            self.in_flight.append(client)
        try:
            return await self.session.send_request(raw_request(method, params), RAW, progress_callback=progress)
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:
                raise
            # the process died or the connection broke: from now on, say so (the call may have been made)
            self.state, self.error = "failed", "its connection closed"
            raise ConnectionLost(types.INTERNAL_ERROR, f"The MCP server {self.key} closed its connection during "
                                 f"{method}.") from None
        except ValidationError as exc:  # the server's answer is not MCP: its fault, not the client's
            raise MCPError(types.INTERNAL_ERROR, f"The MCP server {self.key} gave an invalid answer to {method}: "
                           f"{one_line(exc)}") from None
        finally:
            if client is not None:
                self.in_flight.remove(client)

    async def listing(self, method: str) -> list[dict[str, Any]]:
        """Every item of one of the server's lists, every page, kept until the server says it changed."""
        if method not in self.lists or method in self.stale:
            stale_since = self.changes
            items, params = [], None
            try:
                for _ in range(MAX_PAGES):
                    page = await self.request(method, params)
                    items += page.get(LISTS[method]) or []
                    if not page.get("nextCursor"):
                        break
                    params = {"cursor": page["nextCursor"]}
            except MCPError as exc:
                if exc.code != types.METHOD_NOT_FOUND:  # a server with resources but no templates, say: none
                    raise
            self.lists[method] = items
            if self.changes == stale_since:  # no change announced while this one was fetched
                self.stale.discard(method)
        return self.lists[method]

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[tuple[Any, Any]]:
        spec = self.spec
        if spec.command:
            # the gateway's own settings stay with it: its token and the sandbox's other secrets are no server's
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}, **spec.env}
            params = StdioServerParameters(command=spec.command[0], args=spec.command[1:], env=env)
            async with stdio_client(params, errlog=sys.stderr) as streams:
                yield streams
        else:
            async with httpx2.AsyncClient(headers=spec.headers, timeout=httpx2.Timeout(30, read=300)) as http:
                async with streamable_http_client(spec.url, http_client=http) as streams:
                    yield streams[0], streams[1]

    def _session(self, streams: tuple[Any, Any]) -> ClientSession:
        return ClientSession(
            streams[0], streams[1], sampling_callback=self._sampling, elicitation_callback=self._elicitation,
            list_roots_callback=self._roots, logging_callback=self._log, message_handler=self._message,
            client_info=types.Implementation(name="agentbox-gateway", version="1"),
        )

    async def _ask(self, method: str, params: dict[str, Any] | None, result: type) -> Any:
        try:
            return result.model_validate(await self.relay.server_request(self, method, params or {}))
        except Exception as exc:  # noqa: BLE001 - the server gets an error answer, whatever went wrong
            return types.ErrorData(code=getattr(exc, "code", types.INTERNAL_ERROR), message=one_line(exc))

    async def _sampling(self, context: Any, params: types.CreateMessageRequestParams) -> Any:
        kind = types.CreateMessageResultWithTools if params.tools else types.CreateMessageResult
        return await self._ask("sampling/createMessage", dump(params), kind)

    async def _elicitation(self, context: Any, params: types.ElicitRequestParams) -> Any:
        return await self._ask("elicitation/create", dump(params), types.ElicitResult)

    async def _roots(self, context: Any) -> Any:
        return await self._ask("roots/list", None, types.ListRootsResult)

    async def _log(self, params: types.LoggingMessageNotificationParams) -> None:
        await self.relay.server_notification(self, "notifications/message", dump(params))

    async def _message(self, message: Any) -> None:
        if isinstance(message, Exception) or message.method == "notifications/message":  # _log has it
            return
        if message.method in CHANGED:
            self.changes += 1
            self.stale.update(CHANGED[message.method])
        params = dump(message.params) if message.params is not None else None
        await self.relay.server_notification(self, message.method, params)


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "did not answer initialize and its lists in time"
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {one_line(exc, empty='no detail')}"
