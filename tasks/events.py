"""Our runs' events, for the server's automations to act on (deployments/notify.py turns them into notifications).

Each event is about the flow run in progress (its resource, so an automation's template finds the run and its page)
and carries the message people should get (agentbox/notifications.py), secrets already redacted. Its id is derived
from what it is about, so the same fact sent twice (a retried task, the automation service reading its queue again)
is one event, and so one message.
"""

from __future__ import annotations

import uuid

from prefect.events import emit_event
from prefect.runtime import deployment, flow_run

from agentbox.notifications import Notice

APPROVAL_REQUESTED = "agentbox.approval.requested"
APPROVAL_REMINDER = "agentbox.approval.reminder"
RUN_FAILED = "agentbox.run.failed"
RUN_COMPLETED = "agentbox.run.completed"
BUDGET_REACHED = "agentbox.budget.reached"
EVENTS = (APPROVAL_REQUESTED, APPROVAL_REMINDER, RUN_FAILED, BUDGET_REACHED, RUN_COMPLETED)
_IDS = uuid.UUID("9f0c8e1e-5c7d-4d0e-9a65-4f3c0a6c2b11")  # the namespace of our events' ids


def emit_run_event(name: str, notice: Notice, about: str, **details: str) -> None:
    """Emit `name` about the flow run in progress, carrying `notice`; `about` names the fact (with the event's name,
    it makes the event's id). Outside a flow run, nothing is emitted."""
    if not flow_run.id:
        return
    related = [{"prefect.resource.id": f"prefect.deployment.{deployment.id}", "prefect.resource.role": "deployment",
                "prefect.resource.name": str(deployment.name)}] if deployment.id else []
    emit_event(
        event=name,
        resource={"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                  "prefect.resource.name": str(flow_run.name)},
        related=related,
        payload={"subject": notice.subject, "body": notice.body, **details},
        id=uuid.uuid5(_IDS, f"{name}/{about}"),
    )
