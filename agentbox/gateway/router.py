"""The gateway's MCP server: every request a client makes goes to the server that owns what it names, as it is.

A tool or prompt goes by its name (prefixed with its server's key under `--prefix`), a resource by its URI (a listed
resource, else the first template that matches it), a completion by the prompt or template it completes. Answers
come back unchanged. The other way, what a server sends of its own accord reaches the client it concerns: a sampling,
elicitation or roots request and a log message go to the client whose request that server is serving (else to the
last client seen, or to each client that set a log level), `resources/updated` to the clients that subscribed to
that URI, a `list_changed` to every client. Tools keep the allow-list and the guard (guard.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import mcp_types as types
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel, ConfigDict

from agentbox.errors import one_line
from agentbox.gateway.guard import CallGuard, refusal
from agentbox.gateway.upstream import UpstreamServer
from agentbox.telemetry.spans import annotate

# What a 2026-era request carries in `_meta` about its own connection (the gateway speaks to its servers on
# connections of their own, in the handshake era): never passed on.
HOP_META = (types.PROTOCOL_VERSION_META_KEY, types.CLIENT_INFO_META_KEY, types.CLIENT_CAPABILITIES_META_KEY,
            types.LOG_LEVEL_META_KEY)
log = logging.getLogger("agentbox.gateway")
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
RESOURCE_NOT_FOUND = -32002


class RawResult(BaseModel):
    """A client's answer to a server's request, kept whole."""

    model_config = ConfigDict(extra="allow")


def raw_notification(method: str, params: dict[str, Any] | None) -> types.Notification:
    return types.Notification[dict[str, Any] | None, str](method=method, params=params)


def client_of(ctx: Any) -> str | None:
    """Which client session a request came on (its Mcp-Session-Id)."""
    return ctx.request.headers.get("mcp-session-id") if ctx.request is not None else None


@lru_cache(maxsize=512)
def template_pattern(template: str) -> re.Pattern[str]:
    """A regular expression for the URIs an RFC 6570 template produces (the expressions MCP servers use)."""
    parts, pos = [], 0
    for match in re.finditer(r"\{([+#./;?&]?)([^}]*)\}", template):
        parts.append(re.escape(template[pos:match.start()]))
        operator = match.group(1)
        parts.append({"+": ".*", "#": "(#.*)?", "?": r"(\?.*)?", "&": "(&.*)?", "/": "(/[^/?#]*)*",
                      ".": r"(\.[^/?#]*)*", ";": "(;[^/?#]*)*"}.get(operator, "[^/?#]+"))
        pos = match.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts) + "$")


class Router:
    """Routes requests to their server and each server's own messages back to the clients (the upstreams' Relay)."""

    def __init__(self, upstreams: list[UpstreamServer], guard: CallGuard, allow_tools: set[str] | None = None,
                 prefix: bool = False) -> None:
        self.upstreams, self.guard, self.allow_tools, self.prefix = upstreams, guard, allow_tools, prefix
        self.clients: dict[str, Any] = {}  # client session id -> the server-side session of its last request
        self.levels: dict[str, str] = {}  # client session id -> the log level it set
        self.subscribers: dict[str, set[str]] = {}  # uri -> client session ids
        self.last_client: Any = None

    # --- the servers' names for things -------------------------------------------------------------------------

    def ready(self, method: str) -> list[UpstreamServer]:
        return [u for u in self.upstreams if u.session is not None and u.serves(method)]

    async def listing(self, upstream: UpstreamServer, method: str) -> list[dict[str, Any]]:
        """One server's list; none if it cannot give it now (the others' lists and tools still work)."""
        try:
            return await upstream.listing(method)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, it is that server's alone
            log.warning("gateway: %s did not answer %s: %s", upstream.key, method, one_line(exc))
            return []

    def exposed(self, upstream: UpstreamServer, name: str) -> str:
        return f"{upstream.key}_{name}" if self.prefix else name

    def allowed(self, tool: str) -> bool:
        """Whether the allow-list lets the gateway serve a tool (by the name it serves it under)."""
        return self.allow_tools is None or tool in self.allow_tools

    async def named(self, method: str, name: str | None) -> tuple[UpstreamServer, str] | None:
        """The server whose list (tools or prompts) holds `name` as exposed, and its own name for it."""
        for upstream in self.ready(method):
            for item in await self.listing(upstream, method):
                if self.exposed(upstream, item["name"]) == name:
                    if method == "tools/list" and not self.allowed(name):
                        return None
                    return upstream, item["name"]
        return None

    async def owner_of_uri(self, uri: str) -> UpstreamServer:
        servers = self.ready("resources/list")
        for upstream in servers:
            if any(r.get("uri") == uri for r in await self.listing(upstream, "resources/list")):
                return upstream
        for upstream in servers:
            templates = await self.listing(upstream, "resources/templates/list")
            if any(template_pattern(t["uriTemplate"]).match(uri) for t in templates if t.get("uriTemplate")):
                return upstream
        if len(servers) == 1:  # a resource the server reads without listing it
            return servers[0]
        raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}")

    async def owner_of_ref(self, ref: dict[str, Any]) -> tuple[UpstreamServer, dict[str, Any]]:
        if ref.get("type") == "ref/prompt":
            found = await self.named("prompts/list", ref.get("name"))
            if found is None:
                raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {ref.get('name')}")
            return found[0], {**ref, "name": found[1]}
        uri = ref.get("uri", "")
        for upstream in self.ready("resources/list"):
            if any(t.get("uriTemplate") == uri for t in await self.listing(upstream, "resources/templates/list")):
                return upstream, ref
        return await self.owner_of_uri(uri), ref

    # --- requests from the clients -----------------------------------------------------------------------------

    def remember(self, ctx: Any) -> None:
        """Note the client a request came from (its session id), so messages can reach it later; every request
        handler does (`handled`), before it runs."""
        self.last_client = ctx
        if client := client_of(ctx):
            self.clients[client] = ctx.session

    async def forward(self, ctx: Any, upstream: UpstreamServer, method: str, params: dict[str, Any]) -> dict:
        """One request to `upstream` as the client sent it, with its progress relayed back to that client."""
        meta = {k: v for k, v in (params.get("_meta") or {}).items() if k not in HOP_META}
        token = meta.pop("progressToken", None)
        params = {**params, "_meta": meta} if meta else {k: v for k, v in params.items() if k != "_meta"}
        relay = None
        if token is not None:

            async def relay(progress: float, total: float | None, message: str | None) -> None:
                await ctx.session.send_progress_notification(token, progress, total, message,
                                                             related_request_id=ctx.request_id)

        return await upstream.request(method, params, relay, client=ctx)

    async def list_tools(self, ctx: Any, _: Any) -> dict:
        tools = []
        for upstream in self.ready("tools/list"):
            for tool in await self.listing(upstream, "tools/list"):
                name = self.exposed(upstream, tool["name"])
                if self.allowed(name):
                    tools.append({**tool, "name": name})
        return {"tools": tools}

    async def call_tool(self, ctx: Any, _: Any) -> dict:
        params = dict(ctx.params or {})
        name, arguments = params.get("name"), params.get("arguments") or {}
        found = await self.named("tools/list", name)
        if found is None:
            return refusal(f"Unknown tool: '{name}'")
        upstream, own_name = found
        annotate({"agentbox.mcp.server": upstream.key})
        return await self.guard.call(
            name, arguments, lambda: self.forward(ctx, upstream, "tools/call", {**params, "name": own_name}))

    async def list_prompts(self, ctx: Any, _: Any) -> dict:
        return {"prompts": [{**p, "name": self.exposed(u, p["name"])}
                            for u in self.ready("prompts/list") for p in await self.listing(u, "prompts/list")]}

    async def get_prompt(self, ctx: Any, _: Any) -> dict:
        params = dict(ctx.params or {})
        found = await self.named("prompts/list", params.get("name"))
        if found is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.get('name')}")
        return await self.forward(ctx, found[0], "prompts/get", {**params, "name": found[1]})

    async def list_resources(self, ctx: Any, _: Any) -> dict:
        return {"resources": [r for u in self.ready("resources/list")
                              for r in await self.listing(u, "resources/list")]}

    async def list_templates(self, ctx: Any, _: Any) -> dict:
        method = "resources/templates/list"
        return {"resourceTemplates": [t for u in self.ready("resources/list") for t in await self.listing(u, method)]}

    async def by_uri(self, ctx: Any, method: str) -> dict:
        params = dict(ctx.params or {})
        return await self.forward(ctx, await self.owner_of_uri(params.get("uri", "")), method, params)

    async def read_resource(self, ctx: Any, _: Any) -> dict:
        return await self.by_uri(ctx, "resources/read")

    async def subscribe(self, ctx: Any, _: Any) -> dict:
        client, uri = client_of(ctx), (ctx.params or {}).get("uri", "")
        upstream = await self.owner_of_uri(uri)
        if not upstream.serves("resources/subscribe"):
            raise MCPError(types.METHOD_NOT_FOUND, f"The server of {uri} offers no subscriptions")
        answer = await self.forward(ctx, upstream, "resources/subscribe", dict(ctx.params or {}))
        self.subscribers.setdefault(uri, set()).add(client or "")
        return answer

    async def unsubscribe(self, ctx: Any, _: Any) -> dict:
        client, uri = client_of(ctx), (ctx.params or {}).get("uri", "")
        subscribed = self.subscribers.get(uri, set())
        subscribed.discard(client or "")
        if subscribed:  # another client still wants it: the server keeps sending
            return {}
        return await self.by_uri(ctx, "resources/unsubscribe")

    async def complete(self, ctx: Any, _: Any) -> dict:
        params = dict(ctx.params or {})
        upstream, ref = await self.owner_of_ref(params.get("ref") or {})
        if not upstream.serves("completion/complete"):
            return {"completion": {"values": []}}
        return await self.forward(ctx, upstream, "completion/complete", {**params, "ref": ref})

    async def set_level(self, ctx: Any, _: Any) -> dict:
        if client := client_of(ctx):
            self.levels[client] = (ctx.params or {}).get("level", "info")
        for upstream in self.ready("logging/setLevel"):
            await self.forward(ctx, upstream, "logging/setLevel", dict(ctx.params or {}))
        return {}

    async def roots_changed(self, ctx: Any, _: Any) -> None:
        self.remember(ctx)
        for upstream in self.upstreams:
            if upstream.session is not None:
                await upstream.session.send_notification(raw_notification("notifications/roots/list_changed", None))

    # --- what the servers send of their own accord -------------------------------------------------------------

    async def server_request(self, upstream: UpstreamServer, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if len({client_of(c) for c in upstream.in_flight}) > 1:  # over one stdio pipe, nothing says whose it is
            raise MCPError(types.INTERNAL_ERROR, f"the gateway cannot tell which of several clients {method} is for")
        ctx = upstream.in_flight[-1] if upstream.in_flight else self.last_client
        if ctx is None:
            raise MCPError(types.INTERNAL_ERROR, "no client is connected to the gateway")
        related = ServerMessageMetadata(related_request_id=ctx.request_id) if upstream.in_flight else None
        request = types.Request[dict[str, Any] | None, str](method=method, params=params or None)
        answer = await ctx.session.send_request(request, RawResult, metadata=related)
        return answer.model_dump()

    async def server_notification(self, upstream: UpstreamServer, method: str, params: dict[str, Any] | None) -> None:
        notification = raw_notification(method, params)
        if method == "notifications/message":
            await self._log(upstream, notification, (params or {}).get("level", "info"))
        elif method == "notifications/resources/updated":
            await self._send(self.subscribers.get((params or {}).get("uri", ""), set()), notification)
        elif method.endswith("/list_changed"):
            await self._send(set(self.clients), notification)

    async def _log(self, upstream: UpstreamServer, notification: types.Notification, level: str) -> None:
        def admits(client: str | None) -> bool:
            wanted = self.levels.get(client or "")
            return wanted is None or LEVELS.index(level) >= LEVELS.index(wanted)

        if upstream.in_flight:  # on the stream of the request it is about
            ctx = upstream.in_flight[-1]
            if admits(client_of(ctx)):
                await ctx.session.send_notification(notification, related_request_id=ctx.request_id)
            return
        await self._send({c for c in self.levels if admits(c)}, notification)

    async def _send(self, clients: set[str], notification: types.Notification) -> None:
        for client in clients:
            session = self.clients.get(client)
            if session is None:
                continue
            try:
                await session.send_notification(notification)
            except Exception:  # that client is gone: forget it  # noqa: BLE001
                self.forget(client)

    def forget(self, client: str) -> None:
        self.clients.pop(client, None)
        self.levels.pop(client, None)
        for subscribed in self.subscribers.values():
            subscribed.discard(client)

    # --- the MCP server ----------------------------------------------------------------------------------------

    def server(self, name: str = "agentbox-gateway") -> Server:
        """The gateway's MCP server: it declares what at least one of its servers offers."""
        handlers: dict[str, tuple[type, Callable]] = {"tools/list": (types.PaginatedRequestParams, self.list_tools),
                                                      "tools/call": (types.CallToolRequestParams, self.call_tool)}
        if self.ready("prompts/list"):
            handlers["prompts/list"] = (types.PaginatedRequestParams, self.list_prompts)
            handlers["prompts/get"] = (types.GetPromptRequestParams, self.get_prompt)
        if self.ready("resources/list"):
            handlers["resources/list"] = (types.PaginatedRequestParams, self.list_resources)
            handlers["resources/templates/list"] = (types.PaginatedRequestParams, self.list_templates)
            handlers["resources/read"] = (types.ReadResourceRequestParams, self.read_resource)
        if self.ready("resources/subscribe"):
            handlers["resources/subscribe"] = (types.SubscribeRequestParams, self.subscribe)
            handlers["resources/unsubscribe"] = (types.UnsubscribeRequestParams, self.unsubscribe)
        if self.ready("completion/complete"):
            handlers["completion/complete"] = (types.CompleteRequestParams, self.complete)
        if self.ready("logging/setLevel"):
            handlers["logging/setLevel"] = (types.SetLevelRequestParams, self.set_level)
        # 2026-era clients need freshness hints on lists and reads: none may be kept (a server's lists can change)
        server = GatewayServer(name, version="1", cache_hints={method: CacheHint() for method in CACHEABLE_METHODS})
        for method, (params_type, handler) in handlers.items():
            server.add_request_handler(method, params_type, handled(handler, self.remember))
        server.add_notification_handler("notifications/roots/list_changed", types.NotificationParams,
                                        self.roots_changed)
        return server


def handled(handler: Callable, remember: Callable[[Any], None]) -> Callable:
    """A handler that notes its client first, and whose answers say they are complete to a 2026-era client (which
    needs the `resultType` that servers of the handshake era do not write)."""

    async def answer(ctx: Any, params: Any) -> dict:
        remember(ctx)  # every client that asked anything hears of list changes
        result = await handler(ctx, params)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and "resultType" not in result:
            return {**result, "resultType": "complete"}
        return result

    return answer


class GatewayServer(Server):
    """Declares list_changed for tools, prompts and resources: the gateway passes on its servers' changes."""

    def create_initialization_options(self, notification_options: NotificationOptions | None = None, *args: Any,
                                      **kwargs: Any) -> Any:
        options = notification_options or NotificationOptions(prompts_changed=True, resources_changed=True,
                                                              tools_changed=True)
        return super().create_initialization_options(options, *args, **kwargs)
