"""Many notion_to_github sessions from one flow run: one issue per repository, concurrent under the sandbox limit.

    python -m flows.notion_to_github_batch --repo OWNER/A --repo OWNER/B [--title T] [--rehearsal] [--json]

From Python or the Prefect API: `notion_to_github_batch([IssueRequest(repo="o/a"), IssueRequest(repo="o/b")])`,
parameters `{"issues": [{"repo": "o/a"}, {"repo": "o/b"}]}`.

Every session runs as in `notion_to_github` (its own sandbox, plan, policy, approvals and artifact); they start at
once and each waits for a slot of the global sandbox limit, so a batch never runs more sandboxes than the limit allows,
across all workers. One session's failure never stops the others. The run's table artifact has one row per session:
its outcome, and for a failure one reason from a fixed set (sandbox provider, model API, MCP upstream, gateway, agent,
policy, timeout, cancelled) to count them by. The run fails when any session failed, and ends Cancelled when cancelled.
A batch is far lighter than as many flow runs: one Python process orchestrates all its sessions.
"""

# No `from __future__ import annotations`: a runner loads this file by path, and Prefect must resolve the
# parameter models' annotations to validate a deployment run's parameters.

if __name__ == "__main__":  # the command line checks its input and plans before Prefect is imported
    from flows.commands.notion_to_github_batch import command

    command.prepare()

import asyncio
from collections import Counter
from typing import Annotated, Literal

from prefect import State, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed
from pydantic import BaseModel, Field

from agentbox.errors import FailureReason, RunCancelled
from agentbox.missions.notion_to_github import IssueRequest
from agentbox.policy import RunPolicy
from agentbox.sandboxes.registry import AUTO_BACKEND
from agentbox.settings import load_settings
from flows.notion_to_github import open_issue, run_backend
from flows.planning import BackendChoice
from flows.results import SessionResult, failure_of
from flows.session import session_flow

MAX_SESSIONS = 500  # sessions in one batch: its artifact and result stay readable


class SessionOutcome(BaseModel):
    """One session of a batch: how it ended and, when it failed, why. No secrets."""

    session: int
    repo: str
    outcome: Literal["completed", "failed", "cancelled"]
    reason: FailureReason | None = Field(None, description="Why it failed, from a fixed set; None when it did not.")
    message: str = ""
    issue_url: str = ""
    sandbox_id: str = ""
    seconds: float = Field(0.0, description="The session's steps, added up (waiting for a slot is not counted).")
    steps: dict[str, float] = Field(default_factory=dict)


class BatchResult(BaseModel):
    """What a batch did: every session's outcome, and the failures counted by reason."""

    rehearsal: bool
    backend: str
    sessions: list[SessionOutcome]
    completed: int
    failed: int
    cancelled: int
    reasons: dict[str, int] = Field(default_factory=dict, description="Failed sessions per reason.")
    wall_seconds: float


def run_name() -> str:
    issues = flow_run.parameters.get("issues") or []
    return f"notion-to-github-batch {len(issues)} repositories"


@session_flow("notion-to-github-batch", run_name)
async def notion_to_github_batch(
    issues: Annotated[list[IssueRequest], Field(min_length=1, max_length=MAX_SESSIONS)],
    rehearsal: bool = False,
    backend: BackendChoice = AUTO_BACKEND,
    policy: RunPolicy | None = None,
) -> BatchResult | State:
    """Open one GitHub issue per repository, each from its own sandbox session, all at once under the sandbox limit.

    Args:
        issues: One issue per session: its repository, title and body.
        rehearsal: Replace Anthropic, Notion and GitHub by local stand-ins (one set per session).
        backend: Where the sandboxes run. auto: SANDBOX_BACKEND, else e2b when E2B_API_KEY is set, else local.
        policy: What each agent may do, over the POLICY_* settings and the workflow's; fields left None keep theirs.
            Approvals are asked one at a time on this run's page.
    """
    settings = load_settings()
    chosen = run_backend(settings, backend, rehearsal)
    started = asyncio.get_running_loop().time()

    async def one(number: int, issue: IssueRequest) -> SessionOutcome:
        result = SessionResult(backend=chosen, rehearsal=rehearsal)
        row = SessionOutcome(session=number, repo=issue.repo, outcome="completed")
        try:
            done = await open_issue(issue, rehearsal, backend, policy, result, settings,
                                    session=f"{number}:{issue.repo}", artifact_key=f"session-{number}",
                                    artifact_description=f"notion-to-github {issue.repo}: session {number} of "
                                    f"{len(issues)}")
            row.issue_url = done.issue_url
        except Exception as exc:  # noqa: BLE001 - one session's failure never stops the others
            failure = result.failure or failure_of(exc, result, settings)
            row.outcome = "cancelled" if isinstance(exc, RunCancelled) else "failed"
            row.reason, row.message = failure.reason, failure.message
        row.sandbox_id, row.steps = result.sandbox_id, result.steps
        row.seconds = round(sum(result.steps.values()), 3)
        return row

    rows = list(await asyncio.gather(*(one(n, issue) for n, issue in enumerate(issues, start=1))))
    counts = Counter(row.outcome for row in rows)
    batch = BatchResult(
        rehearsal=rehearsal, backend=chosen, sessions=rows, completed=counts["completed"], failed=counts["failed"],
        cancelled=counts["cancelled"], reasons=dict(Counter(r.reason for r in rows if r.outcome == "failed")),
        wall_seconds=round(asyncio.get_running_loop().time() - started, 3),
    )
    summary = (f"{batch.completed} of {len(rows)} sessions completed, {batch.failed} failed"
               + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(batch.reasons.items()))})" if batch.reasons else "")
               + (f", {batch.cancelled} cancelled" if batch.cancelled else "") + ".")
    await acreate_table_artifact(
        key="notion-to-github-batch", description=summary,
        table=[row.model_dump(exclude={"steps"}) | {f"{k} (s)": v for k, v in row.steps.items()} for row in rows],
    )
    get_run_logger().info("Batch: %s", summary)
    if batch.cancelled and not batch.failed:
        return Cancelled(message=summary, data=batch)
    if batch.failed:
        return Failed(message=summary + " See the run's table artifact.", data=batch)
    return Completed(message=summary, data=batch)


if __name__ == "__main__":
    command.finish(notion_to_github_batch)
