"""Search Notion, open a GitHub issue: the mission's MCP config, prompt, and verification from the agent's own calls.

A run succeeds only when the agent's tool calls show a Notion search and a GitHub `create_issue` on the requested
repository that both succeeded: its final text is never taken on trust, and its typed answer (the issue's URL, the
databases) must agree with those calls.
"""

from __future__ import annotations

import contextlib
import json
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentbox.claude import AgentRun
from agentbox.errors import AgentboxError, InvalidValue, UpstreamToolError, one_line
from agentbox.policy import RunPolicy

DEFAULT_TITLE = "Summary of our Notion workspace"
DEFAULT_BODY = "Opened by an AI agent from a sandbox: the databases found in our Notion workspace."
MCP = {
    "notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"},
    "githubOfficial": {"githubPersonalAccessToken": "${GITHUB_TOKEN}"},
}
# What the mission needs, and no more: Notion's reading and search tools, and opening one issue, which a person
# approves (the agent reads untrusted pages before it writes). Every other GitHub and Notion write (about a hundred
# tools) stays out of the agent's reach, whatever a page it reads tells it.
POLICY = RunPolicy(tools=[
    "API-post-search", "API-retrieve-a-database", "API-retrieve-a-data-source", "API-query-data-source",
    "API-retrieve-a-page", "API-retrieve-page-markdown", "API-get-block-children", "API-retrieve-a-block",
    "create_issue",
], require_approval=["create_issue"], writes=["create_issue"])


class MissionAnswer(BaseModel):
    """The agent's typed answer (Claude Code's --json-schema), checked against its own tool calls."""

    issue_url: str = Field(description="The URL of the GitHub issue you created.")
    notion_databases: list[str] = Field(description="The titles of the Notion databases you found.")


OUTPUT_SCHEMA = MissionAnswer.model_json_schema()
REPO = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
NOTION_SEARCH = "API-post-search"


def parse_repo(repo: str) -> tuple[str, str]:
    """(owner, name) of a GitHub repository written owner/name, else an InvalidValue (a ConfigError) saying how to
    write it."""
    if not isinstance(repo, str) or not REPO.match(repo.strip()) or repo.strip().endswith((".git", "/")):
        raise InvalidValue(
            f"'{repo}' is not a GitHub repository of the form owner/name.",
            "Pass --repo OWNER/NAME, e.g. octocat/hello-world.",
        )
    owner, name = repo.strip().split("/")
    return owner, name


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

    @field_validator("repo")
    @classmethod
    def _owner_slash_name(cls, repo: str) -> str:
        return "/".join(parse_repo(repo))

    @property
    def owner(self) -> str:
        return self.repo.split("/")[0]

    @property
    def name(self) -> str:
        return self.repo.split("/")[1]

    def prompt(self) -> str:
        """The mission's prompt for this issue."""
        return build_prompt(self.owner, self.name, self.title, self.body)


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
    for call in run.successful_calls(NOTION_SEARCH):
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            for item in json.loads(call.output).get("results", []):
                if item.get("object") in ("database", "data_source"):
                    title = "".join(t.get("plain_text", "") for t in item.get("title") or [])
                    if title and title not in titles:
                        titles.append(title)
    return titles


def created_issue(run: AgentRun, owner: str, name: str) -> tuple[str, int]:
    """URL and number of the issue a successful `create_issue` opened on owner/name, else an error saying why."""
    if not run.successful_calls(NOTION_SEARCH):
        failed = [c for c in run.tool_calls if c.tool == NOTION_SEARCH and c.ok is False]
        raise (UpstreamToolError if failed else AgentboxError)(
            "The agent did not complete a Notion search"
            + (f" (Notion's server answered: {one_line(failed[-1].output, limit=200)})." if failed else "."),
            "Check the Notion token and the run's tool calls.",
        )
    calls = [c for c in run.tool_calls if c.tool == "create_issue"]
    wanted = f"{owner}/{name}".lower()
    on_repo = [c for c in calls if f"{c.input.get('owner')}/{c.input.get('repo')}".lower() == wanted]
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
        raise AgentboxError(
            f"The agent created no issue on {owner}/{name} (it tried other repositories).", "Check the prompt."
        )
    raise UpstreamToolError(
        f"GitHub refused to create the issue on {owner}/{name}: {one_line(on_repo[-1].output, limit=200)}.",
        "Check that GITHUB_TOKEN may open issues on that repository.",
    )


def check_answer(run: AgentRun, issue_url: str, databases: list[str]) -> MissionAnswer:
    """The typed answer must say what the tool calls did: the issue create_issue opened, and only databases the
    Notion searches returned (a model's summary may leave some out; it may not invent one)."""
    answer = MissionAnswer.model_validate(run.structured_output)
    if answer.issue_url.strip().rstrip("/") != issue_url:
        raise AgentboxError(
            f"The agent's answer names the issue {one_line(answer.issue_url, limit=200)}, but its create_issue call "
            f"opened {issue_url}.", "See the run's tool calls; the issue that was opened is the one in them.")
    invented = [name for name in answer.notion_databases if name not in databases]
    if invented:
        raise AgentboxError(
            f"The agent's answer names Notion databases its searches never returned: "
            f"{one_line(', '.join(invented), limit=200)}.",
            "See the run's tool calls for what Notion returned.")
    return answer
