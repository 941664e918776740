"""Teardown that does not depend on the flow's own `finally`: a hook that kills a crashed or cancelled run's sandboxes.

Prefect runs `on_crashed` and `on_cancellation` hooks with only `(flow, flow_run, state)`, possibly in another
process (the runner), so the hook finds the run's sandboxes by the `prefect_flow_run_id` label every sandbox carries,
on every backend this process can reach. After a normal cancel both `finally` and the hook run: killing is idempotent.
"""

from __future__ import annotations

import logging

from agentbox.sandboxes import reachable_backends
from agentbox.sandboxes.base import APP_LABEL, APP_LABEL_KEY
from agentbox.settings import load_settings

log = logging.getLogger("prefect.agentbox.janitor")  # under "prefect", so a runner's console shows it


async def kill_run_sandboxes_hook(flow, flow_run, state) -> None:  # noqa: ANN001 - Prefect's hook signature
    """on_crashed / on_cancellation: the run's `finally` may not have run (SIGKILL, OOM): kill what it left."""
    settings = load_settings()
    labels = {APP_LABEL_KEY: APP_LABEL, "prefect_flow_run_id": str(flow_run.id)}
    killed = [found for backend in reachable_backends(settings) for found in await backend.kill_matching(labels)]
    if killed:
        log.warning("Run %s ended %s: killed its sandboxes %s", flow_run.id, state.name, ", ".join(killed))
