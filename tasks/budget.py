"""A daily budget per deployment: each run records what it spent as a small table artifact, and a run starts only
while the recorded spend of today's runs (UTC) of its deployment is under the budget.

Runs outside a deployment (the command lines, a Python call) count per flow. The record is Prefect's own, so every
worker and served process sees the same figures; two runs starting at the same moment may both pass the check,
and each is still capped by its own budget (the run policy's budget_usd).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterStartTime,
)
from prefect.runtime import deployment, flow_run

from agentbox.errors import DailyBudgetReached, one_line
from agentbox.notifications import budget_notice
from agentbox.plan import SessionPlan
from tasks.events import BUDGET_REACHED, emit_run_event

SPEND_KEY = "agentbox-spend"
PAGE = 200  # the API's largest page


async def record_spend(usd: float) -> None:
    """What this run spent on the model, where the daily budget finds it; a failure to record it is logged, never
    raised over how the run ended."""
    if not usd:
        return
    try:
        await asyncio.shield(acreate_table_artifact(key=SPEND_KEY, table=[{"usd": round(usd, 6)}],
                                                    description="What this run spent on the model, in USD"))
    except Exception as exc:  # noqa: BLE001 - the record must not hide why the run ended
        get_run_logger().warning("Could not record the run's spend (%s).", one_line(exc))


def spending_group() -> str:
    """Whose spend this run counts towards: its deployment's, else its flow's."""
    return f"deployment {deployment.name}" if deployment.id else f"flow {flow_run.flow_name}"


async def spent_today(flow_name: str, deployment_id: str | None = None, besides: str | None = None) -> float:
    """The recorded spend of today's (UTC) runs of a deployment, or of a flow's runs outside deployments, but for
    the run `besides`."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    started_today = FlowRunFilterStartTime(after_=midnight)
    if deployment_id:
        runs_filter = {"flow_run_filter": FlowRunFilter(start_time=started_today),
                       "deployment_filter": DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))}
    else:
        runs_filter = {"flow_run_filter": FlowRunFilter(start_time=started_today,
                                                        deployment_id=FlowRunFilterDeploymentId(is_null_=True)),
                       "flow_filter": FlowFilter(name=FlowFilterName(any_=[flow_name]))}
    async with get_client() as client:
        runs = await every_page(lambda offset: client.read_flow_runs(**runs_filter, limit=PAGE, offset=offset))
        ids = [r.id for r in runs if str(r.id) != str(besides)]
        records = []
        for start in range(0, len(ids), PAGE):
            chunk = ArtifactFilter(key=ArtifactFilterKey(any_=[SPEND_KEY]),
                                   flow_run_id=ArtifactFilterFlowRunId(any_=ids[start:start + PAGE]))
            records += await every_page(lambda offset, chunk=chunk: client.read_artifacts(
                artifact_filter=chunk, limit=PAGE, offset=offset))
    return sum(usd for record in records for usd in recorded_usd(record.data))


async def every_page(read: Callable[[int], Awaitable[list[Any]]]) -> list[Any]:
    """All the items a paged API call returns, page by page."""
    items: list[Any] = []
    while True:
        page = await read(len(items))
        items += page
        if len(page) < PAGE:
            return items


def recorded_usd(data: Any) -> list[float]:
    """The amounts a spend record holds (its table's rows); nothing from a record that is not one."""
    try:
        rows = json.loads(data) if isinstance(data, str) else data
        return [float(row["usd"]) for row in rows or [] if isinstance(row, dict) and "usd" in row]
    except (ValueError, TypeError):
        return []


async def check_daily_budget(plan: SessionPlan) -> None:
    """Refuse to start once today's runs have spent the daily budget (DAILY_BUDGET_USD)."""
    if plan.daily_budget_usd is None:
        return
    spent = await spent_today(str(flow_run.flow_name), deployment.id, besides=flow_run.id)
    if spent >= plan.daily_budget_usd:
        group = spending_group()
        today = datetime.now(timezone.utc).date().isoformat()
        emit_run_event(BUDGET_REACHED, budget_notice(group, spent, plan.daily_budget_usd), f"{group}/{today}")
        raise DailyBudgetReached(
            f"The runs of {spending_group()} spent ${spent:.4f} today (UTC) of their ${plan.daily_budget_usd:g} "
            "daily budget; this run was not started.",
            "Raise DAILY_BUDGET_USD, or wait until tomorrow (UTC).",
        )
