"""Readiness probe: the gateway is ready when it lists every expected server's tools over MCP.

A gateway can answer `tools/list` while one of its servers is still starting or has failed, so an HTTP 200 proves
little: the probe runs MCP initialize + tools/list with the bearer token and checks the expected tool names. A 401/403
is a distinct error that no retry can fix; refused connections, 5xx and timeouts are worth retrying. It polls every
20 ms by default (a closed port costs a bare TCP connect, not a handshake), bounded by a deadline.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx2
from opentelemetry import propagate

from agentbox.errors import GatewayAuthError, GatewayNotReady, GatewayUpstreamError, one_line

AUTH_HINT = "Check the gateway token: the sandbox's gateway refused it."
PROTOCOL_VERSION = "2025-06-18"  # what Claude Code and E2B's gateway speak; a server may answer with its own


@dataclass(frozen=True)
class ProbeResult:
    tools: list[str]
    attempts: int
    seconds: float


def missing_tools(names: list[str], expected: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per server, the expected tools that are not listed, bare (Docker's default) or behind that server's own
    prefix (`--prefix`); a server whose catalog names no tools needs some tool listed."""
    listed = set(names)
    missing = {}
    for server, tools in expected.items():
        absent = [t for t in tools if not {t, f"{server}_{t}"} & listed] if tools else ([] if names else ["any tool"])
        if absent:
            missing[server] = absent
    return missing


class GatewayProbe:
    """Probes one gateway as often as needed over a single HTTP client: making a client costs about 35 ms (TLS
    setup), which would otherwise land on every attempt, including the one that detects readiness."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self._statuses = url, []
        headers = {"Authorization": f"Bearer {token}"} if token else {}  # an empty token must earn a 401, not a crash
        propagate.inject(headers)  # the caller's span, when traced: the gateway's spans of the probes join it
        self._http = httpx2.AsyncClient(headers=headers, event_hooks={"response": [self._record]})

    async def _record(self, response: httpx2.Response) -> None:
        if not response.request.extensions.get("agentbox_unrecorded"):
            self._statuses.append(response.status_code)

    async def __aenter__(self) -> GatewayProbe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def list_tools(self, timeout: float = 10.0) -> list[str]:
        """One MCP handshake + tools/list; raises GatewayAuthError or GatewayNotReady."""
        self._statuses = []
        try:
            with anyio.fail_after(timeout):
                return await self._handshake_and_list()
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit, anyio.get_cancelled_exc_class())) and not isinstance(
                exc, TimeoutError
            ):
                raise
            denied = [s for s in self._statuses if s in (401, 403)]
            if denied:
                raise GatewayAuthError(
                    f"The MCP gateway at {self.url} answered {denied[0]} to our token.",
                    AUTH_HINT,
                ) from None
            why = _why(exc, self._statuses)
            raise GatewayNotReady(f"The MCP gateway at {self.url} is not answering yet ({why}).") from None

    async def _handshake_and_list(self) -> list[str]:
        """MCP over Streamable HTTP, the client's side, as the probe needs it: initialize, initialized, tools/list,
        then the session closed. Spoken here rather than through the MCP SDK, whose import costs a command line
        0.4 s, about what a warm gateway takes to be ready."""
        headers = {"Accept": "application/json, text/event-stream"}
        initialize = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                      "clientInfo": {"name": "agentbox-probe", "version": "1"}}
        result, answered = await self._request(headers, {"id": 1, "method": "initialize", "params": initialize})
        headers["MCP-Protocol-Version"] = str(result.get("protocolVersion") or PROTOCOL_VERSION)
        if session := answered.get("mcp-session-id"):
            headers["Mcp-Session-Id"] = session
        try:
            await self._request(headers, {"method": "notifications/initialized"})
            listed, _ = await self._request(headers, {"id": 2, "method": "tools/list"})
            return [str(tool["name"]) for tool in listed.get("tools", [])]
        finally:
            if session:  # as a client leaving: the gateway frees the session at once (its answer is not judged)
                with anyio.CancelScope(shield=True), contextlib.suppress(httpx2.HTTPError):
                    await self._http.delete(self.url, headers=headers, timeout=2.0,
                                            extensions={"agentbox_unrecorded": True})

    async def _request(self, headers: dict[str, str], message: dict) -> tuple[dict, httpx2.Headers]:
        """POST one JSON-RPC message; for a request, its result (read from a JSON body, or from the event stream
        up to the answer: a server may keep the stream open after it), with the response's headers."""
        async with self._http.stream("POST", self.url, headers=headers, json={"jsonrpc": "2.0", **message}) as reply:
            if reply.status_code >= 400:
                raise ProbeHttpError(reply.status_code)
            if "id" not in message:
                return {}, reply.headers
            if reply.headers.get("content-type", "").startswith("text/event-stream"):
                answers = _events(reply.aiter_lines())
            else:
                body = json.loads(await reply.aread())
                answers = _listed(body if isinstance(body, list) else [body])
            async for answer in answers:
                if _answers(answer, message["id"]):
                    return _result(answer), reply.headers
        raise ProbeRpcError(f"no answer to MCP request {message['id']}")

    async def upstream_failures(self) -> dict[str, str]:
        """Servers the gateway reports as failed on `/health` (this project's gateway; others answer nothing useful)."""
        try:
            response = await self._http.get(self.url.rsplit("/mcp", 1)[0] + "/health", timeout=2.0)
            servers = response.json().get("servers", {})
        except Exception:  # noqa: BLE001 - /health is an optional extra
            return {}
        if not isinstance(servers, dict):
            return {}
        return {
            k: str(v.get("error") or "failed")
            for k, v in servers.items()
            if isinstance(v, dict) and v.get("state") == "failed"
        }

    async def check(self, expected: dict[str, list[str]], timeout: float = 10.0) -> list[str]:
        """One readiness check: the tool names, or an error saying why the gateway is not ready."""
        if not await accepts_connections(self.url, timeout):
            raise GatewayNotReady(f"The MCP gateway at {self.url} is not answering yet (connection refused).")
        names = await self.list_tools(timeout)
        missing = missing_tools(names, expected)
        if not missing:
            return names
        failed = {k: v for k, v in (await self.upstream_failures()).items() if k in missing}
        if failed:
            listed = "; ".join(f"{k}: {v}" for k, v in failed.items())
            raise GatewayUpstreamError(
                f"The MCP gateway could not start {', '.join(failed)} ({listed}).",
                "Check that server's settings and credentials; the run would have no tools.",
            )
        listed = "; ".join(f"{k} lacks {', '.join(v)}" for k, v in missing.items())
        raise GatewayNotReady(f"The MCP gateway does not serve every expected tool yet ({listed}).")


class ProbeHttpError(Exception):
    """The gateway answered an MCP request with an HTTP error status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")


class ProbeRpcError(Exception):
    """The gateway answered an MCP request with a JSON-RPC error (or with no answer to it)."""


async def _listed(messages: list) -> AsyncIterator[dict]:
    for message in messages:
        yield message


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[dict]:
    """The JSON messages of a server-sent event stream: an event's data lines joined; events without data (a
    priming event, a comment) skipped."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []
    if data:
        yield json.loads("\n".join(data))


def _answers(message: object, request_id: int) -> bool:
    """Whether `message` is the answer to our request `request_id` (not a request of the server's own, which may
    carry the same id)."""
    return (isinstance(message, dict) and message.get("id") == request_id and "method" not in message
            and ("result" in message or "error" in message))


def _result(answer: dict) -> dict:
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        raise ProbeRpcError(f"MCP error {error.get('code', '?')}: {one_line(error.get('message', ''))}")
    return answer.get("result") or {}


def _why(exc: BaseException, statuses: list[int]) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    errors = [s for s in statuses if s >= 400]
    if errors:
        return f"HTTP {errors[-1]}"
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
        leaf = leaf.exceptions[0]
    return str(leaf) if isinstance(leaf, ProbeRpcError) else type(leaf).__name__


async def accepts_connections(url: str, timeout: float) -> bool:
    """A bare TCP connect: while the port is closed, polling costs a fraction of a millisecond, not a handshake."""
    parsed = urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(parsed.hostname or "localhost", port)
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True


async def probe(url: str, token: str, expected: dict[str, list[str]], timeout: float = 10.0) -> list[str]:
    async with GatewayProbe(url, token) as gateway:
        return await gateway.check(expected, timeout)


async def wait_until_ready(
    url: str,
    token: str,
    expected: dict[str, list[str]],
    deadline_seconds: float,
    first_delay: float = 0.02,
    max_delay: float = 0.02,
) -> ProbeResult:
    """Probe until ready or the deadline, waiting `first_delay` after the first failed probe and doubling the wait
    up to `max_delay` (both 20 ms by default: a steady poll); auth and upstream errors stop at once."""
    start = time.monotonic()
    delay, attempts = first_delay, 0
    async with GatewayProbe(url, token) as gateway:
        while True:
            attempts += 1
            remaining = deadline_seconds - (time.monotonic() - start)
            try:
                tools = await gateway.check(expected, timeout=max(0.5, min(10.0, remaining)))
                return ProbeResult(tools, attempts, time.monotonic() - start)
            except GatewayNotReady as exc:
                remaining = deadline_seconds - (time.monotonic() - start)
                if remaining <= 0:
                    raise GatewayNotReady(
                        f"{exc.message.rstrip('.')} after {deadline_seconds:.0f} s and {attempts} attempts.",
                        "Look at the gateway log in the sandbox; raise GATEWAY_READY_TIMEOUT_SECONDS if servers start "
                        "slowly.",
                    ) from None
                await anyio.sleep(min(delay, remaining))
                delay = min(delay * 2, max_delay)
