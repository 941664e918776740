"""Tasks that register Claude Code against the gateway and run the prompt headless: Prefect's side of
agentbox/registration.py and agentbox/conversation.py (the plan's settings, the run's logger and approver, the
daily budget's record)."""

from __future__ import annotations

from prefect import get_run_logger

from agentbox.claude import GATEWAY_NAME, AgentRun
from agentbox.conversation import Conversation
from agentbox.plan import SessionPlan, Timeouts
from agentbox.registration import register_claude_with_gateway
from agentbox.sandboxes import SandboxBackend, SandboxHandle
from agentbox.settings import Settings
from agentbox.telemetry.spans import annotate_run, record_usage, task_telemetry, usage_attributes
from tasks.agent_runs import load_journal
from tasks.approvals import current_approver
from tasks.budget import record_spend
from tasks.defaults import session_task

# `claude mcp add && claude mcp get` (twice the registration timeout), a lone `mcp get` after an add that found the
# server there already, and a margin.
REGISTER_TASK_TIMEOUT = 3 * Timeouts.model_fields["registration"].default + 30


async def sandbox_and_secrets(plan: SessionPlan, handle: SandboxHandle,
                              settings: Settings) -> tuple[SandboxBackend, list[str]]:
    """The plan's sandbox backend, and every secret Claude's output may hold: the plan's, and the gateway's token."""
    sandboxes = plan.sandboxes(settings)
    return sandboxes, [*plan.secret_values(settings), await sandboxes.gateway_token(handle)]


@session_task(
    "register-claude",
    task_run_name="register-claude {handle.id}",
    retries=1,
    retry_delay_seconds=2,
    timeout_seconds=REGISTER_TASK_TIMEOUT,
)
async def register_claude(plan: SessionPlan, handle: SandboxHandle) -> str:
    """`claude mcp add --transport http --scope user ...`, then `claude mcp get` must say Connected (one command);
    a retry finds the server added and checks it alone."""
    annotate_run(plan.metadata, handle.id)
    sandboxes, secrets = await sandbox_and_secrets(plan, handle, plan.read_settings())
    status = await register_claude_with_gateway(sandboxes, handle, timeout=plan.timeouts.registration,
                                                secrets=secrets)
    get_run_logger().info("Claude connected to the gateway as '%s' (%s)", GATEWAY_NAME, status)
    return status


# Never retried: the agent's actions are not idempotent. Its timeout is the plan's, on the command.
@session_task("run-prompt", task_run_name="run-prompt {handle.id}", retries=0)
async def run_prompt(plan: SessionPlan, handle: SandboxHandle) -> AgentRun:
    """Run Claude Code on the plan's prompt (see `Conversation`), logging to the run's log, asking this run's
    approver and journaling its writes; what it spent is recorded for the daily budget however it ended (not for a
    rehearsal). What it did is returned, for `check_run` to judge after the run is recorded."""
    annotate_run(plan.metadata, handle.id)
    settings = plan.read_settings()
    sandboxes, secrets = await sandbox_and_secrets(plan, handle, settings)
    telemetry = task_telemetry(settings, plan.metadata, handle.id)  # Claude Code's spans join this task's
    conversation = Conversation(
        sandboxes, handle, plan.prompt, options=plan.claude, policy=plan.policy, approver=current_approver(plan),
        claude_timeout=plan.timeouts.claude, approval_timeout=plan.timeouts.approvals, servers=plan.expected_tools,
        secrets=secrets, log=get_run_logger().log, journal=await load_journal(plan, secrets),
        envs=sandboxes.claude_telemetry_env(telemetry) if telemetry else None,
    )
    try:
        return await conversation.run()
    finally:
        run = conversation.agent_run
        record_usage(run.spent_usd, run.tokens, usage_attributes(plan.metadata, plan.rehearsal))
        if not plan.rehearsal:
            await record_spend(conversation.agent_run.spent_usd)
