"""Any catalog MCP servers + any prompt: Claude Code in a fresh sandbox, always torn down.

    python -m flows.agent_session --prompt "..." --mcp '{"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}}'

From Python or the Prefect API: `agent_session(SessionRequest(prompt=..., mcp=...))`, parameters
`{"request": {"prompt": "...", "mcp": {...}}}`. Secrets in the MCP config are `${NAME}` references, resolved inside the
create task, so Prefect stores only names.
"""

# No `from __future__ import annotations`: a runner loads this file by path, and Prefect must resolve the
# parameter models' annotations to validate a deployment run's parameters.

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel, ConfigDict, Field

from agentbox.claude import AgentRun, ClaudeOptions
from agentbox.gateway.catalog import read_config_argument
from agentbox.sandboxes import SandboxHandle
from agentbox.sandboxes.base import APP_LABEL, APP_LABEL_KEY
from agentbox.session import StandIns, expected_server_tools, preflight
from agentbox.settings import Settings, load_settings, redact
from flows import cli, report
from flows.janitor import kill_sandboxes_hook
from tasks.claude import register_claude, run_prompt
from tasks.gateway import wait_for_gateway
from tasks.sandbox import create_sandbox, kill_now, kill_sandbox, kill_sandboxes_of_run, sandbox_slot

DEFAULT_FLOW_TIMEOUT = Settings.model_fields["flow_timeout_seconds"].default
Backend = Literal["local", "e2b"]
EXAMPLE_MCP = {"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}}


class SessionRequest(BaseModel):
    """What to run and with which tools: the form the Prefect UI shows for a run. No secrets: `${NAME}` references."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What Claude Code should do.")
    mcp: dict[str, dict[str, str]] = Field(
        description="MCP servers the gateway serves: catalog key -> its settings, secrets as ${NAME} references "
        "to the worker's environment.",
        examples=[EXAMPLE_MCP],
    )
    allowed_tools: list[str] | None = Field(None, description="Tools Claude may use (default: all the gateway's).")
    bypass_permissions: bool = Field(False, description="Let Claude use every tool without asking.")


class SessionResult(BaseModel):
    """What one session did: where it ran, how long each step took, and the agent's run. No secrets."""

    rehearsal: bool = False
    backend: str
    sandbox_id: str = ""
    gateway_url: str = ""
    tools: int = 0
    steps: dict[str, float] = Field(default_factory=dict, description="Seconds per step.")
    run: AgentRun = Field(default_factory=AgentRun)


def session_metadata() -> dict[str, str]:
    """Labels that let hooks and the reaper find this run's sandboxes."""
    metadata = {APP_LABEL_KEY: APP_LABEL, "prefect_flow_run_id": str(flow_run.id or "none")}
    if flow_run.flow_name:
        metadata["prefect_flow"] = str(flow_run.flow_name)
    if deployment.name:
        metadata["prefect_deployment"] = str(deployment.name)
    return metadata


async def run_session(
    prompt: str,
    mcp: dict[str, Any],
    options: ClaudeOptions,
    result: SessionResult,
    stand_ins: StandIns | None = None,
) -> SessionResult:
    """Create → wait for the gateway → register Claude → run the prompt, and kill the sandbox on every path; all
    under one slot of the global sandbox limit.

    `result` is filled as the session goes, so a failure still reports the steps that ran."""
    settings = load_settings()
    name = result.backend
    preflight(settings, mcp, name, stand_ins)  # nothing is created, or paid for, before this passes
    get_run_logger().info("%sBackend: %s", "REHEARSAL: " if stand_ins else "", name)
    metadata = session_metadata()
    handle: SandboxHandle | None = None
    clock = time.monotonic()

    def step(label: str) -> None:
        nonlocal clock
        result.steps[label] = round(time.monotonic() - clock, 3)
        clock = time.monotonic()

    async with sandbox_slot(settings):  # held until the sandbox is gone
        failed = True
        try:
            handle = await create_sandbox(mcp, metadata, name, stand_ins)
            result.sandbox_id, result.gateway_url = handle.id, handle.gateway_url
            step("create")
            result.tools = len(await wait_for_gateway(handle, expected_server_tools(settings, mcp, stand_ins)))
            step("gateway_ready")
            await register_claude(handle)
            step("register")
            result.run = await run_prompt(handle, prompt, options, settings.claude_timeout_seconds)
            step("prompt")
            failed = False
        finally:
            clock = time.monotonic()
            # When the session failed, its own error is the one to report: a teardown failure is only logged.
            await teardown(handle, name, metadata, raise_errors=not failed)
            step("kill")
    return result


async def teardown(handle: SandboxHandle | None, backend: str, metadata: dict[str, str], raise_errors: bool = True) -> None:
    """Kill the session's sandbox; without a handle (create died half-way) kill whatever carries the run's labels.

    If the kill task fails (the task machinery itself, a cancelled run, an API outage), the plain kill runs.
    When the session already failed, a teardown failure is logged rather than raised, so it cannot hide the cause.
    """
    try:
        try:
            if handle:
                await asyncio.shield(kill_sandbox(handle))
            else:
                await asyncio.shield(kill_sandboxes_of_run(backend, metadata))
        except BaseException:
            if handle:
                await asyncio.shield(kill_now(handle))
            else:
                raise
    except BaseException as exc:
        if raise_errors:
            raise
        get_run_logger().error("Teardown failed (%s: %s); the sandbox's TTL will end it.", type(exc).__name__, exc)


def run_name() -> str:
    """`agent-session notion+githubOfficial`: the run list says which servers each session had."""
    request = flow_run.parameters.get("request")
    mcp = request.mcp if isinstance(request, SessionRequest) else (request or {}).get("mcp") or {}
    return f"agent-session {'+'.join(mcp) or 'no servers'}"


@flow(
    name="agent-session",
    flow_run_name=run_name,
    timeout_seconds=DEFAULT_FLOW_TIMEOUT,
    on_crashed=[kill_sandboxes_hook],
    on_cancellation=[kill_sandboxes_hook],
)
async def agent_session(request: SessionRequest, backend: Backend | None = None) -> SessionResult:
    """Run a prompt with Claude Code in a sandbox whose gateway serves the requested MCP servers.

    Args:
        request: The prompt, the MCP servers and Claude's permissions.
        backend: Where the sandbox runs: e2b or local (default: SANDBOX_BACKEND, else e2b when E2B_API_KEY is set).
    """
    settings = load_settings()
    options = claude_options(settings, request.allowed_tools, request.bypass_permissions)
    result = SessionResult(backend=backend or settings.backend)
    try:
        await run_session(request.prompt, request.mcp, options, result)
    except BaseException as exc:
        await report.session_artifact("agent-session", result, error=redact(str(exc), settings.secret_values()))
        raise
    await report.session_artifact("agent-session", result)
    return result


def claude_options(settings: Settings, allowed_tools: list[str] | None, bypass_permissions: bool) -> ClaudeOptions:
    options = ClaudeOptions(
        max_turns=settings.claude_max_turns, model=settings.claude_model, bypass_permissions=bypass_permissions
    )
    if allowed_tools:
        options = options.model_copy(update={"allowed_tools": tuple(allowed_tools)})
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.agent_session", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--prompt-file", type=Path, help="a file holding the prompt")
    parser.add_argument("--mcp", required=True, help="MCP config as JSON or @file; secrets as ${NAME} references")
    parser.add_argument("--allowed-tools", nargs="*", default=None, help="tools Claude may use (default: the gateway's)")
    parser.add_argument("--bypass-permissions", action="store_true", help="let Claude use every tool without asking")
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)

    def start() -> SessionResult:
        prompt = args.prompt if args.prompt is not None else cli.read_text(args.prompt_file, "--prompt-file")
        mcp = read_config_argument(args.mcp, "--mcp")
        settings = load_settings()
        preflight(settings, mcp, args.backend or settings.backend)  # fail before Prefect starts
        request = cli.build(SessionRequest, prompt=prompt, mcp=mcp, allowed_tools=args.allowed_tools,
                            bypass_permissions=args.bypass_permissions)
        run = agent_session.with_options(timeout_seconds=settings.flow_timeout_seconds)
        return cli.run_flow(lambda: run(request, args.backend))

    return cli.run(start, args, human=report.session_lines)


if __name__ == "__main__":
    raise SystemExit(main())
