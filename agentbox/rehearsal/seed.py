"""What the stand-ins start with: the Notion workspace's contents, and ready-made model scripts.

Ids derive from titles, so a script, a test and the flow can name the same Notion object from different processes
without sharing any state.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from agentbox.rehearsal.model import ModelScript

_NAMESPACE = uuid.UUID("5b0c7f39-3a1e-4a57-9d0e-7c1f0d8e2a11")

# notion-mcp-server 2.5.2 targets Notion API 2025-09-03: API-post-search's inputSchema allows only "page" and
# "data_source" as filter.value, so databases are searched for as data sources.
NOTION_SEARCH_DATABASE_FILTER_VALUE = "data_source"


def stable_id(*parts: str) -> str:
    """A uuid that is the same in every process for the same parts, so ids need no shared state."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


class SeedPage(BaseModel):
    """A database row; `content` becomes the page's paragraph blocks."""

    title: str
    status: str = "Not started"
    content: list[str] = Field(default_factory=list)


class SeedDatabase(BaseModel):
    title: str
    description: str = ""
    statuses: list[str] = Field(default_factory=lambda: ["Not started", "In progress", "Done"])
    pages: list[SeedPage] = Field(default_factory=list)


class NotionSeed(BaseModel):
    """What the Notion stand-in's workspace holds: databases of pages, nothing else."""

    workspace_name: str = "Rehearsal Workspace"
    databases: list[SeedDatabase] = Field(default_factory=list)


def default_notion_seed() -> NotionSeed:
    """A small but realistic workspace: three databases of a few rows each, with statuses and page text."""
    return NotionSeed(
        databases=[
            SeedDatabase(
                title="Product Roadmap",
                description="Quarterly product initiatives",
                pages=[
                    SeedPage(
                        title="Launch dark mode",
                        status="In progress",
                        content=["Ship a dark theme across web and mobile.", "Target: end of Q3."],
                    ),
                    SeedPage(
                        title="Offline sync",
                        status="Not started",
                        content=["Let users edit while offline and sync on reconnect."],
                    ),
                ],
            ),
            SeedDatabase(
                title="Bug Tracker",
                description="Customer-reported bugs",
                statuses=["Open", "Triaged", "Fixed"],
                pages=[
                    SeedPage(
                        title="Login button unresponsive on Safari",
                        status="Open",
                        content=[
                            "Clicking 'Log in' on Safari 17 does nothing.",
                            "Steps: open /login in Safari, enter credentials, click the button.",
                        ],
                    ),
                    SeedPage(
                        title="CSV export drops the last row",
                        status="Triaged",
                        content=["Exports of more than 1000 rows lose the final row."],
                    ),
                ],
            ),
            SeedDatabase(
                title="Meeting Notes",
                description="Notes from team meetings",
                statuses=["Draft", "Final"],
                pages=[
                    SeedPage(
                        title="Weekly sync 2025-01-13",
                        status="Final",
                        content=["Agreed to prioritise the Safari login bug."],
                    ),
                    SeedPage(
                        title="Planning 2025-Q2",
                        status="Draft",
                        content=["Roadmap review; dark mode slips to Q3."],
                    ),
                ],
            ),
        ]
    )


def notion_to_github_script(owner: str, repo: str, title: str, body: str) -> ModelScript:
    """The flow's rehearsal: search Notion for databases, file the GitHub issue, give the typed answer (the URL
    GitHub returned, the databases of the default workspace), then say so."""
    databases = [db.title for db in default_notion_seed().databases]
    return ModelScript(
        [
            {
                "tool": "API-post-search",
                "input": {
                    "query": "",
                    "filter": {"property": "object", "value": NOTION_SEARCH_DATABASE_FILTER_VALUE},
                },
            },
            {
                "tool": "create_issue",
                "input": {"owner": owner, "repo": repo, "title": title, "body": body},
            },
            {
                "tool": "StructuredOutput",
                "input": {"issue_url": "{{result:create_issue.html_url}}", "notion_databases": databases},
            },
            {"text": f'I searched the Notion workspace and created the GitHub issue "{title}" in {owner}/{repo}.'},
        ]
    )


def echo_script(text: str = "ok") -> ModelScript:
    """A script with no tool calls: the model just answers, for runs that only check the plumbing."""
    return ModelScript([{"text": text}])
