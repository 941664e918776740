"""End to end, offline: notion_to_github in rehearsal on the local backend, through a real Prefect API.

Everything is real (bubblewrap sandbox, gateway, notion-mcp-server, github-mcp-server, the claude binary, Prefect)
except Anthropic, Notion and GitHub, which are the rehearsal's stand-ins.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agentbox.missions.notion_to_github import DEFAULT_BODY, DEFAULT_TITLE, POLICY
from flows.notion_to_github import IssueRequest, RecordedIssue, notion_to_github
from tests.support import WORKDIR, latest_artifact

pytestmark = pytest.mark.usefixtures("prefect_api", "no_leftovers")


def test_notion_to_github_rehearsal_opens_the_issue_in_the_github_stand_in():
    result = asyncio.run(notion_to_github(IssueRequest(repo="octo-org/demo-repo"), rehearsal=True))

    assert result.rehearsal is True
    assert result.rehearsal_issues == [
        RecordedIssue(repo="octo-org/demo-repo", number=1, title=DEFAULT_TITLE, body=DEFAULT_BODY)
    ]
    assert result.issue_number == 1
    assert result.issue_url == "https://github.com/octo-org/demo-repo/issues/1"
    assert result.notion_databases == ["Product Roadmap", "Bug Tracker", "Meeting Notes"]
    calls = result.session.run.tool_calls
    assert [(c.server, c.tool, c.ok) for c in calls] == [
        ("gateway", "API-post-search", True),
        ("gateway", "create_issue", True),
        ("", "StructuredOutput", True),  # the typed answer, checked against the two calls before it
    ]
    assert result.session.run.mcp_servers == {"gateway": "connected"}
    assert result.turns == 4
    assert set(result.session.steps) == {"slot", "create", "gateway_ready", "register", "prompt", "kill"}
    assert result.session.tools == len(POLICY.tools)  # the mission's tools of notion's and github's, one gateway
    assert "octo-org/demo-repo" in result.answer

    markdown = asyncio.run(latest_artifact("notion-to-github"))
    assert "REHEARSAL" in markdown
    assert "succeeded" in markdown
    assert "https://github.com/octo-org/demo-repo/issues/1" in markdown


def test_cli_prints_only_the_result_model_with_json():
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.notion_to_github", "--repo", "octo/cli-demo", "--rehearsal", "--json"],
        cwd=WORKDIR, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout holds the result model and nothing else
    assert result["rehearsal"] is True
    assert result["issue_url"] == "https://github.com/octo/cli-demo/issues/1"
    assert "REHEARSAL" in proc.stderr  # the logs say it too


def test_cli_without_a_server_runs_on_a_temporary_one_it_started_first_and_stops():
    """With no PREFECT_API_URL and no kept server, the command line starts Prefect's temporary server itself, before
    its imports, runs there, and leaves no server behind."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.notion_to_github", "--repo", "octo/temporary", "--rehearsal", "--json"],
        cwd=WORKDIR, env={**env, "AGENTBOX_PREFECT_SERVER": ""}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["issue_url"] == "https://github.com/octo/temporary/issues/1"
    assert "Prefect: a temporary server, for this run only" in proc.stderr
    assert "Starting temporary server" not in proc.stderr  # not a second one of Prefect's own
    port = re.search(r"View at http://127\.0\.0\.1:(\d+)/runs/flow-run/", proc.stderr).group(1)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(port))) != 0  # stopped with the command
    assert not [c for c in command_lines() if f"create_app --host 127.0.0.1 --port {port} " in c]


def command_lines() -> list[str]:
    lines = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(path.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone meanwhile
            continue
    return lines


def test_cli_human_output_follows_the_seed():
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.notion_to_github", "--repo", "octo/human", "--rehearsal", "--title", "Hello"],
        cwd=WORKDIR, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("REHEARSAL")
    for expected in ("Sandbox created: local-", "MCP gateway: http://127.0.0.1:", "Claude connected", "Agent answer (structured):",
                     "Issue: https://github.com/octo/human/issues/1"):
        assert expected in out
