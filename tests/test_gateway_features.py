"""Every MCP feature through the real gateway, for a stdio and a Streamable HTTP upstream: a client sees the same
through the gateway as from the server directly (tests/mcp_features.py observes, tests/servers/feature_server.py
serves). And the gateway's HTTP endpoint refuses what a browser page could send it by DNS rebinding (a foreign Host
or Origin: 403) without giving up the bearer token.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.shared.exceptions import MCPError

from agentbox.rehearsal.model import ModelScript, model_app
from agentbox.rehearsal.servers import BackgroundServer
from tests.mcp_features import http, observe, stdio
from tests.test_gateway_probe import (  # noqa: F401 - pycache is a fixture
    CLAUDE_BIN, ROOT, SERVERS, TOKEN, Gateway, free_ports, poll, pycache, python_env,
)

# the checks use what the 2026-07-28 revision deprecates (logging, subscriptions, roots, sampling) on purpose: the
# handshake era that Claude Code speaks has them
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
FEATURE_SERVER = [sys.executable, str(SERVERS / "feature_server.py")]
FEATURE_TOOLS = ["lookup", "count", "wait", "cancelled", "ask_model", "ask_person", "roots", "change", "fail", "repeat",
                 "die", "extra"]


class FeatureServer:
    """tests/servers/feature_server.py over Streamable HTTP on a free loopback port (a fresh state per process)."""

    def __init__(self, pycache: Path, log: Path | None = None) -> None:  # noqa: F811 - the fixture's value
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        env = {**python_env(pycache), **({"FEATURE_SERVER_LOG": str(log)} if log else {})}
        self.process = subprocess.Popen([*FEATURE_SERVER, "--http", str(self.port)], env=env,
                                        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        assert poll(self.listening, 30), "the feature server did not start"

    def listening(self) -> bool:
        assert self.process.poll() is None, "the feature server exited"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, pycache) -> Iterator[dict]:  # noqa: F811
    """Two feature servers over HTTP (one to ask directly, one behind a gateway), and two gateways: one in front of
    the stdio feature server and the echo server (so requests must be routed), one in front of an HTTP one."""
    workdir = tmp_path_factory.mktemp("features")
    direct, remote = FeatureServer(pycache), FeatureServer(pycache)
    (workdir / "catalog.json").write_text(json.dumps({
        "features": {"command": FEATURE_SERVER, "tools": ["lookup"]},
        "echo": {"command": [sys.executable, str(SERVERS / "echo_server.py")], "tools": ["echo"]},
        "remote": {"url": remote.url, "tools": ["lookup"]},
    }))
    gateways = {
        "stdio": Gateway("features-stdio", workdir, pycache, {"features": {}, "echo": {}},
                         "--tools", ",".join(FEATURE_TOOLS)),
        "http": Gateway("features-http", workdir, pycache, {"remote": {}}, "--allow-host", "sandbox.internal"),
    }
    try:
        gateways["stdio"].wait_ready({"features": ["lookup"]})
        gateways["http"].wait_ready({"remote": ["lookup"]})
        yield {"direct": direct, "gateways": gateways}
    finally:
        for gateway in gateways.values():
            gateway.stop()
        direct.stop()
        remote.stop()


def differences(direct: dict, through: dict) -> dict:
    return {feature: {"direct": direct[feature], "through the gateway": through.get(feature)}
            for feature in direct if direct[feature] != through.get(feature)}


@pytest.fixture(scope="module")
def direct_stdio() -> dict:
    return anyio.run(observe, lambda: stdio(FEATURE_SERVER))


def test_the_checks_see_the_same_server_over_stdio_and_http(servers, direct_stdio):
    """The observations do not depend on the transport, so a difference through the gateway is the gateway's."""
    over_http = anyio.run(observe, lambda: http(servers["direct"].url))
    assert differences(direct_stdio, over_http) == {}
    assert over_http["complete greet"]["completion"]["values"] == ["Alan", "Alonzo"]  # the checks check something
    assert "notifications/resources/updated" in json.dumps(over_http["after change"])


@pytest.mark.parametrize("upstream", ["stdio", "http"])
def test_every_feature_passes_through_the_gateway_unchanged(servers, direct_stdio, upstream):
    through = anyio.run(observe, lambda: http(servers["gateways"][upstream].url, TOKEN))
    assert differences(direct_stdio, through) == {}


def test_a_tool_schema_keeps_its_defs_refs_and_output_schema(servers, direct_stdio):
    """The JSON Schema 2020-12 keywords that a proxy rebuilding schemas loses (fastmcp's dropped `$defs`)."""
    through = anyio.run(observe, lambda: http(servers["gateways"]["stdio"].url, TOKEN))
    lookup = next(t for t in through["tools"] if t["name"] == "lookup")
    assert lookup["inputSchema"]["$defs"]["Item"]["properties"]["tags"]["items"] == {"$ref": "#/$defs/Tag"}
    assert lookup["inputSchema"]["properties"]["item"] == {"$ref": "#/$defs/Item"}
    assert lookup["outputSchema"]["required"] == ["id", "found"]
    assert lookup["_meta"] == {"example.com/owner": "features"} and lookup["annotations"]["readOnlyHint"] is True
    assert through["call lookup"]["structuredContent"] == {"id": "item-2", "found": True, "depth": 1}


# --------------------------------------------------------------------------- Host and Origin


def post_initialize(gateway: Gateway, headers: dict[str, str]) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    with httpx.Client(timeout=10) as client:
        return client.post(gateway.url, json=body, headers={"Accept": "application/json, text/event-stream",
                                                            **headers})


@pytest.mark.parametrize("headers", [
    {"Origin": "http://rebind.example"},
    {"Origin": "http://127.0.0.1.rebind.example:8080"},
    {"Origin": "null"},
    {"Host": "rebind.example"},
    {"Host": "rebind.example:50005", "Origin": "http://rebind.example:50005"},
    {"Host": "localhost:80@rebind.example"},
    {"Origin": "http://[::1"},
], ids=["foreign origin", "lookalike origin", "opaque origin", "foreign host", "rebound host and origin",
        "host with userinfo", "broken origin"])
def test_a_foreign_host_or_origin_is_refused_even_with_the_token(servers, headers):
    gateway = servers["gateways"]["stdio"]
    answer = post_initialize(gateway, {"Authorization": f"Bearer {TOKEN}", **headers})
    assert answer.status_code == 403, answer.text
    with httpx.Client(timeout=10) as client:
        health = client.get(f"{gateway.base}/health", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert health.status_code == 403


@pytest.mark.parametrize("origin", ["http://localhost:{port}", "http://127.0.0.1:{port}", "http://[::1]:{port}"])
def test_a_loopback_origin_is_served_and_still_needs_the_token(servers, origin):
    gateway = servers["gateways"]["stdio"]
    origin = origin.format(port=gateway.port)
    assert post_initialize(gateway, {"Origin": origin}).status_code == 401
    answer = post_initialize(gateway, {"Origin": origin, "Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and "agentbox-gateway" in answer.text


def test_a_name_the_gateway_is_given_is_served(servers):
    """The names a sandbox's gateway is reached under (`--allow-host`), and only those."""
    gateway = servers["gateways"]["http"]
    token = {"Authorization": f"Bearer {TOKEN}"}
    assert post_initialize(gateway, {**token, "Host": f"sandbox.internal:{gateway.port}"}).status_code == 200
    assert post_initialize(gateway, {**token, "Origin": "https://sandbox.internal"}).status_code == 200
    assert post_initialize(gateway, {**token, "Host": "other.internal"}).status_code == 403


def test_health_says_what_each_server_serves(servers):
    with httpx.Client(timeout=10) as client:
        stdio_health = client.get(f"{servers['gateways']['stdio'].base}/health",
                                  headers={"Authorization": f"Bearer {TOKEN}"}).json()
        http_health = client.get(f"{servers['gateways']['http'].base}/health",
                                 headers={"Authorization": f"Bearer {TOKEN}"}).json()
    features = stdio_health["servers"]["features"]
    assert {k: features[k] for k in ("state", "transport", "prompts", "resources", "resource_templates")} == {
        "state": "ready", "transport": "stdio", "prompts": 3, "resources": 3, "resource_templates": 2}
    assert features["tools"] >= 10  # every page of the list (the server pages by two)
    assert {"completions", "logging", "prompts", "resources", "tools"} <= set(features["features"])
    assert http_health["servers"]["remote"]["transport"] == "http"
    assert http_health["accepts"]["hosts"] == ["loopback", "127.0.0.1", "sandbox.internal"]
    assert TOKEN not in json.dumps(stdio_health)


# --------------------------------------------------------------------------- what Claude Code uses

CLAUDE_STEPS = [{"tool": "lookup", "input": {"item": {"id": "item-1"}}}, {"tool": "ask_person", "input": {}},
                {"tool": "roots", "input": {}}, {"tool": "ask_model", "input": {}}, {"tool": "count", "input": {"n": 2}},
                {"text": "done"}]


def run_claude(url: str, token: str | None, home: Path) -> list:
    """The real `claude -p`, given one HTTP MCP server named `features`, driven by a scripted model: the tool
    results it got, in order."""
    model = BackgroundServer(model_app(ModelScript(CLAUDE_STEPS))).start()
    server = {"type": "http", "url": url, **({"headers": {"Authorization": f"Bearer {token}"}} if token else {})}
    env = {**os.environ, "HOME": str(home), "ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-ant-stand-in",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    try:
        done = subprocess.run(
            [str(CLAUDE_BIN / "claude"), "-p", "Use the tools.", "--mcp-config",
             json.dumps({"mcpServers": {"features": server}}), "--strict-mcp-config", "--allowedTools",
             "mcp__features", "--output-format", "stream-json", "--verbose"],
            env=env, cwd=home, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    finally:
        model.stop()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [block.get("content") for event in events if event.get("type") == "user"
            for block in event["message"]["content"] if isinstance(block, dict) and block.get("type") == "tool_result"]


@pytest.fixture(scope="module")
def claude_direct(tmp_path_factory, pycache) -> dict:  # noqa: F811
    """Claude Code given the feature server directly: what it asked of the server (logged by the server), and
    what its tool calls answered."""
    workdir = tmp_path_factory.mktemp("claude")
    log = workdir / "methods.jsonl"
    server = FeatureServer(pycache, log)
    try:
        results = run_claude(server.url, None, workdir)
    finally:
        server.stop()
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    return {"results": results, "requests": requests, "home": workdir}


def test_claude_code_gets_the_same_answers_through_the_gateway(servers, claude_direct):
    through = run_claude(servers["gateways"]["stdio"].url, TOKEN, claude_direct["home"])
    assert through == claude_direct["results"]
    assert len(through) == len(CLAUDE_STEPS) - 1 and "item-1" in json.dumps(through[0])


def what_claude_code_uses(claude: dict) -> dict[str, str]:
    """The README table's Claude Code column, as measured."""
    methods = {r["method"] for r in claude["requests"]}
    capabilities = claude["requests"][0]["capabilities"] or {}
    results = dict(zip(["lookup", "ask_person", "roots", "ask_model", "count"], map(json.dumps, claude["results"])))
    calls = [r for r in claude["requests"] if r["method"] == "tools/call"]

    def lists(method: str) -> str:
        return "lists them" if method in methods else "does not list them"

    return {
        "tools": "lists and calls them, every page" if {"tools/list", "tools/call"} <= methods and sum(
            r["method"] == "tools/list" for r in claude["requests"]) >= 5 else "?",
        "tool schemas, annotations, `_meta`, structured content": (
            "reads the structured content" if '\\"found\\":true' in results["lookup"] else "reads the text"),
        "prompts": lists("prompts/list"),
        "resources": lists("resources/list"),
        "resource templates": lists("resources/templates/list"),
        "completions": "asks" if "completion/complete" in methods else "does not ask",
        "subscriptions, `resources/updated`": "subscribes" if "resources/subscribe" in methods else "does not subscribe",
        "logging": "sets a level" if "logging/setLevel" in methods else "does not set a level",
        "progress": "sends a token with every call" if calls and all(r["progress"] for r in calls) else "no token",
        "sampling": ("declares it" if "sampling" in capabilities else "does not declare it")
        + (" (-32601)" if "-32601" in results["ask_model"] else ""),
        "elicitation": ("declares it" if "elicitation" in capabilities else "does not declare it")
        + ("; `-p` answers cancel" if "cancel" in results["ask_person"] else ""),
        "roots": ("declares them" if "roots" in capabilities else "does not declare them")
        + ("; its working directory" if str(claude["home"]) in results["roots"] else ""),
    }


def readme_table() -> dict[str, list[str]]:
    """The README's feature table: row name -> [Docker's gateway, this gateway, Claude Code]."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("| MCP feature or function |"):]
    rows = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_readme_table_says_what_claude_code_uses(claude_direct):
    table = readme_table()
    for feature, measured in what_claude_code_uses(claude_direct).items():
        assert table[feature][2] == measured, feature


def test_the_readme_table_says_what_this_gateway_passes_through(direct_stdio):
    """Each feature row says "passes through" for this gateway, and the feature suite checks each of them."""
    checked = {
        "tools": ["tools", "call lookup", "call fail"],
        "tool schemas, annotations, `_meta`, structured content": ["tools", "call lookup"],
        "prompts": ["prompts", "get greet"], "resources": ["resources", "read"], "resource templates": ["templates",
                                                                                                          "read template"],
        "completions": ["complete greet", "complete greet formal", "complete item"],
        "subscriptions, `resources/updated`": ["subscribe", "after change", "unsubscribe", "after unsubscribed change"],
        "logging": ["set level", "logs"], "progress": ["progress"], "cancellation": ["cancelled"],
        "sampling": ["call ask_model"], "elicitation": ["call ask_person"], "roots": ["call roots"],
        "`list_changed`": ["after change", "tools after change", "call extra"],
    }
    table = readme_table()
    for feature, keys in checked.items():  # test_every_feature_passes_through_the_gateway_unchanged compares them
        assert table[feature][1].startswith("passes through"), feature
        assert all(key in direct_stdio for key in keys), feature


def test_a_server_that_dies_is_reported_and_a_write_cut_off_is_not_made_again(tmp_path, pycache):  # noqa: F811
    """A stdio server whose process ends is `failed` on /health from its first failed call; a write whose call was
    cut off (the client gave up) may have been made, so the same call is refused, not made twice; and a server
    that serves resources without a templates list is served, not failed."""
    (tmp_path / "catalog.json").write_text(json.dumps({"features": {
        "command": FEATURE_SERVER, "env": {"FEATURE_NO_TEMPLATES": "1"}, "tools": ["lookup"]}}))
    gateway = Gateway("features-dies", tmp_path, pycache, {"features": {}}, "--writes", "wait")

    async def cut_off_then_again() -> str:
        async with http(gateway.url, TOKEN) as streams, ClientSession(*streams) as session:
            await session.initialize()
            assert [r.uri for r in (await session.list_resources()).resources]  # resources still served
            with anyio.move_on_after(0.5):
                await session.call_tool("wait", {"why": "deploy"})
            again = await session.call_tool("wait", {"why": "deploy"})
            with pytest.raises(MCPError, match="The MCP server features closed its connection during tools/call"):
                await session.call_tool("die", {})
            return again.content[0].text

    try:
        gateway.wait_ready({"features": ["lookup"]})
        assert "was already made in this run" in anyio.run(cut_off_then_again)
        with httpx.Client(timeout=10) as client:
            health = client.get(f"{gateway.base}/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert health.status_code == 503
        assert health.json()["servers"]["features"]["state"] == "failed"
        assert "connection closed" in health.json()["servers"]["features"]["error"]
    finally:
        gateway.stop()
