"""A session flow's plan, made once at its start with what only Prefect knows (its run's labels, the timeout it
really has), and the choices a run's form offers (the backend: the registry's names when the form is built)."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run
from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue

from agentbox.plan import SessionPlan, plan_session
from agentbox.sandboxes.base import APP_LABEL, APP_LABEL_KEY, SESSION_LABEL_KEY
from agentbox.sandboxes.registry import backend_choices, backend_class
from agentbox.settings import Settings


def _registered_choice(choice: str) -> str:
    if choice not in backend_choices():
        raise ValueError(f"must be one of: {', '.join(backend_choices())}")
    return choice


class _RegisteredBackendsSchema:
    """The form's select: its options are the registry's at the moment the schema is made (when a deployment or a
    form is built), so a backend registered before then is offered."""

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "enum": backend_choices()}


# "auto" or a registered backend: a select with a default in the Prefect UI's run form (an Optional would show as a
# type picker)
BackendChoice = Annotated[str, AfterValidator(_registered_choice), _RegisteredBackendsSchema]


def session_metadata(session: str | None = None) -> dict[str, str]:
    """Labels that let hooks and the reaper find this run's sandboxes (and, in a batch, each session's own)."""
    metadata = {APP_LABEL_KEY: APP_LABEL, "prefect_flow_run_id": str(flow_run.id or "none")}
    if session:
        metadata[SESSION_LABEL_KEY] = session
    if flow_run.flow_name:
        metadata["prefect_flow"] = str(flow_run.flow_name)
    if deployment.name:
        metadata["prefect_deployment"] = str(deployment.name)
    return metadata


def running_flow_timeout() -> float | None:
    """The timeout Prefect applies to the flow run in progress (its decorator's, or a `with_options` one)."""
    context = FlowRunContext.get()
    return context.flow.timeout_seconds if context and context.flow else None


def plan_this_run(settings: Settings, prompt: str, mcp: Any, session: str | None = None, **choices: Any
                  ) -> SessionPlan:
    """The plan of the flow run in progress: its workflow, labels and effective timeout come from Prefect;
    `session` names one session of a batch (its sandbox's label). Says the backend and the policy in the log."""
    plan = plan_session(
        settings, prompt, mcp, workflow=str(flow_run.flow_name or "agent-session"),
        flow_timeout_seconds=running_flow_timeout(), metadata=session_metadata(session), **choices,
    )
    logger = get_run_logger()
    logger.info("%sBackend: %s", "REHEARSAL: " if plan.rehearsal else "", plan.backend)
    for line in policy_lines(plan):
        logger.info("Policy: %s", line)
    return plan


def policy_lines(plan: SessionPlan) -> list[str]:
    """The run's policy, and the layers that enforce it on this backend (said, never silently weakened)."""
    layers = ["Claude Code's --allowedTools"]
    if plan.claude.bypass_permissions:  # --dangerously-skip-permissions: Claude asks nobody and allows everything
        layers = ["not Claude Code (its permissions are bypassed)"]
    if plan.policy.tools is not None:
        filtering = backend_class(plan.backend).gateway_filters_tools
        gateway = "the gateway's allow-list" if filtering else f"not the gateway (on {plan.backend} it serves all)"
        layers.insert(0, gateway)
    return [*plan.policy.summary(), f"Enforced by: {', '.join(layers)}"]
