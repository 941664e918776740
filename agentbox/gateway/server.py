"""An MCP gateway with the interface of E2B's `mcp-gateway`, built on the `mcp` SDK's low-level server and client.

`python -m agentbox.gateway --config '<json>'` starts every configured catalog server once (a kept-alive stdio
process or a Streamable HTTP session), checks that no two servers serve the same tool name, and serves them all as
one MCP server at `/mcp` (router.py: every MCP feature passes through unchanged), behind the bearer token of
`GATEWAY_ACCESS_TOKEN` and a check of Host and Origin. Tool names are not prefixed (as in
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
import ipaddress
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import uvicorn
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentbox.errors import ConfigError
from agentbox.gateway.catalog import load_catalog, read_config_argument, upstreams
from agentbox.gateway.guard import CallGuard
from agentbox.gateway.patterns import credential_patterns
from agentbox.gateway.router import Router
from agentbox.gateway.tracing import JoinRequestTrace, start_tracing
from agentbox.gateway.upstream import UpstreamServer
from agentbox.secrets import config_secrets, redact
from agentbox.policy import WRITES_BY_VERB, RunPolicy, tool_list

log = logging.getLogger("agentbox.gateway")
DEFAULT_PORT = 50005
UPSTREAM_START_TIMEOUT = 120.0
LOOPBACK_NAMES = ("localhost",)


HOST = re.compile(r"^(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::\d{1,5})?$")


def is_allowed_host(host: str, allowed: Sequence[str]) -> bool:
    """Whether a Host (or an Origin's host and port) names this gateway: loopback, or a name it serves under."""
    match = HOST.match(host.strip().lower())
    if match is None:
        return False
    name = match["ip6"] or match["name"]
    if name in LOOPBACK_NAMES or name in allowed:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin_host(origin: str) -> str:
    """The host and port an Origin names ("" for one that is not a URL, such as `null`)."""
    try:
        return urlsplit(origin).netloc
    except ValueError:
        return ""


class Gate:
    """In front of every route: a Host or an Origin that is not this gateway's is refused (403: a browser page
    driven by DNS rebinding must not reach it), and so is a request without the bearer token (401)."""

    def __init__(self, app: ASGIApp, token: str, hosts: Sequence[str]) -> None:
        self.app, self.token, self.hosts = app, token.encode(), [h.lower() for h in hosts]

    def accepts(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        origin = request.headers.get("origin")
        if not is_allowed_host(request.headers.get("host", ""), self.hosts):
            response = PlainTextResponse("Forbidden: this Host is not the gateway's", status_code=403)
        elif origin is not None and not is_allowed_host(origin_host(origin), self.hosts):
            response = PlainTextResponse("Forbidden: requests from this Origin are refused", status_code=403)
        elif not self.accepts(request.headers.get("authorization")):
            response = JSONResponse({"error": "unauthorized"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="agentbox-gateway"'})
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def find_clashes(servers: list[UpstreamServer]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for server in servers:
        for tool in server.lists.get("tools/list", []):
            owners.setdefault(tool["name"], []).append(server.key)
    return {tool: keys for tool, keys in owners.items() if len(keys) > 1}


def health_report(servers: list[UpstreamServer], hosts: Sequence[str],
                  secrets: Sequence[str] = ()) -> tuple[dict[str, Any], int]:
    """Each server's state and what it serves (tools, prompts, resources, templates, features), and who may ask."""
    ok = all(s.state == "ready" for s in servers)
    report = {
        "status": "ok" if ok else "degraded",
        "servers": {
            s.key: {
                "state": s.state, "error": redact(s.error, list(secrets)),
                "transport": "stdio" if s.spec.command else "http",
                "tools": len(s.lists.get("tools/list", [])),
                "prompts": len(s.lists.get("prompts/list", [])),
                "resources": len(s.lists.get("resources/list", [])),
                "resource_templates": len(s.lists.get("resources/templates/list", [])),
                "features": sorted(s.capabilities),
            }
            for s in servers
        },
        "accepts": {"hosts": ["loopback", *hosts], "auth": "bearer"},
    }
    return report, 200 if ok else 503


@contextlib.asynccontextmanager
async def running_gateway(
    config: dict[str, Any],
    token: str,
    catalog_file: Path | None = None,
    allow_tools: list[str] | None = None,
    prefix: bool = False,
    start_timeout: float = UPSTREAM_START_TIMEOUT,
    secrets: Sequence[str] = (),
    call_log: Path | None = None,
    is_write: Callable[[str], bool] | None = None,
    hosts: Sequence[str] = (),
    patterns: bool = True,
    tracing: JoinRequestTrace | None = None,
) -> AsyncIterator[ASGIApp]:
    """Start every upstream server, check for clashes, and serve them all as one MCP server (the ASGI app: /mcp and
    /health) behind the gate and the guard (see guard.py), which keeps the config's secrets, the token and `secrets`
    out of every call. The servers stop when the context ends. With `patterns`, the guard also knows credentials by
    their format (patterns.py), compiled while the servers start. With `tracing` (its run traced), each request's
    span joins the run's trace (tracing.py)."""
    guard = CallGuard([*config_secrets(config), token, *secrets], call_log, is_write)
    router = Router([], guard, None if allow_tools is None else set(allow_tools), prefix)
    servers = [UpstreamServer(u, router) for u in upstreams(config, load_catalog(catalog_file))]
    router.upstreams = servers
    started = [asyncio.Event() for _ in servers]
    tasks = [asyncio.create_task(s.run(e, start_timeout)) for s, e in zip(servers, started)]
    try:
        compiled = asyncio.to_thread(credential_patterns) if patterns else asyncio.sleep(0)
        guard.patterns = (await asyncio.gather(compiled, *(e.wait() for e in started)))[0]
        for server in servers:
            if server.state == "ready":
                log.warning("gateway: %s ready (%d tools)", server.key, len(server.lists.get("tools/list", [])))
            else:
                log.error("gateway: %s FAILED to start: %s", server.key, server.error)
        clashes = {} if prefix else find_clashes(servers)
        if clashes:
            listed = "; ".join(f"'{tool}' from {' and '.join(keys)}" for tool, keys in sorted(clashes.items()))
            raise ConfigError(f"Tool name clash between MCP servers: {listed}.", "Start the gateway with --prefix.")

        async def health(request: Request) -> JSONResponse:
            """200 when every server is ready, 503 otherwise, with what each serves (the gate checks the token)."""
            body, status = health_report(servers, hosts, guard.secrets)
            return JSONResponse(body, status_code=status)

        server = router.server()
        if tracing:
            server.middleware.insert(0, tracing)  # outside the MCP SDK's span middleware: it sets the parent
        app = server.streamable_http_app(
            streamable_http_path="/mcp", custom_starlette_routes=[Route("/health", health, methods=["GET"])],
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),  # the Gate does
        )
        yield Gate(app, token, hosts)
    finally:
        for server in servers:
            server.close()
        for task, event in zip(tasks, started):  # a server still starting stops now, not at its start timeout
            if not event.is_set():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def serve_warm(app: ASGIApp, token: str, host: str, port: int) -> None:
    """Serve the gateway, opening the public port only once a real MCP client has listed the tools.

    The first request over HTTP costs more than the next ones (sessions, serializers, lazy imports). That request is
    made first over a private Unix socket, so when the port opens the gateway answers at full speed and a readiness
    probe sees it ready at once.
    """
    with tempfile.TemporaryDirectory(prefix="agentbox-gateway-") as private:
        socket_path = os.path.join(private, "warmup.sock")
        warmup = uvicorn.Server(uvicorn.Config(app, uds=socket_path, lifespan="on", log_level="warning"))
        warmup_task = asyncio.create_task(warmup.serve())
        while not warmup.started:
            if warmup_task.done():
                await warmup_task  # raises why it could not start
                return
            await asyncio.sleep(0.005)
        try:
            await _list_tools_over(socket_path, token)
            public = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning",
                                                   timeout_graceful_shutdown=2))
            print(f"gateway: serving on http://{host}:{port}/mcp", file=sys.stderr, flush=True)
            await public.serve()
        finally:
            warmup.should_exit = True
            await warmup_task


async def _list_tools_over(socket_path: str, token: str) -> None:
    transport = httpx2.AsyncHTTPTransport(uds=socket_path)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(transport=transport, headers=headers, timeout=60) as http:
        async with streamable_http_client("http://localhost/mcp", http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                await session.list_tools()


# What the first request through the gateway imports lazily: a warm spare imports them while it waits.
FIRST_REQUEST_MODULES = (
    "httpcore2", "h11", "uvicorn.lifespan.on", "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.websockets.websockets_impl",
)


def wait_for_options() -> list[str] | None:
    """A warm spare (`--stdin-config`): everything imported and the credential patterns compiled, it waits for the
    rest of its command line and its environment as one JSON line on stdin (`{"args": [...], "env": {...}}`); None
    when stdin closes unclaimed."""
    for module in FIRST_REQUEST_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    credential_patterns()
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
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a host name the gateway is reached under, besides loopback and --host (repeatable): "
                        "requests whose Host or Origin names anything else are refused with 403")
    parser.add_argument("--no-secret-patterns", action="store_true",
                        help="do not scan tool calls for credentials of known formats (the run's own secrets are "
                        "still refused)")
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

        traced = start_tracing()  # None when the run is not traced

        async def serve() -> None:
            extra = json.loads(os.environ.get("GATEWAY_SECRET_VALUES") or "[]")  # the sandbox's own secrets
            hosts = [args.host, *args.allow_host]
            async with running_gateway(config, token, args.catalog, allow, args.prefix,
                                       secrets=[*extra, *(traced.secrets if traced else [])], call_log=args.call_log,
                                       is_write=writes_rule(args.writes), hosts=hosts,
                                       patterns=not args.no_secret_patterns,
                                       tracing=JoinRequestTrace() if traced else None) as app:
                if traced:
                    await asyncio.to_thread(traced.wait_installed)  # long done, as the servers took longer
                await serve_warm(app, token, args.host, args.port)

        asyncio.run(serve())
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
