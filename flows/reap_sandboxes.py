"""The scheduled janitor: kill this app's sandboxes that no live flow run needs any more.

    python -m flows.reap_sandboxes [--max-age-minutes 120] [--dry-run] [--json]

A sandbox is reaped when its flow run is finished (completed, failed, cancelled, crashed), unknown to the Prefect
API, or when it is older than the maximum age. Sandboxes of other apps are never touched. The last layer after
`finally`, the crash and cancellation hooks, and the TTL.
"""

from __future__ import annotations

if __name__ == "__main__":  # the command line reads its options before Prefect is imported
    from flows.commands.reap_sandboxes import command

    command.prepare()

from datetime import datetime, timezone
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from agentbox.sandboxes import reachable_backends
from agentbox.sandboxes.base import APP_LABEL, APP_LABEL_KEY, SandboxInfo
from agentbox.settings import load_settings
from flows.janitor import end_sandbox


class Verdict(BaseModel):
    """One sandbox the janitor looked at, and what it did."""

    backend: str
    sandbox_id: str
    flow_run_id: str
    age_minutes: float
    reason: str  # why it is reaped; empty when kept
    killed: bool = False


class ReapReport(BaseModel):
    dry_run: bool
    reaped: list[Verdict]
    kept: list[Verdict]


async def reason_to_reap(client: PrefectClient, info: SandboxInfo, max_age_minutes: float) -> str:
    """Why this sandbox should go, or "" if a live run still needs it."""
    age = (datetime.now(timezone.utc) - info.created_at).total_seconds() / 60
    if age > max_age_minutes:
        return f"older than {max_age_minutes:g} minutes"
    run_id = info.metadata.get("prefect_flow_run_id", "")
    try:
        run = await client.read_flow_run(UUID(run_id))
    except (ValueError, ObjectNotFound):
        return "its flow run is unknown"
    if run.state is None or run.state.is_final():
        return f"its flow run is {run.state.name if run.state else 'without a state'}"
    return ""


@flow(name="reap-sandboxes", timeout_seconds=600)
async def reap_sandboxes(max_age_minutes: float = 120, dry_run: bool = False) -> ReapReport:
    """Kill this app's sandboxes whose flow run is finished or unknown, or that are older than `max_age_minutes`.

    Args:
        max_age_minutes: Kill any sandbox of this app older than this, whatever its run's state.
        dry_run: Only report what would be killed.
    """
    settings = load_settings()
    logger = get_run_logger()
    report = ReapReport(dry_run=dry_run, reaped=[], kept=[])
    async with get_client() as client:
        for sandboxes in reachable_backends(settings):
            for info in await sandboxes.list({APP_LABEL_KEY: APP_LABEL}):
                reason = await reason_to_reap(client, info, max_age_minutes)
                verdict = Verdict(
                    backend=sandboxes.name,
                    sandbox_id=info.id,
                    flow_run_id=info.metadata.get("prefect_flow_run_id", ""),
                    age_minutes=round((datetime.now(timezone.utc) - info.created_at).total_seconds() / 60, 1),
                    reason=reason,
                )
                if not reason:
                    report.kept.append(verdict)
                    continue
                if not dry_run:
                    verdict.killed = await end_sandbox(sandboxes, info)
                logger.warning("%s sandbox %s: %s", "Would reap" if dry_run else "Reaped", info.id, reason)
                report.reaped.append(verdict)
    rows = [v.model_dump() for v in report.reaped] or [{"sandbox_id": "-", "reason": "nothing to reap"}]
    await acreate_table_artifact(key="reap-sandboxes", table=rows, description=f"Kept {len(report.kept)} sandboxes")
    return report


if __name__ == "__main__":
    command.finish(reap_sandboxes)
