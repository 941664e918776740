"""Teardown that does not depend on the flow's own `finally`: a hook that kills a crashed or cancelled run's sandboxes.

Prefect runs `on_crashed` and `on_cancellation` hooks with only `(flow, flow_run, state)`, possibly in another
process (the runner), so the hook finds the run's sandboxes by the `prefect_flow_run_id` label every sandbox carries,
on every backend this process can reach, and frees the sandbox limit's slot each one held. After a normal cancel
both `finally` and the hook run: killing and freeing are idempotent.
"""

from __future__ import annotations

import logging

from prefect import Flow, State
from prefect.client.schemas.objects import FlowRun

from agentbox.sandboxes import reachable_backends
from agentbox.sandboxes.base import APP_LABEL, APP_LABEL_KEY, SLOT_LEASE_LABEL_KEY, SandboxBackend, SandboxInfo
from agentbox.settings import load_settings
from tasks.sandbox import release_slot

log = logging.getLogger("prefect.agentbox.janitor")  # under "prefect", so a runner's console shows it


async def end_sandbox(sandboxes: SandboxBackend, info: SandboxInfo) -> bool:
    """Kill a sandbox a run left behind and give back the slot of the sandbox limit it held (by the lease on its
    label): the slot is free now, not when its lease would have run out. True if the sandbox was running."""
    killed = await sandboxes.kill(info.id)
    if lease := info.metadata.get(SLOT_LEASE_LABEL_KEY):
        try:
            if await release_slot(lease):
                log.warning("Freed the sandbox slot of %s (lease %s)", info.id, lease)
        except Exception as exc:  # noqa: BLE001 - the lease still ends by itself
            log.warning("Could not free the sandbox slot of %s (%s); its lease ends by itself.", info.id, exc)
    return killed


async def kill_run_sandboxes_hook(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """on_crashed / on_cancellation: the run's `finally` may not have run (SIGKILL, OOM): kill what it left, and
    free its slots."""
    settings = load_settings()
    labels = {APP_LABEL_KEY: APP_LABEL, "prefect_flow_run_id": str(flow_run.id)}
    killed = []
    for backend in reachable_backends(settings):
        killed += [info.id for info in await backend.list(labels) if await end_sandbox(backend, info)]
    if killed:
        log.warning("Run %s ended %s: killed its sandboxes %s", flow_run.id, state.name, ", ".join(killed))
