"""The mission's workflow: Claude Code searches Notion and opens a GitHub issue, from a sandbox.

    python -m flows.notion_to_github --repo OWNER/NAME [--title T] [--body B] [--rehearsal] [--approve] [--json]

From Python or the Prefect API: `notion_to_github(IssueRequest(repo="owner/name"), rehearsal=True)`, parameters
`{"issue": {"repo": "owner/name"}, "rehearsal": true}`.

The run is only a success when the agent's own tool calls show a Notion search and a GitHub `create_issue` on that
repository that both succeeded; the result names the issue. `--rehearsal` replaces Anthropic, Notion and GitHub by
local stand-ins, so the whole pipeline runs on this machine and nothing is sent anywhere.
"""

# No `from __future__ import annotations`: a runner loads this file by path, and Prefect must resolve the
# parameter models' annotations to validate a deployment run's parameters.

if __name__ == "__main__":  # the command line checks its input and plans before Prefect is imported
    from flows.commands.notion_to_github import command

    command.prepare()

import contextlib
from typing import TYPE_CHECKING

from prefect import State, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from agentbox.missions.notion_to_github import (
    MCP,
    OUTPUT_SCHEMA,
    POLICY,
    IssueRequest,
    check_answer,
    created_issue,
    notion_databases,
)
from agentbox.plan import rehearsal_backend
from agentbox.policy import RunPolicy
from agentbox.sandboxes.registry import AUTO_BACKEND, backend_named
from agentbox.settings import Settings, load_settings
from flows.planning import BackendChoice, plan_this_run
from flows.results import SessionResult
from flows.session import reported, run_session, session_flow

if TYPE_CHECKING:
    from agentbox.rehearsal.stage import Stage


class RecordedIssue(BaseModel):
    """An issue the rehearsal's GitHub stand-in received (what a real run would have filed)."""

    repo: str
    number: int
    title: str
    body: str


class NotionToGithubResult(BaseModel):
    """What the run achieved, from the agent's own tool calls. No secrets."""

    rehearsal: bool
    repo: str
    issue_url: str
    issue_number: int
    notion_databases: list[str]
    turns: int
    cost_usd: float
    duration_seconds: float
    answer: str
    session: SessionResult = Field(description="Sandbox, steps and the full agent run.")
    rehearsal_issues: list[RecordedIssue] = Field(
        default_factory=list, description="Rehearsal only: issues the stand-in got."
    )


def run_name() -> str:
    """`notion-to-github owner/name`: the run list says which repository each run was for."""
    issue = flow_run.parameters.get("issue")
    repo = issue.repo if isinstance(issue, IssueRequest) else (issue or {}).get("repo", "?")
    return f"notion-to-github {repo}"


@session_flow("notion-to-github", run_name)
async def notion_to_github(
    issue: IssueRequest,
    rehearsal: bool = False,
    backend: BackendChoice = AUTO_BACKEND,
    policy: RunPolicy | None = None,
) -> NotionToGithubResult | State:
    """Search Notion and open a GitHub issue with Claude Code in a sandbox.

    Args:
        issue: The repository, title and body of the issue to open.
        rehearsal: Replace Anthropic, Notion and GitHub by local stand-ins: nothing leaves the machine, nothing is paid.
        backend: Where the sandbox runs. auto: SANDBOX_BACKEND, else e2b when E2B_API_KEY is set, else local (a
            bubblewrap sandbox on the worker).
        policy: What the agent may do, over the POLICY_* settings and the workflow's (Notion's reading and search
            tools, create_issue approved by a person, no commands); fields left None keep theirs.
    """
    settings = load_settings()
    result = SessionResult(backend=run_backend(settings, backend, rehearsal), rehearsal=rehearsal)
    return await open_issue(issue, rehearsal, backend, policy, result, settings)


def run_backend(settings: Settings, choice: str | None, rehearsal: bool) -> str:
    """The backend a run's choice means (a rehearsal's is checked: only local can reach its stand-ins)."""
    return rehearsal_backend(backend_named(choice)) if rehearsal else backend_named(choice) or settings.backend


async def open_issue(
    issue: IssueRequest, rehearsal: bool, backend: str | None, policy: RunPolicy | None, result: SessionResult,
    settings: Settings, session: str | None = None, artifact_key: str = "notion-to-github",
    artifact_description: str = "",
) -> NotionToGithubResult:
    """One session of the mission, filling `result` as it goes (its `failure` says why, when it raises); the flow's
    run, or one of a batch's sessions (`session` names it on its sandbox)."""
    owner, name = issue.owner, issue.name
    recorded: list[RecordedIssue] = []
    async with reported(artifact_key, result, settings, description=artifact_description) as extra:
        with mission_stage(issue) if rehearsal else contextlib.nullcontext() as stage:
            plan = plan_this_run(settings, issue.prompt(), MCP, session=session, backend=result.backend,
                                 stand_ins=stage and stage.stand_ins, policy=policy, default_policy=POLICY,
                                 output_schema=OUTPUT_SCHEMA)
            try:
                await run_session(plan, result)
            finally:
                recorded = recorded_issues(stage)
        issue_url, number = created_issue(result.run, owner, name)
        databases = notion_databases(result.run)
        check_answer(result.run, issue_url, databases)
        extra += [f"- Issue: [{owner}/{name}#{number}]({issue_url})",
                  f"- Notion databases: {', '.join(databases) or 'none'}"]
    return NotionToGithubResult(
        rehearsal=rehearsal,
        repo=f"{owner}/{name}",
        issue_url=issue_url,
        issue_number=number,
        notion_databases=databases,
        turns=result.run.num_turns,
        cost_usd=result.run.cost_usd,
        duration_seconds=round(sum(result.steps.values()), 3),
        answer=result.run.result,
        session=result,
        rehearsal_issues=recorded,
    )


def mission_stage(issue: IssueRequest) -> "contextlib.AbstractContextManager[Stage]":
    """Stand-ins of Anthropic (playing this mission), Notion and GitHub, for the length of one run."""
    from agentbox.rehearsal.seed import notion_to_github_script
    from agentbox.rehearsal.stage import rehearsal_stage

    get_run_logger().warning("REHEARSAL: stand-ins replace Anthropic, Notion and GitHub; nothing leaves this machine")
    return rehearsal_stage(notion_to_github_script(issue.owner, issue.name, issue.title, issue.body))


def recorded_issues(stage: "Stage | None") -> list[RecordedIssue]:
    if stage is None:
        return []
    return [
        RecordedIssue(repo=f"{i['owner']}/{i['repo']}", number=i["number"], title=i["title"], body=i.get("body") or "")
        for i in stage.issues
    ]


if __name__ == "__main__":
    command.finish(notion_to_github)
