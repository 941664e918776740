"""The readiness task: wait until the sandbox's gateway serves every expected tool."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from agentbox.gateway.probe import wait_until_ready
from agentbox.sandboxes import SandboxHandle, get_backend
from agentbox.settings import load_settings
from tasks.retry import retry_if_retryable

ATTEMPTS = 4  # each attempt polls for a quarter of GATEWAY_READY_TIMEOUT_SECONDS


@task(
    name="wait-for-gateway",
    retries=ATTEMPTS - 1,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.2,
    retry_condition_fn=retry_if_retryable,  # 401/403 and a failed upstream are final
    cache_policy=NO_CACHE,
)
async def wait_for_gateway(handle: SandboxHandle, expected: dict[str, list[str]]) -> list[str]:
    """Poll MCP initialize + tools/list (from tens of ms, backing off) until every expected server's tools are listed."""
    settings = load_settings()
    token = await get_backend(settings, handle.backend).gateway_token(handle)
    result = await wait_until_ready(
        handle.gateway_url, token, expected, deadline_seconds=settings.gateway_ready_timeout_seconds / ATTEMPTS
    )
    get_run_logger().info(
        "Gateway ready: %d tools from %s after %d probes (%.2f s)",
        len(result.tools), ", ".join(expected) or "no servers", result.attempts, result.seconds,
    )
    return result.tools
