"""Tasks that create and destroy a session's sandbox, and the global limit on how many run at once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from agentbox.errors import ConfigError
from agentbox.plan import SessionPlan
from agentbox.sandboxes import SandboxHandle
from agentbox.settings import Settings
from tasks.defaults import session_task

DEFAULT_SANDBOX_SLOTS = 5  # sandboxes at once, when nobody said otherwise (deployments.bootstrap --sandboxes N)


@session_task(
    "create-sandbox",
    task_run_name="create-sandbox {plan.backend}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.3,
    timeout_seconds=300,
)
async def create_sandbox(plan: SessionPlan) -> SandboxHandle:
    """Start a sandbox whose gateway serves the plan's MCP servers (references resolved here, so Prefect never sees
    a secret)."""
    settings = plan.read_settings()
    handle = await plan.sandboxes(settings).create(
        mcp_config=plan.resolved_mcp(settings),
        envs=plan.sandbox_envs(settings),
        ttl_seconds=plan.ttl_seconds,
        metadata=plan.metadata,
        idempotency_key=f"agentbox-{task_run.id}" if task_run.id else None,  # same across this task's retries
        tools=plan.policy.tools,
        network=plan.network(),
    )
    get_run_logger().info("Sandbox %s created (%s); gateway at %s", handle.id, handle.backend, handle.gateway_url)
    return handle


@session_task("kill-sandbox", task_run_name="kill-sandbox {handle.id}", retries=2, retry_delay_seconds=1,
              timeout_seconds=60)
async def kill_sandbox(plan: SessionPlan, handle: SandboxHandle) -> bool:
    """Destroy the sandbox; killing one already gone is a success. `kill_sandbox.fn` is the same kill without the
    task machinery, for when that machinery itself is failing."""
    return await plan.sandboxes(plan.read_settings()).kill(handle.id)


@session_task("kill-run-sandboxes", task_run_name="kill-run-sandboxes {plan.backend}", retries=2,
              retry_delay_seconds=1, timeout_seconds=120)
async def kill_run_sandboxes(plan: SessionPlan) -> list[str]:
    """Kill every sandbox labelled with this run: cleans up after a create that died half-way."""
    return await plan.sandboxes(plan.read_settings()).kill_matching(plan.metadata)


@asynccontextmanager
async def sandbox_slot(plan: SessionPlan) -> AsyncIterator[None]:
    """Hold one slot of the global sandbox limit for a whole session, so no more sandboxes run at once than E2B
    (or the machine) allows, across every worker. Strict: a missing limit is an error, never "unlimited"."""
    name = plan.concurrency_limit
    if not name:
        yield
        return
    started = time.monotonic()
    async with AsyncExitStack() as held:
        try:
            await held.enter_async_context(
                concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False)
            )
        except ConcurrencySlotAcquisitionError:
            raise ConfigError(
                f"The Prefect concurrency limit '{name}' does not exist, so sessions cannot be counted.",
                "Create it with `python -m deployments.bootstrap`, or set SANDBOX_CONCURRENCY_LIMIT= to run without "
                "one.",
            ) from None
        waited = time.monotonic() - started
        if waited > 1:
            get_run_logger().info("Waited %.1f s for a sandbox slot of limit '%s'", waited, name)
        yield


async def ensure_sandbox_limit(settings: Settings, slots: int = DEFAULT_SANDBOX_SLOTS) -> None:
    """Create the sandbox limit with `slots` when it is missing (for Prefect's temporary server, which nobody
    bootstraps; deployments.bootstrap sets the size on a real one)."""
    name = settings.sandbox_concurrency_limit
    if not name:
        return
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
