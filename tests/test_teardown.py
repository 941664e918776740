"""Teardown on every path: a failure injected at each step leaves no sandbox behind, and the run says why.

Faults are real: a missing bubblewrap, an unusable state directory, an MCP server that never answers or dies at
start, a token the gateway refuses, a gateway killed mid-session, a model API that errors or hangs, a flow timeout.
The faults of Claude and the model run on both backends; those that reach into a local sandbox's gateway run on
local (E2B's own faults are in test_e2b_backend.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
from prefect import flow

from agentbox.claude import AgentRun
from agentbox.errors import (
    ClaudeError,
    ConfigError,
    GatewayAuthError,
    GatewayNotReady,
    GatewayUpstreamError,
    SandboxError,
)
from agentbox.rehearsal.model import ModelScript
from agentbox.rehearsal.stage import rehearsal_stage
from agentbox.settings import load_settings
from flows.agent_session import EXAMPLE_MCP, SessionRequest, agent_session
from flows.planning import plan_this_run
from flows.session import teardown
from tasks.claude import register_claude, run_prompt
from tasks.gateway import wait_for_gateway
from tasks.sandbox import create_sandbox
from tests.support import SANDBOX_ROOT, sandbox_dirs

pytestmark = pytest.mark.usefixtures("prefect_api", "no_leftovers")

ANSWER = [{"text": "done"}]
NOTION = EXAMPLE_MCP


@pytest.fixture
def fault_catalog(tmp_path, monkeypatch):
    """Catalog servers that fail the way real ones do: one never speaks MCP, one dies at start."""
    catalog = tmp_path / "faults.json"
    catalog.write_text(json.dumps({
        "never": {"command": ["sleep", "600"], "tools": ["never_tool"]},
        "broken": {"command": ["sh", "-c", "echo 'cannot start' >&2; exit 3"], "tools": ["broken_tool"]},
    }))
    monkeypatch.setenv("LOCAL_MCP_CATALOG", str(catalog))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-used")
    return catalog


def failure(state) -> BaseException:
    assert state.is_failed() or state.is_crashed() or state.name == "TimedOut", state
    return state.result(raise_on_failure=False)


def gateway_pid(handle_id: str) -> int:
    return int((SANDBOX_ROOT / handle_id / "gateway.pid").read_text())


@flow(name="fault-injection")
async def session_with_fault(fault: str, script: list[dict]) -> AgentRun:
    """The session's steps, with a fault injected between two of them; teardown as in run_session."""
    with rehearsal_stage(ModelScript(script)) as stage:
        plan = plan_this_run(load_settings(), "hello", NOTION, backend="local", stand_ins=stage.stand_ins)
        plan = plan.model_copy(update={"claude": plan.claude.model_copy(update={"max_turns": 3})})
        handle = None
        try:
            handle = await create_sandbox(plan)
            if fault == "wrong-token":
                (SANDBOX_ROOT / handle.id / "token").write_text("not-the-gateway-token")
            await wait_for_gateway(plan, handle)
            if fault == "gateway-dies-before-register":
                os.kill(gateway_pid(handle.id), signal.SIGKILL)
            await register_claude(plan, handle)
            if fault == "gateway-dies-before-prompt":
                os.kill(gateway_pid(handle.id), signal.SIGKILL)
            return await run_prompt(plan, handle)
        finally:
            await teardown(plan, handle)


def test_a_ttl_not_above_the_flows_own_timeout_is_refused_before_any_sandbox(monkeypatch):
    """The TTL is checked against the timeout Prefect really applies to the run, not only the configured one."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-used")
    monkeypatch.setenv("NOTION_INTEGRATION_TOKEN", "ntn-test")
    monkeypatch.setenv("FLOW_TIMEOUT_SECONDS", "600")  # the settings agree with each other...
    monkeypatch.setenv("SANDBOX_TTL_SECONDS", "900")
    longer = agent_session.with_options(timeout_seconds=900)  # ...but this run would outlive its sandbox
    exc = failure(asyncio.run(longer(SessionRequest(prompt="hi", mcp=NOTION), return_state=True)))
    assert isinstance(exc, ConfigError)
    assert str(exc).startswith("SANDBOX_TTL_SECONDS (900) must be larger than the flow run's timeout (900 s)")
    assert len(str(exc).splitlines()) == 1
    assert sandbox_dirs() == []


def test_create_fails_without_bubblewrap(fault_catalog, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nowhere to find bwrap
    state = asyncio.run(agent_session(SessionRequest(prompt="hi", mcp={"never": {}}), return_state=True))
    exc = failure(state)
    assert isinstance(exc, SandboxError)
    assert "bubblewrap (bwrap) is not installed" in str(exc) and "apt-get install bubblewrap" in str(exc)


def test_create_fails_on_an_unusable_state_directory(fault_catalog, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("LOCAL_SANDBOX_ROOT", str(blocker))
    exc = failure(asyncio.run(agent_session(SessionRequest(prompt="hi", mcp={"never": {}}), return_state=True)))
    assert isinstance(exc, SandboxError)
    assert "Cannot create a local sandbox" in str(exc)
    assert blocker.is_file()


def test_gateway_never_ready_fails_after_retries(fault_catalog, monkeypatch):
    monkeypatch.setenv("GATEWAY_READY_TIMEOUT_SECONDS", "2")
    started = time.monotonic()
    exc = failure(asyncio.run(agent_session(SessionRequest(prompt="hi", mcp={"never": {}}), return_state=True)))
    assert isinstance(exc, GatewayNotReady)
    assert "attempts" in str(exc)
    assert time.monotonic() - started > 2  # it did wait, across Prefect's retries


@pytest.mark.parametrize("mcp", [{"broken": {}}, {"broken": {}, "notion": NOTION["notion"]}])
def test_toolless_run_is_refused_when_an_upstream_fails_to_start(fault_catalog, monkeypatch, mcp):
    monkeypatch.setenv("NOTION_INTEGRATION_TOKEN", "ntn-test")
    exc = failure(asyncio.run(agent_session(SessionRequest(prompt="hi", mcp=mcp), return_state=True)))
    assert isinstance(exc, GatewayUpstreamError)
    assert "could not start broken" in str(exc)


def test_wrong_token_fails_at_once_without_retries():
    started = time.monotonic()
    exc = failure(asyncio.run(session_with_fault("wrong-token", ANSWER, return_state=True)))
    assert isinstance(exc, GatewayAuthError)
    assert "401" in str(exc)
    assert "not-the-gateway-token" not in str(exc)
    assert time.monotonic() - started < 60  # no retry loop until the readiness deadline


def test_register_fails_when_the_gateway_is_gone():
    exc = failure(asyncio.run(session_with_fault("gateway-dies-before-register", ANSWER, return_state=True)))
    assert isinstance(exc, ClaudeError)
    assert "cannot connect to the MCP gateway" in str(exc)


def test_run_stops_when_claude_starts_without_the_gateway():
    exc = failure(asyncio.run(session_with_fault("gateway-dies-before-prompt", ANSWER, return_state=True)))
    assert isinstance(exc, ClaudeError)
    assert "without the gateway" in str(exc)


# Faults of Claude and the model: the same on both backends.


def session(world, script: list[dict], **options):
    world.play(script)
    return asyncio.run(agent_session.with_options(**options)(SessionRequest(prompt="hello", mcp=NOTION), return_state=True))


def test_claude_exiting_non_zero_fails_the_run(world):
    exc = failure(session(world, [{"error": {"status": 500, "message": "model exploded", "should_retry": False}}]))
    assert isinstance(exc, ClaudeError)
    assert "model exploded" in str(exc) or "exited with code" in str(exc)


def test_claude_hanging_past_its_timeout_is_killed(world, monkeypatch):
    monkeypatch.setenv("CLAUDE_TIMEOUT_SECONDS", "4")
    exc = failure(session(world, [{"hang_seconds": 300}]))
    assert isinstance(exc, ClaudeError)
    assert "ran past its 4 s timeout" in str(exc)


def test_flow_timeout_tears_the_sandbox_down(world):
    state = session(world, [{"hang_seconds": 300}], timeout_seconds=12)
    assert state.name == "TimedOut", state


def test_max_turns_fails_the_run(world, monkeypatch):
    monkeypatch.setenv("CLAUDE_MAX_TURNS", "3")
    loop = [{"tool": "API-post-search", "input": {"query": ""}}] * 5 + ANSWER
    exc = failure(session(world, loop))
    assert isinstance(exc, ClaudeError)
    assert "turn limit" in str(exc)
