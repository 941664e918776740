"""The rehearsal stage: every remote service of a run replaced by a local stand-in, for one run.

Starts the Notion, GitHub and Anthropic stand-ins, and writes a catalog file that points the real MCP servers at
them (notion-mcp-server's `BASE_URL`, github-mcp-server's `--gh-host`). The run then goes through the real sandbox,
gateway, MCP servers and `claude` binary, and nothing leaves the machine.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentbox.errors import ConfigError
from agentbox.rehearsal.github_api import github_app
from agentbox.rehearsal.model import ModelScript, model_app
from agentbox.rehearsal.notion_api import notion_app
from agentbox.rehearsal.seed import default_notion_seed
from agentbox.rehearsal.servers import BackgroundServer, free_loopback_host_for_port80
from agentbox.plan import StandIns

NOTION_TOKEN = "rehearsal-notion-token"
GITHUB_TOKEN = "rehearsal-github-token"


@dataclass
class Stage:
    """The running stand-ins of one rehearsal, and what the run needs to use them."""

    stand_ins: StandIns
    model: BackgroundServer
    notion: BackgroundServer
    github: BackgroundServer

    @property
    def issues(self) -> list[dict[str, Any]]:
        """Issues the GitHub stand-in recorded."""
        return list(self.github.app.state.issues)

    @property
    def model_requests(self) -> list[dict[str, Any]]:
        return list(self.model.app.state.requests)


def rehearsal_catalog(notion_url: str, github_host: str) -> dict[str, Any]:
    """Catalog entries that point the real servers at the stand-ins (the same servers as the built-in catalog)."""
    return {
        "notion": {
            "description": "notion-mcp-server against the rehearsal's Notion stand-in",
            "command": ["notion-mcp-server"],
            "env": {
                "BASE_URL": notion_url,
                "OPENAPI_MCP_HEADERS": json.dumps(
                    {"Authorization": "Bearer {{internalIntegrationToken}}", "Notion-Version": "2022-06-28"}
                ),
            },
            "tools": ["API-post-search"],
        },
        "githubOfficial": {
            "description": "github-mcp-server against the rehearsal's GitHub stand-in",
            "command": ["github-mcp-server", "stdio", "--gh-host", f"http://{github_host}"],
            "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "{{githubPersonalAccessToken}}"},
            "tools": ["create_issue"],
        },
    }


@contextmanager
def rehearsal_stage(script: ModelScript) -> Iterator[Stage]:
    """Start the stand-ins for one run; they stop, and the catalog file goes, when the block ends."""
    with ExitStack() as stack:
        try:
            github_host = free_loopback_host_for_port80()
            github = stack.enter_context(BackgroundServer(github_app(GITHUB_TOKEN), host=github_host, port=80))
        except (OSError, RuntimeError) as exc:
            raise ConfigError(
                f"The rehearsal's GitHub stand-in cannot listen on port 80 of a loopback address ({exc}).",
                "github-mcp-server's --gh-host ignores ports: run the rehearsal as root, or allow low ports with "
                "sysctl net.ipv4.ip_unprivileged_port_start=80.",
            ) from None
        notion = stack.enter_context(BackgroundServer(notion_app(NOTION_TOKEN, default_notion_seed())))
        model = stack.enter_context(BackgroundServer(model_app(script)))
        stack.callback(lambda: [server.request_stop() for server in (model, notion, github)])  # all at once
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentbox-rehearsal-")))
        catalog = workdir / "catalog.json"
        catalog.write_text(json.dumps(rehearsal_catalog(notion.url, github_host), indent=2))
        yield Stage(rehearsal_stand_ins(model.url, str(catalog)), model, notion, github)


def rehearsal_stand_ins(model_url: str = "http://127.0.0.1:9", catalog: str | None = None) -> StandIns:
    """What a rehearsal's plan puts in place of real settings: the stage's addresses and dummy credentials. Without
    a stage (placeholders) it is enough to check a rehearsal's plan before anything starts."""
    settings = {
        "anthropic_base_url": model_url,
        "anthropic_api_key": "rehearsal-anthropic-key",
        "notion_integration_token": NOTION_TOKEN,
        "github_token": GITHUB_TOKEN,
    }
    return StandIns(settings={**settings, **({"local_mcp_catalog": catalog} if catalog else {})})
