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

import argparse
import contextlib
import sys

from prefect import State, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BaseModel, ConfigDict, Field

from agentbox.missions.notion_to_github import (
    DEFAULT_BODY,
    DEFAULT_TITLE,
    MCP,
    OUTPUT_SCHEMA,
    POLICY,
    REPO,
    build_prompt,
    check_answer,
    created_issue,
    notion_databases,
    parse_repo,
)
from agentbox.errors import RunCancelled
from agentbox.plan import SessionPlan, StandIns, plan_session, rehearsal_backend
from agentbox.policy import RunPolicy
from agentbox.settings import Settings, load_settings
from flows import cli, report
from flows.session import (
    AUTO_BACKEND,
    REHEARSAL_BANNER,
    BackendChoice,
    SessionResult,
    backend_named,
    plan_this_run,
    reported,
    run_session,
    session_flow,
)


class IssueRequest(BaseModel):
    """The issue to open: the form the Prefect UI shows for a run (it is checked again before anything starts)."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(
        description="GitHub repository to open the issue on, as owner/name.",
        examples=["octocat/hello-world"],
        json_schema_extra={"pattern": REPO.pattern},
    )
    title: str = Field(DEFAULT_TITLE, min_length=1, max_length=256, description="The issue's title.")
    body: str = Field(DEFAULT_BODY, max_length=65_536,
                      description="The issue's body; the agent adds the Notion databases it found.")


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
    try:
        return await open_issue(issue, rehearsal, backend, policy, result, settings)
    except RunCancelled as exc:  # cancelled while it waited for a person: the run ends Cancelled, not Failed
        return Cancelled(message=str(exc))


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
    owner, name = parse_repo(issue.repo)
    prompt = build_prompt(owner, name, issue.title, issue.body)
    recorded: list[RecordedIssue] = []
    async with reported(artifact_key, result, settings, description=artifact_description) as extra:
        with mission_stage(owner, name, issue) if rehearsal else contextlib.nullcontext() as stage:
            plan = plan_this_run(settings, prompt, MCP, session=session, backend=result.backend,
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


def mission_stage(owner: str, name: str, issue: IssueRequest):  # noqa: ANN201 - the stage's context manager
    """Stand-ins of Anthropic (playing this mission), Notion and GitHub, for the length of one run."""
    from agentbox.rehearsal.seed import notion_to_github_script
    from agentbox.rehearsal.stage import rehearsal_stage

    get_run_logger().warning("REHEARSAL: stand-ins replace Anthropic, Notion and GitHub; nothing leaves this machine")
    return rehearsal_stage(notion_to_github_script(owner, name, issue.title, issue.body))


def recorded_issues(stage) -> list[RecordedIssue]:  # noqa: ANN001 - a rehearsal Stage, or None
    if stage is None:
        return []
    return [
        RecordedIssue(repo=f"{i['owner']}/{i['repo']}", number=i["number"], title=i["title"], body=i.get("body") or "")
        for i in stage.issues
    ]


def human_lines(outcome: NotionToGithubResult) -> list[str]:
    return [
        *report.session_lines(outcome.session),
        "",
        f"Issue: {outcome.issue_url}",
        f"Notion databases: {', '.join(outcome.notion_databases) or 'none'}",
        *([REHEARSAL_BANNER] if outcome.rehearsal else []),
    ]


def rehearsal_up_front(args: argparse.Namespace, module: str, argv: list[str] | None) -> StandIns | None:
    """For a command line's --rehearsal: its backend checked, a private network entered when port 80 needs one, and
    placeholder stand-ins to check the plan with (each run's stage starts inside the flow run); None otherwise."""
    if not args.rehearsal:
        return None
    from agentbox.rehearsal.netns import enter_private_network_if_needed
    from agentbox.rehearsal.stage import rehearsal_stand_ins

    rehearsal_backend(args.backend)
    enter_private_network_if_needed(module, sys.argv[1:] if argv is None else argv)
    return rehearsal_stand_ins()


def plan_up_front(settings: Settings, args: argparse.Namespace, issue: IssueRequest, stand_ins: StandIns | None,
                  policy: RunPolicy | None, flow_timeout: float | None) -> SessionPlan:
    """A command line's session plan, with every check, before Prefect starts."""
    owner, name = parse_repo(issue.repo)
    return plan_session(
        settings, build_prompt(owner, name, issue.title, issue.body), MCP, workflow="notion-to-github",
        backend="local" if args.rehearsal else args.backend, stand_ins=stand_ins, policy=policy,
        default_policy=POLICY, flow_timeout_seconds=flow_timeout, output_schema=OUTPUT_SCHEMA,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.notion_to_github", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="GitHub repository as OWNER/NAME")
    parser.add_argument("--title", default=DEFAULT_TITLE)
    parser.add_argument("--body", default=DEFAULT_BODY)
    parser.add_argument("--rehearsal", action="store_true",
                        help="run against local stand-ins; nothing leaves the machine")
    cli.add_policy_arguments(parser)
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)

    def start() -> NotionToGithubResult:
        parse_repo(args.repo)  # fail before Prefect starts, naming the option
        issue = cli.build(IssueRequest, repo=args.repo.strip(), title=args.title, body=args.body)
        policy = cli.policy_from(args)
        stand_ins = rehearsal_up_front(args, "flows.notion_to_github", argv)
        plan = plan_up_front(load_settings(), args, issue, stand_ins, policy, notion_to_github.timeout_seconds)
        approver = cli.approvals_up_front(plan, args)
        return cli.run_flow(lambda: notion_to_github(issue, args.rehearsal, args.backend or AUTO_BACKEND, policy),
                            notion_to_github.timeout_seconds, approver)

    return cli.run(start, args, human=human_lines)


if __name__ == "__main__":
    raise SystemExit(main())
