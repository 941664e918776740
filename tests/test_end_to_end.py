"""The end-to-end suite, run on both backends with the same assertions: a production run (not a rehearsal) of each
flow and of the CLI, through a real Prefect API, the real claude binary, gateway and MCP servers, against stand-ins of
the remote services (see tests/worlds.py). The backend is never passed: it follows from the settings, as for a user.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from agentbox.rehearsal.seed import notion_to_github_script
from flows.agent_session import EXAMPLE_MCP, SessionRequest, agent_session
from flows.notion_to_github import IssueRequest, notion_to_github
from tests.support import WORKDIR, latest_artifact

pytestmark = pytest.mark.usefixtures("prefect_api")

DATABASES = ["Product Roadmap", "Bug Tracker", "Meeting Notes"]


def test_notion_to_github_opens_the_issue(world):
    world.play(notion_to_github_script("octo", "both", "Weekly summary", "From the agent."))
    before = len(world.issues("octo/both"))

    result = asyncio.run(notion_to_github(IssueRequest(repo="octo/both", title="Weekly summary", body="From the agent.")))

    assert result.session.backend == world.backend  # chosen by the settings: E2B_API_KEY set or not
    assert result.rehearsal is False and result.rehearsal_issues == []
    number = before + 1
    assert (result.issue_number, result.issue_url) == (number, f"https://github.com/octo/both/issues/{number}")
    issue = world.issues("octo/both")[-1]
    assert (issue["number"], issue["title"]) == (number, "Weekly summary")
    assert issue["body"].startswith("From the agent.")
    assert result.notion_databases == DATABASES
    assert [(c.server, c.tool, c.ok) for c in result.session.run.tool_calls] == [
        ("gateway", "API-post-search", True),
        ("gateway", "create_issue", True),
    ]
    assert result.session.run.mcp_servers == {"gateway": "connected"}
    assert set(result.session.steps) == {"create", "gateway_ready", "register", "prompt", "kill"}
    assert result.session.tools > 20  # notion's and github's tools through one gateway
    assert result.session.sandbox_id not in world.alive()

    markdown = asyncio.run(latest_artifact("notion-to-github"))
    assert "succeeded" in markdown and "REHEARSAL" not in markdown
    assert f"`{result.session.sandbox_id}` on `{world.backend}`" in markdown
    assert f"(https://github.com/octo/both/issues/{number})" in markdown


def test_agent_session_runs_any_prompt_with_the_servers_it_is_given(world, caplog):
    caplog.set_level("INFO")
    world.play([{"tool": "API-post-search", "input": {"query": "roadmap"}}, {"text": "Found the roadmap."}])

    result = asyncio.run(agent_session(SessionRequest(prompt="Find our roadmap in Notion.", mcp=EXAMPLE_MCP)))

    assert result.backend == world.backend
    assert f"Backend: {world.backend}" in caplog.text  # the choice is logged
    assert result.run.result == "Found the roadmap."
    assert [(c.tool, c.ok) for c in result.run.tool_calls] == [("API-post-search", True)]
    assert "Product Roadmap" in result.run.tool_calls[0].output  # the Notion stand-in answered, with the real token
    assert 0 < result.tools < 30  # Notion's tools only: GitHub was not asked for
    assert result.sandbox_id not in world.alive()
    assert f"`{result.sandbox_id}` on `{world.backend}`" in asyncio.run(latest_artifact("agent-session"))


def test_the_cli_reports_the_run_the_same_way(world):
    from prefect.settings import PREFECT_API_URL

    world.play(notion_to_github_script("octo", "cli", "From the CLI", "B"))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [sys.executable, "-m", "flows.notion_to_github", "--repo", "octo/cli", "--title", "From the CLI"]

    human = subprocess.run(command, cwd=WORKDIR, env=env, capture_output=True, text=True, timeout=300)
    assert human.returncode == 0, human.stderr[-3000:]
    lines = human.stdout.splitlines()
    sandbox_line = next(line for line in lines if line.startswith("Sandbox created: "))
    assert sandbox_line.endswith(f"({world.backend})")
    assert "Claude connected to the gateway" in lines
    assert "Tool calls: API-post-search, create_issue" in lines
    number = len(world.issues("octo/cli"))
    assert f"Issue: https://github.com/octo/cli/issues/{number}" in lines
    assert "Notion databases: " + ", ".join(DATABASES) in lines
    assert not any("REHEARSAL" in line for line in lines)

    as_json = subprocess.run([*command, "--json"], cwd=WORKDIR, env=env, capture_output=True, text=True, timeout=300)
    assert as_json.returncode == 0, as_json.stderr[-3000:]
    result = json.loads(as_json.stdout)  # stdout holds the result model and nothing else
    assert result["session"]["backend"] == world.backend
    assert result["issue_url"] == f"https://github.com/octo/cli/issues/{number + 1}"
