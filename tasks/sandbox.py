"""Tasks that create and destroy a session's sandbox, and the global limit on how many run at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import httpx

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run, task_run
from prefect.tasks import exponential_backoff

from agentbox.errors import ConfigError
from agentbox.plan import SessionPlan
from agentbox.sandboxes import SandboxHandle
from agentbox.settings import Settings
from agentbox.telemetry.spans import annotate_run, step_span, task_telemetry
from tasks.compat import acquire_concurrency_slot
from tasks.defaults import session_task
from tasks.lease import SLOT_LEASE_SECONDS

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
    sandboxes = plan.sandboxes(settings)
    if not plan.policy.secret_patterns and not sandboxes.gateway_scans_by_policy:
        get_run_logger().warning("The policy turns the gateway's credential patterns off, but the %s backend's "
                                 "gateway scans for them whatever a run asks: calls carrying one are refused.",
                                 plan.backend)
    handle = await sandboxes.create(
        mcp_config=plan.resolved_mcp(settings),
        envs=plan.sandbox_envs(settings),
        ttl_seconds=plan.ttl_seconds,
        metadata=plan.metadata,
        idempotency_key=f"agentbox-{task_run.id}" if task_run.id else None,  # same across this task's retries
        tools=plan.policy.tools,
        network=plan.network(),
        lease_seconds=plan.lease_seconds,  # renewed by the run's SessionLease (tasks/lease.py) while it lives
        writes=plan.policy.writes,
        secret_patterns=plan.policy.secret_patterns,
        telemetry=task_telemetry(settings, plan.metadata),  # its gateway's and egress proxy's spans join this one
    )
    annotate_run(plan.metadata, handle.id)
    get_run_logger().info("Sandbox %s created (%s); gateway at %s", handle.id, handle.backend, handle.gateway_url)
    return handle


@session_task("kill-sandbox", task_run_name="kill-sandbox {handle.id}", retries=2, retry_delay_seconds=1,
              timeout_seconds=60)
async def kill_sandbox(plan: SessionPlan, handle: SandboxHandle) -> bool:
    """Destroy the sandbox; killing one already gone is a success. `kill_sandbox.fn` is the same kill without the
    task machinery, for when that machinery itself is failing."""
    annotate_run(plan.metadata, handle.id)
    return await plan.sandboxes(plan.read_settings()).kill(handle.id)


@session_task("kill-run-sandboxes", task_run_name="kill-run-sandboxes {plan.backend}", retries=2,
              retry_delay_seconds=1, timeout_seconds=120)
async def kill_run_sandboxes(plan: SessionPlan) -> list[str]:
    """Kill every sandbox labelled with this run: cleans up after a create that died half-way."""
    return await plan.sandboxes(plan.read_settings()).kill_matching(plan.metadata)


@asynccontextmanager
async def sandbox_slot(plan: SessionPlan) -> AsyncIterator[str | None]:
    """Hold one slot of the global sandbox limit for a whole session, so no more sandboxes run at once than E2B
    (or the machine) allows, across every worker. Strict: a missing limit is an error, never "unlimited".

    Yields the slot's lease id (None without a limit), which the session's `SessionLease` (tasks/lease.py) renews.
    The session labels its sandbox with it, so that when the run dies without releasing it (SIGKILL, OOM), the crash
    hook or the reaper that kills the sandbox frees the slot in seconds; left alone, the server frees it when the
    lease ends (`SLOT_LEASE_SECONDS` after its last renewal). Prefect's public `concurrency()` keeps the lease id to
    itself, hence its parts (tasks/compat.py)."""
    name = plan.concurrency_limit
    if not name:
        yield None
        return
    started = time.monotonic()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id) if flow_run.id else None
    try:
        with step_span("sandbox-slot", {"agentbox.concurrency_limit": name}):  # the wait for a slot
            lease_id = await acquire_concurrency_slot(name, SLOT_LEASE_SECONDS, holder)
    except ConcurrencySlotAcquisitionError:
        raise ConfigError(
            f"The Prefect concurrency limit '{name}' does not exist, so sessions cannot be counted.",
            "Create it with `python -m deployments.bootstrap`, or set SANDBOX_CONCURRENCY_LIMIT= to run without "
            "one.",
        ) from None
    try:
        waited = time.monotonic() - started
        if waited > 1:
            get_run_logger().info("Waited %.1f s for a sandbox slot of limit '%s'", waited, name)
        yield str(lease_id)
    finally:
        await asyncio.shield(release_slot(lease_id))


async def release_slot(lease_id: UUID | str) -> bool:
    """Give a slot's lease back; False when it was already gone (released, or expired). Idempotent."""
    async with get_client() as client:
        try:
            await client.release_concurrency_slots_with_lease(lease_id=UUID(str(lease_id)))
        except (ObjectNotFound, ValueError):
            return False
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return False
            raise
    return True


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
