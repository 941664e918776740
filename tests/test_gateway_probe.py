"""The real gateway (`python -m agentbox.gateway`) in front of tiny real MCP servers, and the readiness probe.

Every gateway is a subprocess serving the stdio MCP servers of `tests/servers/` through an extra catalog file. The
long-lived gateways start together when the module starts (they are slow to import, so they start in parallel), and
each test waits for its own with `wait_until_ready`, which is itself under test. Every process a gateway starts
carries a marker in its environment: teardown kills the gateway's process group, then anything else with the marker
(stdio servers run in sessions of their own), and checks that nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from fastmcp.exceptions import ToolError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentbox.claude import TOKEN_ENV, mcp_add_command, mcp_get_command, mcp_get_status, register_command
from agentbox.errors import GatewayAuthError, GatewayNotReady, GatewayUpstreamError
from agentbox.gateway.probe import ProbeResult, missing_tools, probe, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
SERVERS = Path(__file__).resolve().with_name("servers")
CLAUDE_BIN = ROOT / "node_modules" / ".bin"
TOKEN = "gw-test-token-" + uuid.uuid4().hex
MARKER = "AGENTBOX_TEST_GATEWAY_MARKER"
READY_DEADLINE = 45.0  # generous: several gateways start at once on a small machine

CATALOG = {
    "echo": {"command": [sys.executable, str(SERVERS / "echo_server.py")], "tools": ["echo", "add"]},
    "other": {"command": [sys.executable, str(SERVERS / "other_server.py")], "tools": ["ping"]},
    "clash": {"command": [sys.executable, str(SERVERS / "clash_server.py")], "tools": ["echo"]},
    "broken": {"command": [sys.executable, str(SERVERS / "broken_server.py")], "tools": ["never"]},
    "hang": {"command": [sys.executable, str(SERVERS / "hang_server.py")], "tools": ["never"]},
}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all sockets held open until every port is chosen)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def marked_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live (non-zombie) process whose environment carries `MARKER=marker`."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state != "Z":
            found.append((int(entry.name), cmdline))
    return found


def python_env(pycache: Path) -> dict[str, str]:
    """The environment for Python subprocesses, caching bytecode in `pycache` (outside the venv) even where
    PYTHONDONTWRITEBYTECODE is set: every gateway and MCP server otherwise compiles fastmcp from source."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def poll(condition: Any, deadline_seconds: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + deadline_seconds
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class Gateway:
    """One `python -m agentbox.gateway` subprocess, in a process group of its own, logging to a file."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        pycache: Path,
        config: dict[str, Any],
        *args: str,
        config_as_file: bool = False,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ):
        self.name = name
        self.port = port or free_ports(1)[0]
        self.marker = f"{name}-{uuid.uuid4().hex}"
        self.log_path = workdir / f"gateway-{name}.log"
        catalog = workdir / "catalog.json"
        if not catalog.exists():
            catalog.write_text(json.dumps(CATALOG))
        config_arg = json.dumps(config)
        if config_as_file:
            config_file = workdir / f"config-{name}.json"
            config_file.write_text(config_arg)
            config_arg = f"@{config_file}"
        extra, env = env or {}, python_env(pycache)
        env.pop("LOCAL_MCP_CATALOG", None)
        env.update(GATEWAY_ACCESS_TOKEN=TOKEN, PYTHONUNBUFFERED="1", **{MARKER: self.marker}, **extra)
        self.argv = [
            sys.executable, "-m", "agentbox.gateway",
            "--config", config_arg, "--port", str(self.port), "--catalog", str(catalog), *args,
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, expected: dict[str, list[str]]) -> ProbeResult:
        try:
            return run(wait_until_ready(self.url, TOKEN, expected, deadline_seconds=READY_DEADLINE))
        except Exception as exc:
            raise AssertionError(f"gateway {self.name} not ready: {exc}\n--- log ---\n{self.log()}") from exc

    def wait_listening(self) -> None:
        """Until the gateway answers HTTP at all (any status), without using the probe."""

        def answers() -> bool:
            assert self.process.poll() is None, f"gateway {self.name} exited:\n{self.log()}"
            try:
                httpx.get(f"{self.base}/health", timeout=1.0)
                return True
            except httpx.TransportError:
                return False

        assert poll(answers, READY_DEADLINE), f"gateway {self.name} never listened:\n{self.log()}"

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what remains, then make sure no marked process survives."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):  # whatever stayed in the group
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid, _ in marked_processes(self.marker):  # stdio servers run in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert poll(lambda: not marked_processes(self.marker), 10), f"still running: {marked_processes(self.marker)}"


def client(url: str, token: str = TOKEN, mode: str = "legacy") -> Client:
    """A fastmcp client of the gateway. "legacy" is the initialize-handshake era that the probe and Claude Code
    speak; the gateway mirrors the era of each front connection to its servers (see the restart test below)."""
    return Client(StreamableHttpTransport(url, headers={"Authorization": f"Bearer {token}"}), mode=mode)


async def call(url: str, tool: str, arguments: dict[str, Any], mode: str = "legacy") -> Any:
    async with client(url, mode=mode) as c:
        return (await c.call_tool(tool, arguments)).data


async def list_tools(url: str) -> list[str]:
    async with client(url) as c:
        return sorted(t.name for t in await c.list_tools())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bytecode cache for the subprocesses, filled once by an MCP server and the gateway's imports."""
    cache = tmp_path_factory.mktemp("pycache")
    env = python_env(cache)
    warmers = [
        subprocess.Popen([sys.executable, str(SERVERS / "echo_server.py")], env=env, cwd=ROOT,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-c", "import agentbox.gateway.server, uvicorn.server"], env=env, cwd=ROOT,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    for warmer in warmers:
        warmer.wait(timeout=60)  # an MCP stdio server exits at the end of its (empty) input
    return cache


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pycache: Path) -> Iterator[dict[str, Gateway]]:
    """Every long-lived gateway of this module, started at once."""
    workdir = tmp_path_factory.mktemp("gateways")
    gateways: dict[str, Gateway] = {}
    ports = iter(free_ports(3))
    try:
        # healthy, unprefixed
        gateways["main"] = Gateway("main", workdir, pycache, {"echo": {}, "other": {}}, port=next(ports),
                                   env={"SERVER_STARTS_LOG": str(workdir / "main-starts.log")})
        # two servers serving `echo`: must refuse to start
        gateways["clash"] = Gateway("clash", workdir, pycache, {"echo": {}, "clash": {}}, port=next(ports))
        # the same clash but prefixed, an allow-list hiding `echo_add`, and a server that fails at once; the config
        # comes from a file (one gateway for three features: each gateway costs seconds of CPU to start)
        gateways["degraded"] = Gateway(
            "degraded", workdir, pycache, {"echo": {}, "clash": {}, "broken": {}},
            "--prefix", "--tools", "echo_echo,clash_echo", config_as_file=True, port=next(ports),
        )
        yield gateways
    finally:
        errors = []
        for gateway in gateways.values():
            try:
                gateway.stop()
            except AssertionError as exc:
                errors.append(f"{gateway.name}: {exc}")
        assert not errors, errors


@pytest.fixture(scope="module")
def main_gateway(fleet: dict[str, Gateway]) -> Gateway:
    fleet["main"].wait_ready({"echo": ["echo", "add"], "other": ["ping"]})
    return fleet["main"]


class BackgroundApp:
    """A Starlette app served by uvicorn in a thread on a free loopback port; counts the requests it gets."""

    def __init__(self, status: int) -> None:
        self.requests = 0

        async def answer(request: Request) -> Response:
            self.requests += 1
            return JSONResponse({"error": "not now"}, status_code=status)

        app = Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST", "DELETE"])])
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/mcp"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> BackgroundApp:
        self.thread.start()
        assert poll(lambda: self.server.started, 10), "in-process HTTP server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
        assert not self.thread.is_alive()


# --------------------------------------------------------------------------- a healthy gateway


def test_tools_of_two_servers_are_served_unprefixed(main_gateway: Gateway) -> None:
    result = main_gateway.wait_ready({"echo": ["echo", "add"], "other": ["ping"]})
    assert sorted(result.tools) == ["add", "echo", "ping"]
    assert result.attempts >= 1
    assert run(list_tools(main_gateway.url)) == ["add", "echo", "ping"]


def test_tool_calls_go_through_to_each_server(main_gateway: Gateway) -> None:
    assert run(call(main_gateway.url, "echo", {"text": "héllo ✔ gateway"})) == "héllo ✔ gateway"
    assert run(call(main_gateway.url, "add", {"a": 40, "b": 2})) == 42
    assert run(call(main_gateway.url, "ping", {})) == "pong"


def test_unknown_tool_is_an_error(main_gateway: Gateway) -> None:
    with pytest.raises(ToolError):
        run(call(main_gateway.url, "does_not_exist", {}))


@pytest.mark.parametrize("token", ["", "wrong-token-value-5150", TOKEN + "x", TOKEN[:-1]])
def test_probe_with_a_bad_token_is_an_auth_error(main_gateway: Gateway, token: str) -> None:
    with pytest.raises(GatewayAuthError) as info:
        run(probe(main_gateway.url, token, {"echo": ["echo"]}))
    assert "401" in str(info.value)
    assert not info.value.retryable
    if token:
        assert token not in str(info.value)


def test_wait_until_ready_stops_at_once_on_a_bad_token(main_gateway: Gateway) -> None:
    """An auth error is final: with a long deadline, it must come out as GatewayAuthError, not a timeout."""
    with pytest.raises(GatewayAuthError):
        run(wait_until_ready(main_gateway.url, "wrong-token", {"echo": ["echo"]}, deadline_seconds=READY_DEADLINE))


def test_raw_mcp_post_needs_the_token(main_gateway: Gateway) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
    }
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with httpx.Client(timeout=10) as http:
        anonymous = http.post(main_gateway.url, json=initialize, headers=headers)
        wrong = http.post(main_gateway.url, json=initialize, headers={**headers, "Authorization": "Bearer nope"})
        right = http.post(main_gateway.url, json=initialize, headers={**headers, "Authorization": f"Bearer {TOKEN}"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].lower().startswith("bearer")
    assert wrong.status_code == 401
    assert right.status_code == 200  # the same request is fine with the token


def test_health_needs_the_token_and_reports_every_server(main_gateway: Gateway) -> None:
    health = f"{main_gateway.base}/health"
    with httpx.Client(timeout=10) as http:
        assert http.get(health).status_code == 401
        assert http.get(health, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get(health, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        response = http.get(health, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and set(body["servers"]) == {"echo", "other"}
    assert served(body, "echo") == {"state": "ready", "tools": 2, "error": "", "transport": "stdio"}
    assert served(body, "other") == {"state": "ready", "tools": 1, "error": "", "transport": "stdio"}
    assert "tools" in body["servers"]["echo"]["features"]  # what each server declared it offers
    assert body["accepts"] == {"hosts": ["loopback", "127.0.0.1"], "auth": "bearer"}
    assert TOKEN not in response.text


def served(health: dict, key: str) -> dict:
    return {k: health["servers"][key][k] for k in ("state", "tools", "error", "transport")}


def test_claude_code_registers_and_connects_to_the_gateway(main_gateway: Gateway, tmp_path: Path) -> None:
    """`register_command` run by a real shell and the real `claude` CLI, its `claude mcp get` read by mcp_get_status."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{CLAUDE_BIN}{os.pathsep}{os.environ['PATH']}",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }

    def shell(command: str, token: str, code: int = 0) -> str:
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env={**env, TOKEN_ENV: token},
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert done.returncode == code, done.stdout + done.stderr
        return done.stdout + done.stderr

    output = shell(register_command(main_gateway.url), TOKEN)  # add, then get: one command
    assert TOKEN in output  # the CLI does print the header: mcp_get_status must not pass it on
    connected, reason = mcp_get_status(output)
    assert connected, output
    assert TOKEN not in reason
    # registered again (register_claude's retry): the add fails and the get does not run, as the task expects
    again = shell(register_command(main_gateway.url), TOKEN, code=1)
    assert "already exists" in again and "Status:" not in again
    assert mcp_get_status(shell(mcp_get_command(), TOKEN))[0]

    shell("claude mcp remove gateway -s user", TOKEN)
    shell(mcp_add_command(main_gateway.url), "wrong-token-value")
    connected, reason = mcp_get_status(shell(mcp_get_command(), "wrong-token-value"))
    assert not connected
    assert "wrong-token-value" not in reason


def server_pids(gateway: Gateway, script: str) -> list[int]:
    return sorted(pid for pid, command in marked_processes(gateway.marker) if script in command)


def test_each_stdio_server_is_started_once_and_reused_by_every_client(main_gateway: Gateway) -> None:
    """The gateway promises one long-lived process per server, reused by every tool call: a server that keeps state
    (or takes seconds to start, like notion-mcp-server) must not be restarted because another client connected."""
    main_gateway.wait_ready({"echo": ["echo"], "other": ["ping"]})
    before = {s: server_pids(main_gateway, s) for s in ("echo_server.py", "other_server.py")}
    assert all(len(pids) == 1 for pids in before.values()), before
    assert run(call(main_gateway.url, "echo", {"text": "modern"}, mode="auto")) == "modern"  # a modern-era client
    after = {s: server_pids(main_gateway, s) for s in ("echo_server.py", "other_server.py")}
    assert after == before, "the gateway restarted its stdio servers"
    # nor while it started: listing the tools at start and serving the first tools/list is one process each
    starts = (main_gateway.log_path.parent / "main-starts.log").read_text().split()
    assert sorted(starts[::2]) == ["echo-server", "other-server"], starts


# --------------------------------------------------------------------------- a failed upstream (prefixed gateway)

DEGRADED_EXPECTED = {"echo": ["echo"], "clash": ["echo"], "broken": ["never"]}


def test_broken_upstream_is_a_final_upstream_error_naming_it(fleet: dict[str, Gateway]) -> None:
    """With a long deadline, the probe must stop with GatewayUpstreamError, not retry until GatewayNotReady."""
    gateway = fleet["degraded"]
    with pytest.raises(GatewayUpstreamError) as info:
        run(wait_until_ready(gateway.url, TOKEN, DEGRADED_EXPECTED, deadline_seconds=READY_DEADLINE))
    blamed = info.value.message.split("(")[0]
    assert "broken" in blamed
    assert "echo" not in blamed and "clash" not in blamed  # only the failed server is blamed
    assert not info.value.retryable


def test_one_probe_suffices_to_tell_a_broken_upstream(fleet: dict[str, Gateway]) -> None:
    """As soon as the gateway answers, a single probe says "never" rather than "not yet"."""
    gateway = fleet["degraded"]
    gateway.wait_listening()
    with pytest.raises(GatewayUpstreamError, match="could not start broken"):
        run(probe(gateway.url, TOKEN, DEGRADED_EXPECTED))


def test_health_of_a_degraded_gateway_reports_each_server(fleet: dict[str, Gateway]) -> None:
    gateway = fleet["degraded"]
    gateway.wait_listening()
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{gateway.base}/health").status_code == 401
        response = http.get(f"{gateway.base}/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert served(body, "echo") == {"state": "ready", "tools": 2, "error": "", "transport": "stdio"}
    assert served(body, "clash") == {"state": "ready", "tools": 1, "error": "", "transport": "stdio"}
    assert body["servers"]["broken"]["state"] == "failed"
    assert body["servers"]["broken"]["tools"] == 0
    assert body["servers"]["broken"]["error"]


# --------------------------------------------------------------------------- tool names: clash, prefix, allow-list


def test_a_tool_name_clash_stops_the_gateway_with_one_line(fleet: dict[str, Gateway]) -> None:
    gateway = fleet["clash"]
    code = gateway.process.wait(timeout=READY_DEADLINE)
    log = gateway.log()
    assert code != 0, log
    lines = [line for line in log.splitlines() if "clash between" in line]
    assert len(lines) == 1, log
    line = lines[0]
    assert line.startswith("gateway: ")
    assert "'echo'" in line and "echo and clash" in line
    assert "--prefix" in line
    assert "Traceback" not in log


def test_prefix_avoids_the_clash_and_serves_the_healthy_servers(fleet: dict[str, Gateway]) -> None:
    gateway = fleet["degraded"]
    result = gateway.wait_ready({"echo": ["echo"], "clash": ["echo"]})
    assert sorted(result.tools) == ["clash_echo", "echo_echo"]
    assert run(call(gateway.url, "echo_echo", {"text": "abc"})) == "abc"
    assert run(call(gateway.url, "clash_echo", {"text": "abc"})) == "cba"
    with pytest.raises(ToolError):
        run(call(gateway.url, "echo", {"text": "abc"}))


def test_allow_list_hides_every_other_tool(fleet: dict[str, Gateway]) -> None:
    gateway = fleet["degraded"]
    gateway.wait_ready({"echo": ["echo"], "clash": ["echo"]})
    assert "echo_add" not in run(list_tools(gateway.url))
    with pytest.raises(ToolError):  # hidden means not callable either, not just unlisted
        run(call(gateway.url, "echo_add", {"a": 1, "b": 2}))
    # a hidden tool is "not yet" to the probe, not a failed server: its server did start
    with pytest.raises(GatewayNotReady, match="echo lacks add"):
        run(probe(gateway.url, TOKEN, {"echo": ["echo", "add"], "clash": ["echo"]}))


# --------------------------------------------------------------------------- not ready


def test_connection_refused_is_not_ready() -> None:
    url = f"http://127.0.0.1:{free_ports(1)[0]}/mcp"
    with pytest.raises(GatewayNotReady) as info:
        run(probe(url, TOKEN, {"echo": ["echo"]}, timeout=5))
    assert url in str(info.value)
    assert info.value.retryable


def test_http_503_is_not_ready() -> None:
    with BackgroundApp(503) as app:
        with pytest.raises(GatewayNotReady, match="HTTP 503"):
            run(probe(app.url, TOKEN, {"echo": ["echo"]}, timeout=5))
        assert app.requests >= 1


def test_http_403_is_an_auth_error() -> None:
    with BackgroundApp(403) as app:
        with pytest.raises(GatewayAuthError, match="403"):
            run(probe(app.url, TOKEN, {"echo": ["echo"]}, timeout=5))


def test_wait_until_ready_gives_up_at_its_deadline_and_counts_attempts() -> None:
    with BackgroundApp(503) as app:
        with pytest.raises(GatewayNotReady) as info:
            run(wait_until_ready(app.url, TOKEN, {"echo": ["echo"]}, deadline_seconds=1.0))
        message = str(info.value)
        attempts = int(re.search(r"after \d+ s and (\d+) attempts", message).group(1))
        assert attempts >= 2  # it polled, backing off, rather than giving up after one try
        assert app.requests >= attempts
    assert "HTTP 503" in message
    assert "GATEWAY_READY_TIMEOUT_SECONDS" in info.value.hint


def test_a_gateway_whose_server_never_answers_is_not_ready_and_dies_cleanly(tmp_path: Path, pycache: Path) -> None:
    gateway = Gateway("hang", tmp_path, pycache, {"hang": {}})
    try:
        # the silent server is running (and so is the gateway) before the probe starts
        assert poll(lambda: any("hang_server.py" in c for _, c in marked_processes(gateway.marker)), READY_DEADLINE), (
            gateway.log()
        )
        with pytest.raises(GatewayNotReady) as info:
            run(wait_until_ready(gateway.url, TOKEN, {"hang": ["never"]}, deadline_seconds=1.5))
        assert "attempts" in str(info.value)
        assert gateway.process.poll() is None  # still waiting for its server, not crashed
    finally:
        gateway.stop()
    assert marked_processes(gateway.marker) == []


# --------------------------------------------------------------------------- missing_tools


def test_missing_tools_all_present_bare_or_prefixed() -> None:
    expected = {"notion": ["API-post-search"], "githubOfficial": ["create_issue", "add_issue_comment"]}
    assert missing_tools(["API-post-search", "create_issue", "add_issue_comment", "other"], expected) == {}
    assert missing_tools(["notion_API-post-search", "githubOfficial_create_issue", "githubOfficial_add_issue_comment"], expected) == {}



def test_missing_tools_does_not_take_another_servers_prefix() -> None:
    # With --prefix, "clash_echo" is the clash server's echo: it proves nothing about the echo server.
    assert missing_tools(["clash_echo"], {"echo": ["echo"]}) == {"echo": ["echo"]}
    assert missing_tools(["echo_echo"], {"echo": ["echo"]}) == {}


def test_missing_tools_names_each_missing_tool_per_server() -> None:
    expected = {"notion": ["API-post-search"], "githubOfficial": ["create_issue", "add_issue_comment"]}
    assert missing_tools(["create_issue"], expected) == {
        "notion": ["API-post-search"],
        "githubOfficial": ["add_issue_comment"],
    }
    assert missing_tools([], expected) == {"notion": ["API-post-search"], "githubOfficial": ["create_issue", "add_issue_comment"]}


def test_missing_tools_is_exact_not_a_substring_match() -> None:
    assert missing_tools(["create_issue_comment", "precreate_issue", "create_issues"], {"gh": ["create_issue"]}) == {
        "gh": ["create_issue"]
    }


def test_missing_tools_for_a_server_without_known_tools_needs_any_tool() -> None:
    assert missing_tools([], {"custom": []}) == {"custom": ["any tool"]}
    assert missing_tools(["whatever"], {"custom": []}) == {}
    assert missing_tools([], {}) == {}
