"""Nothing done twice: a session whose agent run completed is recorded, so a retry of its flow run reuses it.

Prefect retries a failed flow run (a deployment's `retries`) by running the flow again from the start. Without a
record, a session that failed after its agent had opened the issue (while its sandbox was torn down, or in a check
after the run) would run the agent again and open a second one. The record is the session's result (what the agent
did, its audit, no secret) in Prefect's result store, keyed by the flow run and the session; later attempts of the
same flow run find it, and when the agent did anything through the gateway they skip the sandbox and the agent and
judge the recorded run again.
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import get_run_logger
from prefect.results import get_result_store
from prefect.runtime import flow_run

from agentbox.errors import one_line
from agentbox.plan import SessionPlan
from agentbox.sandboxes.base import SESSION_LABEL_KEY


def record_key(plan: SessionPlan) -> str | None:
    """The record's key: this flow run and this session of it (None outside a flow run)."""
    if not flow_run.id:
        return None
    session = plan.metadata.get(SESSION_LABEL_KEY, "")
    return "agentbox-agent-run-" + hashlib.sha256(f"{flow_run.id}/{session}".encode()).hexdigest()[:40]


async def record_agent_run(plan: SessionPlan, session: dict[str, Any]) -> None:
    """Keep the session's result (as JSON) once its agent run completed. A failure to keep it is logged: the run
    itself went well, and only a retry would miss the record."""
    if (key := record_key(plan)) is None:
        return
    try:
        await get_result_store().awrite(session, key=key)
    except Exception as exc:  # noqa: BLE001 - said, never raised over the session's outcome
        get_run_logger().warning("Could not record the completed agent run (%s); a retry would run it again.",
                                 one_line(exc))


async def completed_agent_run(plan: SessionPlan) -> dict[str, Any] | None:
    """The session's result recorded by an earlier attempt of this flow run, if its agent run completed."""
    if (key := record_key(plan)) is None or (flow_run.run_count or 1) <= 1:
        return None
    store = get_result_store()
    if not await store.aexists(key):
        return None
    return (await store.aread(key)).result
