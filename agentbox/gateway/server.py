"""An MCP gateway with the interface of E2B's `mcp-gateway`, built on fastmcp.

`python -m agentbox.gateway --config '<json>'` starts every configured catalog server once (a keep-alive stdio
process or a Streamable HTTP client), checks that no two servers serve the same tool name, and serves all their tools
as one MCP server at `/mcp`, behind the bearer token of `GATEWAY_ACCESS_TOKEN`. Tool names are not prefixed (as in
Docker's gateway) unless `--prefix` is given. A server that fails to start is reported on `GET /health` and its tools
are missing, so a readiness probe can tell "not yet" from "never".

`python -m agentbox.gateway --stdin-config` is a warm spare: it imports everything, then reads those options from
stdin (see `wait_for_options`), so a sandbox that claims it skips the second of imports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import importlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from fastmcp import FastMCP
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
from fastmcp.server.providers.proxy import ProxyClient, ProxyProvider
from fastmcp.tools import Tool
from fastmcp.server.auth.auth import AccessToken, TokenVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse

from agentbox.errors import ConfigError, one_line
from agentbox.gateway.catalog import Upstream, load_catalog, read_config_argument, upstreams
from agentbox.gateway.guard import CallGuard
from agentbox.secrets import config_secrets
from agentbox.policy import WRITES_BY_VERB, RunPolicy, tool_list

log = logging.getLogger("agentbox.gateway")
DEFAULT_PORT = 50005
UPSTREAM_START_TIMEOUT = 120.0
# The backend sessions keep one protocol era whatever the client speaks; left to mirror each client, fastmcp restarts
# a kept-alive server whenever the era changes.
BACKEND_MODE = "legacy"


class BearerToken(TokenVerifier):
    """Accepts exactly one static token, compared in constant time."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token):
            return AccessToken(token="gateway", client_id="gateway-client", scopes=[])
        return None

    def accepts(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token)


class ListedOnceProxy(ProxyProvider):
    """A proxy that lists its server's tools once, as Docker's gateway does: a tool set is fixed for a sandbox's
    life, and tools/list then costs no round trip to the server (about 45 ms each for notion + github).
    `_list_tools` is the hook fastmcp's providers override to provide their tools (its documented extension point);
    fastmcp's own lookups of a tool by name go through it too, so they find the same list."""

    listed: Sequence[Tool] | None = None

    async def _list_tools(self) -> Sequence[Tool]:
        if self.listed is None:
            self.listed = await super()._list_tools()
        return self.listed


@dataclass
class UpstreamStatus:
    key: str
    state: str = "starting"  # starting | ready | failed
    tools: list[str] = field(default_factory=list)
    error: str = ""


def transport_for(upstream: Upstream) -> StdioTransport | StreamableHttpTransport:
    """One long-lived transport per server, so tool calls reuse the running process."""
    if upstream.command:
        # the gateway's own settings stay with it: its token and the sandbox's other secrets are no server's business
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}, **upstream.env}
        return StdioTransport(upstream.command[0], upstream.command[1:], env=env, keep_alive=True)
    return StreamableHttpTransport(upstream.url, headers=upstream.headers)


async def start_upstream(upstream: Upstream, proxy: ListedOnceProxy, timeout: float) -> UpstreamStatus:
    """List the server's tools once through its proxy: this starts the server, proves it speaks MCP and keeps the
    list in the proxy, so the gateway's first tools/list costs no round trip. It connects through the proxy's own client
    on purpose: fastmcp rebuilds a kept-alive stdio session (restarts the server) for a client whose options differ."""
    status = UpstreamStatus(upstream.key)
    try:
        async with asyncio.timeout(timeout):
            status.tools = [t.name for t in await proxy.list_tools()]
        status.state = "ready"
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        status.state, status.error = "failed", _describe(exc)
    return status


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "did not answer tools/list in time"
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {one_line(exc, empty='no detail')}"


def find_clashes(statuses: list[UpstreamStatus]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for status in statuses:
        for tool in status.tools:
            owners.setdefault(tool, []).append(status.key)
    return {tool: keys for tool, keys in owners.items() if len(keys) > 1}


async def build_gateway(
    config: dict[str, Any],
    token: str,
    catalog_file: Path | None = None,
    allow_tools: list[str] | None = None,
    prefix: bool = False,
    start_timeout: float = UPSTREAM_START_TIMEOUT,
    secrets: list[str] = (),
    call_log: Path | None = None,
    is_write: Callable[[str], bool] | None = None,
) -> tuple[FastMCP, list[UpstreamStatus]]:
    """Start every upstream, check for clashes, and mount the ready ones on one FastMCP server, behind the guard
    (see guard.py) that keeps the config's secrets, the token and `secrets` out of every call."""
    servers = upstreams(config, load_catalog(catalog_file))
    proxies = [ListedOnceProxy(ProxyClient(transport_for(u), mode=BACKEND_MODE).new) for u in servers]
    statuses = list(await asyncio.gather(*(start_upstream(u, p, start_timeout) for u, p in zip(servers, proxies))))
    for status in statuses:
        if status.state == "ready":
            log.warning("gateway: %s ready (%d tools)", status.key, len(status.tools))
        else:
            log.error("gateway: %s FAILED to start: %s", status.key, status.error)
    clashes = {} if prefix else find_clashes(statuses)
    if clashes:
        listed = "; ".join(f"'{tool}' from {' and '.join(keys)}" for tool, keys in sorted(clashes.items()))
        raise ConfigError(f"Tool name clash between MCP servers: {listed}.", "Start the gateway with --prefix.")

    auth = BearerToken(token)
    gateway = FastMCP("agentbox-gateway", auth=auth)
    gateway.add_middleware(CallGuard([*config_secrets(config), token, *secrets], call_log, is_write))
    for upstream, proxy, status in zip(servers, proxies, statuses):
        if status.state == "ready":
            gateway.add_provider(proxy, namespace=upstream.key if prefix else "")
    if allow_tools is not None:  # an empty allow-list serves no tool at all, it does not fall open
        gateway.enable(names=set(allow_tools), components={"tool"}, only=True)

    @gateway.custom_route("/health", methods=["GET"])
    async def health(request: Request) -> JSONResponse:
        """200 when every server is ready, 503 otherwise, with each server's state (bearer token required)."""
        if not auth.accepts(request.headers.get("authorization")):
            return JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        ok = all(s.state == "ready" for s in statuses)
        body = {
            "status": "ok" if ok else "degraded",
            "servers": {s.key: {"state": s.state, "tools": len(s.tools), "error": s.error} for s in statuses},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    return gateway, statuses


async def serve_warm(gateway: FastMCP, token: str, host: str, port: int) -> None:
    """Serve the gateway, opening the public port only once a real MCP client has listed the tools.

    The first tools/list over HTTP costs about half a second (proxy sessions, schema conversion, serializers). That
    request is made first over a private Unix socket, so when the port opens the gateway answers at full speed and a
    readiness probe sees it ready at once.
    """
    app = gateway.http_app(path="/mcp")
    with tempfile.TemporaryDirectory(prefix="agentbox-gateway-") as private:
        socket_path = os.path.join(private, "warmup.sock")
        warmup = uvicorn.Server(uvicorn.Config(app, uds=socket_path, lifespan="on", log_level="warning"))
        warmup_task = asyncio.create_task(warmup.serve())
        while not warmup.started:
            if warmup_task.done():
                await warmup_task  # raises why it could not start
                return
            await asyncio.sleep(0.005)
        await _list_tools_over(socket_path, token)
        public = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning", timeout_graceful_shutdown=2)
        )
        print(f"gateway: serving on http://{host}:{port}/mcp", file=sys.stderr, flush=True)
        try:
            await public.serve()
        finally:
            warmup.should_exit = True
            await warmup_task


async def _list_tools_over(socket_path: str, token: str) -> None:
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    transport = httpx2.AsyncHTTPTransport(uds=socket_path)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(transport=transport, headers=headers, timeout=60) as http:
        async with streamable_http_client("http://localhost/mcp", http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                await session.list_tools()


# What the first request through the gateway imports lazily: a warm spare imports them while it waits.
FIRST_REQUEST_MODULES = (
    "jsonref", "httpx2", "httpcore2", "h11", "mcp.client.stdio", "mcp.client.streamable_http",
    "uvicorn.lifespan.on", "uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_impl",
)


def wait_for_options() -> list[str] | None:
    """A warm spare (`--stdin-config`): everything imported, it waits for the rest of its command line and its
    environment as one JSON line on stdin (`{"args": [...], "env": {...}}`); None when stdin closes unclaimed."""
    for module in FIRST_REQUEST_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    line = sys.stdin.readline()
    if not line.strip():
        return None
    request = json.loads(line)
    os.environ.update(request["env"])
    return list(request["args"])


def writes_rule(text: str | None) -> Callable[[str], bool] | None:
    """Which tools write, as --writes says (None: no tracking)."""
    if text is None:
        return None
    return RunPolicy(writes=None if text == WRITES_BY_VERB else tool_list(text)).is_write


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--stdin-config"]:
        argv = wait_for_options()
        if argv is None:
            return 0
    parser = argparse.ArgumentParser(prog="python -m agentbox.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON object of catalog keys to server settings, or @file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--catalog", type=Path, default=os.environ.get("LOCAL_MCP_CATALOG") or None,
                        help="extra catalog file (default: $LOCAL_MCP_CATALOG)")
    parser.add_argument("--tools", default=None,
                        help="comma-separated allow-list of tool names; given empty, no tool is served")
    parser.add_argument("--prefix", action="store_true", help="prefix tool names with '<server>_'")
    parser.add_argument("--writes", default=None,
                        help="comma-separated tools that write (names or patterns; '*by-verb*': those named with a "
                        "writing verb): a second call with the same arguments is refused")
    parser.add_argument("--call-log", type=Path, default=os.environ.get("GATEWAY_CALL_LOG") or None,
                        help="append one JSON line per tool call here (default: $GATEWAY_CALL_LOG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    token = os.environ.get("GATEWAY_ACCESS_TOKEN", "")
    if not token:
        print("gateway: GATEWAY_ACCESS_TOKEN is not set; refusing to serve without auth.", file=sys.stderr)
        return 2
    try:
        config = read_config_argument(args.config, "--config")
        allow = tool_list(args.tools)

        async def serve() -> None:
            extra = json.loads(os.environ.get("GATEWAY_SECRET_VALUES") or "[]")  # the sandbox's own secrets
            gateway, _ = await build_gateway(config, token, args.catalog, allow, args.prefix, secrets=extra,
                                             call_log=args.call_log, is_write=writes_rule(args.writes))
            await serve_warm(gateway, token, args.host, args.port)

        asyncio.run(serve())
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
