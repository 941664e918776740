"""Tasks that create and destroy sandboxes, and the global limit on how many run at once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import task_run
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from agentbox.errors import ConfigError
from agentbox.sandboxes import SandboxHandle, get_backend
from agentbox.session import StandIns, catalog_file_for, preflight, resolve_config, sandbox_envs
from agentbox.settings import Settings, load_settings
from tasks.retry import retry_if_retryable

DEFAULT_SANDBOX_SLOTS = 5  # sandboxes at once, when nobody said otherwise (deployments.bootstrap --sandboxes N)


@task(
    name="create-sandbox",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.3,
    retry_condition_fn=retry_if_retryable,
    timeout_seconds=300,
    cache_policy=NO_CACHE,
)
async def create_sandbox(
    mcp: dict[str, Any], metadata: dict[str, str], backend: str | None = None, stand_ins: StandIns | None = None
) -> SandboxHandle:
    """Start a sandbox whose gateway serves `mcp` (references resolved here, so Prefect never sees a secret)."""
    settings = load_settings()
    name = backend or settings.backend
    preflight(settings, mcp, name, stand_ins)
    sandboxes = get_backend(settings, name, catalog_file_for(settings, stand_ins))
    handle = await sandboxes.create(
        mcp_config=resolve_config(settings, mcp, stand_ins),
        envs=sandbox_envs(settings, stand_ins),
        ttl_seconds=settings.sandbox_ttl_seconds,
        metadata=metadata,
        idempotency_key=f"agentbox-{task_run.id}" if task_run.id else None,  # same across this task's retries
    )
    get_run_logger().info("Sandbox %s created (%s); gateway at %s", handle.id, handle.backend, handle.gateway_url)
    return handle


@task(name="kill-sandbox", retries=2, retry_delay_seconds=1, timeout_seconds=60, cache_policy=NO_CACHE)
async def kill_sandbox(handle: SandboxHandle) -> bool:
    """Destroy the sandbox; killing one already gone is a success."""
    return await kill_now(handle)


async def kill_now(handle: SandboxHandle) -> bool:
    """The plain kill, also used when the task machinery itself is failing."""
    return await get_backend(load_settings(), handle.backend).kill(handle.id)


@task(name="kill-run-sandboxes", retries=2, retry_delay_seconds=1, timeout_seconds=120, cache_policy=NO_CACHE)
async def kill_sandboxes_of_run(backend: str, metadata: dict[str, str]) -> list[str]:
    """Kill every sandbox whose metadata matches (the run's id): cleans up after a create that died half-way."""
    return await get_backend(load_settings(), backend).kill_matching(metadata)


@asynccontextmanager
async def sandbox_slot(settings: Settings) -> AsyncIterator[None]:
    """Hold one slot of the global sandbox limit for a whole session, so no more sandboxes run at once than E2B
    (or the machine) allows, across every worker. Strict: a missing limit is an error, never "unlimited"."""
    name = settings.sandbox_concurrency_limit
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
                "Create it with `python -m deployments.bootstrap`, or set SANDBOX_CONCURRENCY_LIMIT= to run without one.",
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
