"""The E2B stand-in (`tests/e2b_standin`), driven by the real `e2b.AsyncSandbox` SDK: nothing mocked.

What the E2B backend's tests will lean on: the create body the SDK sends, the gateway at the templated URL with the
SDK's token, commands (streaming, exit codes, timeouts), files, listing by metadata over several pages, kill, TTL,
and every injected fault surfacing as the exception the SDK raises against the real E2B. After each test no sandbox
is left running in the stand-in's books and none of its processes survives.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    RateLimitException,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    TimeoutException,
)
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.e2b_standin import API_KEY, MCP_PORT, E2BStandIn

SERVERS = Path(__file__).resolve().with_name("servers")
CATALOG = {"echo": {"command": [sys.executable, str(SERVERS / "echo_server.py")], "tools": ["echo", "add"]}}
E2B_ENV = ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN", "E2B_DEBUG", "E2B_ACCESS_TOKEN",
           "E2B_MCP_URL", "E2B_HTTP_VERSION")


def run(coro):
    return asyncio.run(coro)


async def until(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll `predicate` (plain or async) until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        await asyncio.sleep(interval)


async def no_commands(sbx: AsyncSandbox) -> bool:
    return await sbx.commands.list() == []


def gateway_url(e2b: E2BStandIn, sbx: AsyncSandbox) -> str:
    """What the product's E2B backend does: format E2B_MCP_URL with the SDK's view of the sandbox."""
    return e2b.env["E2B_MCP_URL"].format(sandbox_id=sbx.sandbox_id, domain=sbx.sandbox_domain, port=AsyncSandbox.mcp_port)


async def mcp_echo(url: str, token: str) -> tuple[list[str], str]:
    """List the tools and call `echo`, speaking the initialize-handshake era as Claude Code and the probe do."""
    transport = StreamableHttpTransport(url, headers={"Authorization": f"Bearer {token}"})
    async with Client(transport, mode="legacy") as client:
        tools = sorted(t.name for t in await client.list_tools())
        return tools, (await client.call_tool("echo", {"text": "through the gateway"})).data


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("e2b-standin") / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    with E2BStandIn(catalog_file=str(catalog)) as stand_in:
        yield stand_in
    assert stand_in.wait_for_no_processes() == {}


@pytest.fixture
def e2b(standin, monkeypatch):
    """The stand-in with the SDK pointed at it; afterwards nothing may be left running."""
    for name in E2B_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in standin.env.items():
        monkeypatch.setenv(name, value)
    standin.clear_faults()
    yield standin
    standin.clear_faults()
    left = standin.alive()
    standin.kill_all()  # so one failure does not cascade into the next tests
    assert left == {}, "sandboxes left running"
    assert standin.wait_for_no_processes() == {}


def test_env_points_the_sdk_at_the_standin(standin):
    env = standin.env
    assert env["E2B_API_URL"].startswith("http://127.0.0.1:")
    assert env["E2B_SANDBOX_URL"].startswith("http://127.0.0.1:")
    assert env["E2B_API_URL"] != env["E2B_SANDBOX_URL"]
    assert env["E2B_API_KEY"] == API_KEY
    assert env["E2B_MCP_URL"] == "http://{domain}:{port}/mcp"
    with pytest.raises(ValueError, match="unknown fault kind"):
        standin.inject("meteor")
    with pytest.raises(ValueError, match="needs status"):
        standin.inject("create_error")


def test_create_is_recorded_and_its_gateway_serves_mcp_with_the_sdk_token(e2b):
    key = f"test-{uuid.uuid4().hex}"
    metadata = {"app": "agentbox", "case": "create"}

    before = len(e2b.requests)

    async def scenario():
        sbx = await AsyncSandbox.create(
            mcp={"echo": {}}, metadata=metadata, envs={"FROM_CREATE": "create-value"}, timeout=120,
            lifecycle={"on_timeout": "kill"}, idempotency_key=key,
        )
        try:
            record = e2b.alive()[sbx.sandbox_id]
            assert (record.template, record.metadata, record.envs, record.timeout) == (
                "mcp-gateway", metadata, {"FROM_CREATE": "create-value"}, 120)
            assert record.lifecycle == {"autoPause": False}
            assert (record.mcp, record.idempotency_key) == ({"echo": {}}, key)
            assert record.domain == sbx.sandbox_domain and record.domain.startswith("127.77.")

            [create] = [r for r in e2b.requests[before:] if (r.method, r.path) == ("POST", "/v2/sandboxes")]
            assert create.json == {"templateID": "mcp-gateway", "timeout": 120, "metadata": metadata,
                                   "envVars": {"FROM_CREATE": "create-value"}, "mcp": {"echo": {}}, "autoPause": False}
            assert create.headers["idempotency-key"] == key
            assert create.headers["x-api-key"] == "<redacted>"
            assert create.status == 201
            [gateway] = [c for c in e2b.commands if c.sandbox_id == sbx.sandbox_id]
            assert gateway.user == "root" and gateway.env_names == ("GATEWAY_ACCESS_TOKEN",)
            assert gateway.args[-1].startswith("mcp-gateway --config ")

            token = await sbx.get_mcp_token()
            url = gateway_url(e2b, sbx)
            assert url == f"http://{sbx.sandbox_domain}:{MCP_PORT}/mcp"
            assert await mcp_echo(url, token) == (["add", "echo"], "through the gateway")
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await http.post(url, json={})).status_code == 401
                assert (await http.post(url, json={}, headers={"Authorization": "Bearer nope"})).status_code == 401

            again = await AsyncSandbox.connect(sbx.sandbox_id)  # reads /etc/mcp-gateway/.token as root
            assert await again.get_mcp_token() == token

            # the same idempotency key: the same sandbox, and the SDK restarts the gateway with a new token
            twin = await AsyncSandbox.create(mcp={"echo": {}}, metadata=metadata, timeout=120, idempotency_key=key)
            assert twin.sandbox_id == sbx.sandbox_id
            new_token = await twin.get_mcp_token()
            assert new_token != token
            assert (await mcp_echo(url, new_token))[1] == "through the gateway"
            async with httpx.AsyncClient(timeout=10) as http:
                stale = await http.post(url, json={}, headers={"Authorization": f"Bearer {token}"})
            assert stale.status_code == 401
            assert [r.id for r in e2b.sandboxes().values() if r.idempotency_key == key] == [sbx.sandbox_id]
        finally:
            assert await sbx.kill() is True
        assert await sbx.kill() is False
        assert await AsyncSandbox.kill(sbx.sandbox_id) is False
        assert e2b.sandboxes()[sbx.sandbox_id].state == "killed"
        assert e2b.sandboxes()[sbx.sandbox_id].ended_at is not None

    run(scenario())


def test_commands_stream_report_exit_codes_and_time_out(e2b):
    async def scenario():
        sbx = await AsyncSandbox.create(envs={"FROM_CREATE": "create-value"}, timeout=60, metadata={"case": "commands"})
        try:
            seen: list[str] = []
            handle = await sbx.commands.run(
                "echo ready; for i in $(seq 400); do test -e /tmp/go && break; sleep 0.05; done; cat /tmp/go",
                background=True, on_stdout=seen.append,
            )
            await until(lambda: "ready\n" in seen)  # streamed while the command still waits
            await sbx.files.write("/tmp/go", "went\n")
            result = await handle.wait()
            assert (result.exit_code, result.stdout) == (0, "ready\nwent\n")

            result = await sbx.commands.run('echo "$FROM_CREATE $FROM_RUN $USER $HOME $(id -u) $PWD"',
                                            envs={"FROM_RUN": "run-value"})
            assert result.stdout == "create-value run-value user /home/user 1000 /home/user\n"
            result = await sbx.commands.run('echo "$USER $HOME $(id -u)"; pwd', user="root", cwd="/tmp")
            assert result.stdout == "root /root 0\n/tmp\n"

            with pytest.raises(CommandExitException) as failed:
                await sbx.commands.run("echo partial; echo boom >&2; exit 3")
            assert (failed.value.exit_code, failed.value.stdout, failed.value.stderr) == (3, "partial\n", "boom\n")

            started = time.monotonic()
            with pytest.raises(TimeoutException):
                await sbx.commands.run("echo started; exec sleep 30", timeout=1)
            assert time.monotonic() - started < 10
            await until(lambda: not e2b.processes())  # envd killed it at the deadline (no gateway here)
            await until(lambda: no_commands(sbx))

            handle = await sbx.commands.run("sleep 30", background=True, timeout=0)
            assert await sbx.commands.kill(handle.pid) is True
            with pytest.raises(CommandExitException) as killed:
                await handle.wait()
            assert killed.value.exit_code == -1 and killed.value.error == "signal: killed"
        finally:
            assert await sbx.kill() is True

    run(scenario())


def test_files_home_and_tmp_are_private_to_each_sandbox_under_bubblewrap(e2b):
    async def scenario():
        one, two = await asyncio.gather(AsyncSandbox.create(timeout=60), AsyncSandbox.create(timeout=60))
        try:
            info = await one.files.write("/home/user/notes/hello.txt", "written by files.write\n")
            assert info.path == "/home/user/notes/hello.txt"
            result = await one.commands.run("cat ~/notes/hello.txt; cat notes/hello.txt; echo mine > /tmp/mark")
            assert result.stdout == "written by files.write\n" * 2
            assert await one.files.read("/tmp/mark") == "mine\n"
            assert await one.files.read("notes/hello.txt") == "written by files.write\n"
            with pytest.raises(CommandExitException):
                await two.commands.run("test -e ~/notes/hello.txt || test -e /tmp/mark")
            isolation = await one.commands.run(f"hostname; ls -A {Path(__file__).resolve().parents[1]}; echo $$")
            lines = isolation.stdout.split()
            assert lines[0] == "agentbox"  # the local backend's bubblewrap sandbox
            assert set(lines[1:-1]) == {".venv", "node_modules", "agentbox"}  # the checkout (and .env) hidden
            assert int(lines[-1]) < 10  # a pid namespace of its own
        finally:
            assert await one.kill() is True
            assert await two.kill() is True

    run(scenario())


def test_list_by_metadata_pages_through_everything(e2b):
    tag = uuid.uuid4().hex[:12]

    async def collect(limit: int | None = None) -> list[list[str]]:
        pager = AsyncSandbox.list(query=SandboxQuery(metadata={"run": tag, "app": "agent box/ü"}), limit=limit)
        pages = []
        while pager.has_next:
            pages.append([s.sandbox_id for s in await pager.next_items()])
        return pages

    async def scenario():
        mine = [await AsyncSandbox.create(metadata={"run": tag, "app": "agent box/ü"}, timeout=60) for _ in range(3)]
        other = await AsyncSandbox.create(metadata={"run": "someone-else", "app": "agent box/ü"}, timeout=60)
        try:
            ids = [s.sandbox_id for s in mine]
            pages = await collect()
            assert [len(p) for p in pages] == [2, 1]  # page_size=2
            assert sorted(sum(pages, [])) == sorted(ids)
            lists = [r for r in e2b.requests if (r.method, r.path) == ("GET", "/v2/sandboxes")]
            assert "nextToken" not in lists[-2].query and "nextToken" in lists[-1].query

            e2b.inject("list_pages", page_size=1)
            assert [len(p) for p in await collect(limit=100)] == [1, 1, 1]  # the server's page size wins
        finally:
            for sbx in [*mine, other]:
                assert await AsyncSandbox.kill(sbx.sandbox_id) is True
        assert await collect() == [[]]

    run(scenario())


@pytest.mark.parametrize(("status", "exception"), [
    (500, SandboxException),
    (429, RateLimitException),
    (401, AuthenticationException),
])
def test_a_failing_create_raises_what_the_sdk_raises(e2b, status, exception):
    fault = e2b.inject("create_error", status=status, message=f"injected {status}")
    before = len(e2b.requests)
    with pytest.raises(exception, match=f"injected {status}") as raised:
        run(AsyncSandbox.create(timeout=60))
    if status == 500:
        assert raised.value.status_code == 500
    assert fault.hits == 1
    assert [r.status for r in e2b.requests[before:]] == [status]  # Should-Retry: false: not retried
    assert e2b.alive() == {}


def test_rate_limited_create_is_retried_with_the_same_idempotency_key(e2b):
    e2b.inject("create_error", status=429, should_retry=None)  # no header: the SDK retries 429 by itself
    key = f"retry-{uuid.uuid4().hex}"

    async def scenario():
        sbx = await AsyncSandbox.create(timeout=60, idempotency_key=key)
        assert await sbx.kill() is True

    run(scenario())
    creates = [r for r in e2b.requests if (r.method, r.path) == ("POST", "/v2/sandboxes")][-2:]
    assert [r.status for r in creates] == [429, 201]
    assert {r.headers["idempotency-key"] for r in creates} == {key}


def test_a_wrong_api_key_is_refused(e2b):
    with pytest.raises(AuthenticationException, match="Invalid API key"):
        run(AsyncSandbox.create(timeout=60, api_key="e2b_not_the_standin_key"))


def test_a_gateway_that_fails_to_start_fails_create_and_the_sdk_kills_the_sandbox(e2b):
    fault = e2b.inject("gateway_error", message="gateway: unknown MCP server 'nope'")
    with pytest.raises(SandboxException, match="Failed to start MCP gateway: gateway: unknown MCP server 'nope'"):
        run(AsyncSandbox.create(mcp={"echo": {}}, metadata={"case": "bad-gateway"}, timeout=60))
    assert fault.hits == 1
    [record] = [r for r in e2b.sandboxes().values() if r.metadata == {"case": "bad-gateway"}]
    assert record.state == "killed"  # by the SDK, after mcp-gateway exited 1


def test_a_hanging_command_times_out_and_is_killed(e2b):
    e2b.inject("hang", match="never-ends")

    async def scenario():
        sbx = await AsyncSandbox.create(timeout=60)
        try:
            with pytest.raises(TimeoutException):
                await sbx.commands.run("echo never-ends", timeout=1)
            await until(lambda: not e2b.processes())
            assert (await sbx.commands.run("echo fine")).stdout == "fine\n"  # other commands are not affected
            assert [c.args[-1] for c in e2b.commands if c.sandbox_id == sbx.sandbox_id] == ["echo never-ends",
                                                                                             "echo fine"]
        finally:
            assert await sbx.kill() is True

    run(scenario())


def test_a_sandbox_that_vanishes_mid_run(e2b):
    e2b.inject("vanish", match="long-job")

    async def scenario():
        sbx = await AsyncSandbox.create(timeout=60)
        with pytest.raises(SandboxNotRunningException):
            await sbx.commands.run("echo long-job; sleep 30", timeout=20)
        assert e2b.sandboxes()[sbx.sandbox_id].state == "vanished"
        with pytest.raises(SandboxNotRunningException, match="was not found"):
            await sbx.commands.run("true")
        with pytest.raises(SandboxNotRunningException):
            await sbx.files.write("/home/user/x", "y")
        with pytest.raises(SandboxNotFoundException):
            await sbx.get_info()
        assert await sbx.kill() is False

        other = await AsyncSandbox.create(timeout=60)  # vanishing on demand, between two calls
        assert e2b.vanish(other.sandbox_id) is True
        with pytest.raises(SandboxNotRunningException):
            await other.commands.run("true")
        assert e2b.vanish(other.sandbox_id) is False

    run(scenario())


def test_a_sandbox_past_its_timeout_is_killed_server_side(e2b):
    async def scenario():
        sbx = await AsyncSandbox.create(timeout=1, metadata={"case": "ttl"})
        await sbx.commands.run("sleep 300", background=True, timeout=0)
        assert e2b.processes()
        await until(lambda: not e2b.alive(), timeout=15)
        assert e2b.sandboxes()[sbx.sandbox_id].state == "timed_out"
        await until(lambda: not e2b.processes())
        with pytest.raises(SandboxNotFoundException):
            await sbx.get_info()
        assert await sbx.kill() is False

    run(scenario())


def test_stopping_the_standin_kills_what_still_runs(monkeypatch):
    stand_in = E2BStandIn()
    with stand_in:
        for name in E2B_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in stand_in.env.items():
            monkeypatch.setenv(name, value)

        async def leave_running() -> str:
            sbx = await AsyncSandbox.create(timeout=300)
            await sbx.commands.run("sleep 300", background=True, timeout=0)
            return sbx.sandbox_id

        sandbox_id = run(leave_running())
        assert stand_in.processes()
    assert stand_in.wait_for_no_processes() == {}
    assert stand_in.sandboxes()[sandbox_id].state == "stopped"
