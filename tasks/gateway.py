"""The readiness task: wait until the sandbox's gateway serves every expected tool."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.tasks import exponential_backoff

from agentbox.gateway.probe import wait_until_ready
from agentbox.plan import SessionPlan
from agentbox.policy import check_tools_served
from agentbox.sandboxes import SandboxHandle
from agentbox.telemetry.spans import annotate_run
from tasks.defaults import session_task

ATTEMPTS = 4  # each attempt polls for a quarter of the plan's gateway-ready timeout


@session_task(
    "wait-for-gateway",
    task_run_name="wait-for-gateway {handle.id}",
    retries=ATTEMPTS - 1,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.2,  # 401/403 and a failed upstream are final: our errors say so
)
async def wait_for_gateway(plan: SessionPlan, handle: SandboxHandle) -> list[str]:
    """Poll MCP initialize + tools/list (every 20 ms) until every expected server's tools are listed; each attempt
    of the task polls for a quarter of the plan's gateway-ready timeout."""
    annotate_run(plan.metadata, handle.id)
    token = await plan.sandboxes(plan.read_settings()).gateway_token(handle)
    result = await wait_until_ready(
        handle.gateway_url, token, plan.expected_tools, deadline_seconds=plan.timeouts.gateway_ready / ATTEMPTS
    )
    get_run_logger().info(
        "Gateway ready: %d tools from %s after %d probes (%.2f s)",
        len(result.tools), ", ".join(plan.expected_tools) or "no servers", result.attempts, result.seconds,
    )
    check_tools_served(plan.policy, result.tools)
    return result.tools


@session_task("read-gateway-calls", task_run_name="read-gateway-calls {handle.id}", retries=1, timeout_seconds=30)
async def read_gateway_calls(plan: SessionPlan, handle: SandboxHandle) -> list[dict] | None:
    """The gateway's call log (argument names and sizes, outcomes), or None where the backend's gateway keeps none
    that can be read."""
    return await plan.sandboxes(plan.read_settings()).gateway_calls(handle)


@session_task("read-egress-log", task_run_name="read-egress-log {handle.id}", retries=1, timeout_seconds=30)
async def read_egress_log(plan: SessionPlan, handle: SandboxHandle) -> list[dict] | None:
    """The egress proxy's decisions (hosts, ports, allowed or blocked), or None where the backend keeps none that can
    be read."""
    return await plan.sandboxes(plan.read_settings()).egress_log(handle)
