"""The mission's workflow: Claude Code searches Notion and opens a GitHub issue, from a sandbox.

    python -m flows.notion_to_github --repo OWNER/NAME [--title T] [--body B] [--rehearsal] [--json]

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
import json
import re
import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from agentbox.claude import AgentRun
from agentbox.errors import AgentboxError, ConfigError
from agentbox.session import preflight, rehearsal_backend
from agentbox.settings import load_settings, redact
from flows import cli, report
from flows.janitor import kill_sandboxes_hook
from flows.agent_session import DEFAULT_FLOW_TIMEOUT, Backend, SessionResult, claude_options, run_session

DEFAULT_TITLE = "Summary of our Notion workspace"
DEFAULT_BODY = "Opened by an AI agent from a sandbox: the databases found in our Notion workspace."
MCP = {
    "notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"},
    "githubOfficial": {"githubPersonalAccessToken": "${GITHUB_TOKEN}"},
}
_REPO = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")


class IssueRequest(BaseModel):
    """The issue to open: the form the Prefect UI shows for a run (it is checked again before anything starts)."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(
        description="GitHub repository to open the issue on, as owner/name.",
        examples=["octocat/hello-world"],
        json_schema_extra={"pattern": _REPO.pattern},
    )
    title: str = Field(DEFAULT_TITLE, min_length=1, max_length=256, description="The issue's title.")
    body: str = Field(DEFAULT_BODY, description="The issue's body; the agent adds the Notion databases it found.")


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
    rehearsal_issues: list[RecordedIssue] = Field(default_factory=list, description="Rehearsal only: issues the stand-in got.")


def parse_repo(repo: str) -> tuple[str, str]:
    if not isinstance(repo, str) or not _REPO.match(repo.strip()) or repo.strip().endswith((".git", "/")):
        raise ConfigError(f"'{repo}' is not a GitHub repository of the form owner/name.", "Pass --repo OWNER/NAME, e.g. octocat/hello-world.")
    owner, name = repo.strip().split("/")
    return owner, name


def build_prompt(owner: str, name: str, title: str, body: str) -> str:
    return (
        "You have MCP tools for Notion and GitHub.\n"
        "1. Search the Notion workspace for its databases and note their titles.\n"
        f'2. Create a GitHub issue in the repository {owner}/{name} with the title "{title}". '
        "Use this body, followed by a list of the Notion databases you found:\n"
        f"{body}\n"
        "3. Answer with the issue's URL and the names of the databases."
    )


def notion_databases(run: AgentRun) -> list[str]:
    """Titles of the databases (data sources) that the agent's Notion searches returned."""
    titles: list[str] = []
    for call in run.successful_calls("API-post-search"):
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            for item in json.loads(call.output).get("results", []):
                if item.get("object") in ("database", "data_source"):
                    title = "".join(t.get("plain_text", "") for t in item.get("title") or [])
                    if title and title not in titles:
                        titles.append(title)
    return titles


def created_issue(run: AgentRun, owner: str, name: str) -> tuple[str, int]:
    """URL and number of the issue a successful `create_issue` opened on owner/name, else an error saying why."""
    if not run.successful_calls("API-post-search"):
        raise AgentboxError("The agent did not complete a Notion search.", "Check the Notion token and the run's tool calls.")
    calls = [c for c in run.tool_calls if c.tool == "create_issue"]
    on_repo = [c for c in calls if f"{c.input.get('owner')}/{c.input.get('repo')}".lower() == f"{owner}/{name}".lower()]
    for call in on_repo:
        if call.ok:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                data = json.loads(call.output)
                return str(data["html_url"]), int(data["number"])
            match = re.search(r"https://\S+/issues/(\d+)", call.output)
            if match:
                return match.group(0).rstrip('",.'), int(match.group(1))
    if not calls:
        raise AgentboxError("The agent did not try to create a GitHub issue.", "See its answer in the run's logs.")
    if not on_repo:
        raise AgentboxError(f"The agent created no issue on {owner}/{name} (it tried other repositories).", "Check the prompt.")
    raise AgentboxError(
        f"GitHub refused to create the issue on {owner}/{name}: {on_repo[-1].output[:200]}.",
        "Check that GITHUB_TOKEN may open issues on that repository.",
    )


def run_name() -> str:
    """`notion-to-github owner/name`: the run list says which repository each run was for."""
    issue = flow_run.parameters.get("issue")
    repo = issue.repo if isinstance(issue, IssueRequest) else (issue or {}).get("repo", "?")
    return f"notion-to-github {repo}"


@flow(
    name="notion-to-github",
    flow_run_name=run_name,
    timeout_seconds=DEFAULT_FLOW_TIMEOUT,
    on_crashed=[kill_sandboxes_hook],
    on_cancellation=[kill_sandboxes_hook],
)
async def notion_to_github(
    issue: IssueRequest,
    rehearsal: bool = False,
    backend: Backend | None = None,
) -> NotionToGithubResult:
    """Search Notion and open a GitHub issue with Claude Code in a sandbox.

    Args:
        issue: The repository, title and body of the issue to open.
        rehearsal: Replace Anthropic, Notion and GitHub by local stand-ins: nothing leaves the machine, nothing is paid.
        backend: Where the sandbox runs: e2b or local (default: SANDBOX_BACKEND, else e2b when E2B_API_KEY is set).
    """
    owner, name = parse_repo(issue.repo)
    title, body = issue.title, issue.body
    settings = load_settings()
    backend = rehearsal_backend(backend) if rehearsal else backend or settings.backend
    result = SessionResult(backend=backend, rehearsal=rehearsal)
    options = claude_options(settings, None, False)
    prompt = build_prompt(owner, name, title, body)
    recorded: list[RecordedIssue] = []
    try:
        if rehearsal:
            from agentbox.rehearsal.seed import notion_to_github_script
            from agentbox.rehearsal.stage import rehearsal_stage

            get_run_logger().warning("REHEARSAL: stand-ins replace Anthropic, Notion and GitHub; nothing leaves this machine")
            with rehearsal_stage(notion_to_github_script(owner, name, title, body)) as stage:
                try:
                    await run_session(prompt, MCP, options, result, stage.stand_ins)
                finally:
                    recorded = [
                        RecordedIssue(repo=f"{i['owner']}/{i['repo']}", number=i["number"], title=i["title"], body=i.get("body") or "")
                        for i in stage.issues
                    ]
        else:
            await run_session(prompt, MCP, options, result)
        issue_url, number = created_issue(result.run, owner, name)
    except BaseException as exc:
        await report.session_artifact("notion-to-github", result, error=redact(str(exc), settings.secret_values()))
        raise
    outcome = NotionToGithubResult(
        rehearsal=rehearsal,
        repo=f"{owner}/{name}",
        issue_url=issue_url,
        issue_number=number,
        notion_databases=notion_databases(result.run),
        turns=result.run.num_turns,
        cost_usd=result.run.cost_usd,
        duration_seconds=round(sum(result.steps.values()), 3),
        answer=result.run.result,
        session=result,
        rehearsal_issues=recorded,
    )
    extra = [f"- Issue: [{outcome.repo}#{number}]({issue_url})", f"- Notion databases: {', '.join(outcome.notion_databases) or 'none'}"]
    await report.session_artifact("notion-to-github", result, extra=extra)
    return outcome


def human_lines(outcome: NotionToGithubResult) -> list[str]:
    return [
        *report.session_lines(outcome.session),
        "",
        f"Issue: {outcome.issue_url}",
        f"Notion databases: {', '.join(outcome.notion_databases) or 'none'}",
        *([report.REHEARSAL_BANNER] if outcome.rehearsal else []),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.notion_to_github", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="GitHub repository as OWNER/NAME")
    parser.add_argument("--title", default=DEFAULT_TITLE)
    parser.add_argument("--body", default=DEFAULT_BODY)
    parser.add_argument("--rehearsal", action="store_true", help="run against local stand-ins; nothing leaves the machine")
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)

    def start() -> NotionToGithubResult:
        parse_repo(args.repo)  # fail before Prefect starts
        if args.rehearsal:
            from agentbox.rehearsal.netns import enter_private_network_if_needed

            rehearsal_backend(args.backend)
            enter_private_network_if_needed("flows.notion_to_github", sys.argv[1:] if argv is None else argv)
        settings = load_settings()
        if not args.rehearsal:
            preflight(settings, MCP, args.backend or settings.backend)
        run = notion_to_github.with_options(timeout_seconds=settings.flow_timeout_seconds)
        issue = cli.build(IssueRequest, repo=args.repo.strip(), title=args.title, body=args.body)
        return cli.run_flow(lambda: run(issue, args.rehearsal, args.backend))

    return cli.run(start, args, human=human_lines)


if __name__ == "__main__":
    raise SystemExit(main())
