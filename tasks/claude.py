"""Tasks that register Claude Code against the gateway and run the prompt headless."""

from __future__ import annotations

import asyncio

from prefect import get_run_logger

from agentbox.claude import (
    GATEWAY_NAME,
    PROMPT_PATH,
    TOKEN_ENV,
    AgentRun,
    ClaudeOptions,
    InitEvent,
    StreamParser,
    describe,
    mcp_add_command,
    mcp_get_command,
    mcp_get_status,
    prompt_command,
)
from agentbox.errors import ClaudeError, SandboxCommandTimeout, one_line
from agentbox.plan import SessionPlan, Timeouts
from agentbox.sandboxes import SandboxHandle
from agentbox.settings import redact
from tasks.defaults import session_task

# Two `claude mcp` commands of at most `Timeouts.registration` each, and a margin.
REGISTER_TASK_TIMEOUT = 2 * Timeouts.model_fields["registration"].default + 30


@session_task(
    "register-claude",
    task_run_name="register-claude {handle.id}",
    retries=1,
    retry_delay_seconds=2,
    timeout_seconds=REGISTER_TASK_TIMEOUT,
)
async def register_claude(plan: SessionPlan, handle: SandboxHandle) -> str:
    """`claude mcp add --transport http --scope user ...`, then `claude mcp get` must say Connected."""
    settings = plan.read_settings()
    sandboxes = plan.sandboxes(settings)
    token = await sandboxes.gateway_token(handle)
    secrets = [*plan.secret_values(settings), token]
    timeout = plan.timeouts.registration
    inside_token = await sandboxes.claude_gateway_token(handle)
    added = await sandboxes.run(handle, mcp_add_command(handle.internal_gateway_url), envs={TOKEN_ENV: inside_token},
                                timeout=timeout)
    if added.exit_code != 0:
        why = redact(one_line(added.stderr or added.stdout, last=True, empty="no output"), secrets)
        raise ClaudeError(
            f"`claude mcp add` failed with exit code {added.exit_code}: {why}.",
            "Check the Claude Code install in the sandbox.",
        )
    got = await sandboxes.run(handle, mcp_get_command(), timeout=timeout)
    connected, status = mcp_get_status(redact(got.stdout + "\n" + got.stderr, secrets))
    if not connected:
        raise ClaudeError(
            f"Claude Code cannot connect to the MCP gateway ({status}).", "Check the gateway log in the sandbox."
        )
    get_run_logger().info("Claude connected to the gateway as '%s' (%s)", GATEWAY_NAME, status)
    return status


# Never retried: the agent's actions are not idempotent. Its timeout is the plan's, on the command.
@session_task("run-prompt", task_run_name="run-prompt {handle.id}", retries=0)
async def run_prompt(plan: SessionPlan, handle: SandboxHandle) -> AgentRun:
    """Run `claude -p` on the plan's prompt (a file on stdin), logging events as they arrive; fail on any sign that
    the run went wrong: gateway not connected, an error result, max turns, permission denials, timeout."""
    settings = plan.read_settings()
    sandboxes = plan.sandboxes(settings)
    options, timeout_seconds = plan.claude, plan.timeouts.claude
    secrets = [*plan.secret_values(settings), await sandboxes.gateway_token(handle)]
    logger = get_run_logger()
    run, parser = AgentRun(), StreamParser()
    disconnected = asyncio.Event()

    def on_stdout(chunk: str) -> None:
        for event in parser.feed(chunk):
            run.apply(event)
            if line := describe(event):
                logger.info(redact(line, secrets))
            if isinstance(event, InitEvent) and event.mcp_servers.get(GATEWAY_NAME) != "connected":
                disconnected.set()

    await sandboxes.write_file(handle, PROMPT_PATH, plan.prompt)
    command = asyncio.create_task(
        sandboxes.run(handle, prompt_command(options), timeout=timeout_seconds, on_stdout=on_stdout)
    )
    watcher = asyncio.create_task(disconnected.wait())
    try:
        await asyncio.wait({command, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if disconnected.is_set():
            command.cancel()  # the backend kills the process: a toolless run must not go on
            status = run.mcp_servers.get(GATEWAY_NAME, "absent")
            raise ClaudeError(
                f"Claude Code started without the gateway's tools (gateway status: {status}).",
                "Check the gateway and MCP_TIMEOUT; the run was stopped.",
            )
        result = await command
    except SandboxCommandTimeout:
        raise ClaudeError(
            f"Claude Code ran past its {timeout_seconds:g} s timeout and was killed.",
            "Raise CLAUDE_TIMEOUT_SECONDS or simplify the prompt.",
        ) from None
    finally:
        watcher.cancel()
        if not command.done():
            command.cancel()
            await asyncio.gather(command, return_exceptions=True)
    for event in parser.close():
        run.apply(event)
    run.exit_code = result.exit_code
    check_run(run, redact(result.stderr, secrets), options)
    return run


def check_run(run: AgentRun, stderr: str, options: ClaudeOptions) -> None:
    """Raise a ClaudeError saying what went wrong, if anything did."""
    if run.subtype == "error_max_turns":
        raise ClaudeError(
            f"Claude Code hit the turn limit ({options.max_turns}) before finishing.", "Raise CLAUDE_MAX_TURNS."
        )
    if not run.finished:
        raise ClaudeError(
            f"Claude Code exited with code {run.exit_code} without a result: "
            f"{one_line(stderr, last=True, empty='no output')}.",
            "See the run's logs.",
        )
    if run.is_error or run.exit_code:
        raise ClaudeError(
            f"Claude Code reported an error ({run.subtype}): {one_line(run.result)}.", "See the run's logs."
        )
    if GATEWAY_NAME not in run.mcp_servers or run.mcp_servers[GATEWAY_NAME] != "connected":
        raise ClaudeError("Claude Code ran without the gateway's tools.", "Check the gateway.")
    if run.permission_denials:
        denied = ", ".join(sorted(set(run.permission_denials)))
        raise ClaudeError(
            f"Claude Code was denied tools: {denied}.",
            "Allow them with --allowed-tools if they are wanted.",
        )
