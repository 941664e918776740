"""Secrets never appear in logs, stdout/stderr, results, artifacts or Prefect's database.

A real (not rehearsal) run: the secrets come from settings, and the stand-ins accept only those exact values, so a
success proves the secrets went all the way through the pipeline; then every place a user or Prefect can see is
searched for them, after a success and after a failure.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.logging.handlers import APILogHandler

from agentbox.errors import AgentboxError
from agentbox.rehearsal.github_api import github_app
from agentbox.rehearsal.model import model_app
from agentbox.rehearsal.notion_api import notion_app
from agentbox.rehearsal.seed import default_notion_seed, notion_to_github_script
from agentbox.rehearsal.servers import BackgroundServer, free_loopback_host_for_port80
from agentbox.rehearsal.stage import rehearsal_catalog
from flows.notion_to_github import notion_to_github

pytestmark = pytest.mark.usefixtures("prefect_api", "no_leftovers")

SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-SECRETanthropicVALUE0123456789",
    "NOTION_INTEGRATION_TOKEN": "ntn_SECRETnotionVALUE0123456789",
    "GITHUB_TOKEN": "ghp_SECRETgithubVALUE0123456789abcdef",
}
WRONG_GITHUB_TOKEN = "ghp_SECRETwrongVALUE9876543210fedcba"


@pytest.fixture
def real_services_on_this_machine(tmp_path, monkeypatch):
    """Stand-ins that accept only the real-looking secrets, wired in through ordinary settings."""
    github_host = free_loopback_host_for_port80()
    with (
        BackgroundServer(github_app(SECRETS["GITHUB_TOKEN"]), host=github_host, port=80) as github,
        BackgroundServer(notion_app(SECRETS["NOTION_INTEGRATION_TOKEN"], default_notion_seed())) as notion,
        BackgroundServer(model_app(notion_to_github_script("octo", "secret", "T", "B"))) as model,
    ):
        catalog = tmp_path / "catalog.json"
        catalog.write_text(json.dumps(rehearsal_catalog(notion.url, github_host)))
        for name, value in SECRETS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", model.url)
        monkeypatch.setenv("LOCAL_MCP_CATALOG", str(catalog))
        yield github


async def everything_prefect_stored() -> str:
    await APILogHandler.aflush()
    async with get_client() as client:
        logs = await client.read_logs()
        artifacts = await client.read_artifacts()
        runs = await client.read_flow_runs()
    api_view = json.dumps([m.model_dump(mode="json") for m in [*logs, *artifacts, *runs]])
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    rows = []
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            rows += [repr(row) for row in conn.execute(f'SELECT * FROM "{table}"')]
    return api_view + "\n".join(rows)


def assert_no_secret(text: str, where: str) -> None:
    for value in [*SECRETS.values(), WRONG_GITHUB_TOKEN]:
        assert value not in text, f"a secret appeared in {where}"


def test_no_secret_anywhere_after_a_success_and_a_failure(real_services_on_this_machine, monkeypatch, capfd, caplog):
    github = real_services_on_this_machine
    caplog.set_level("INFO")

    result = asyncio.run(notion_to_github("octo/secret", title="T", body="B"))
    assert result.rehearsal is False
    assert result.issue_url == "https://github.com/octo/secret/issues/1"
    assert len(github.app.state.issues) == 1  # the real secrets went through settings, gateway and MCP servers

    monkeypatch.setenv("GITHUB_TOKEN", WRONG_GITHUB_TOKEN)
    state = asyncio.run(notion_to_github("octo/secret", title="T", body="B", return_state=True))
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, AgentboxError)
    assert "GitHub refused" in str(error)

    out, err = capfd.readouterr()
    assert_no_secret(out + err, "stdout/stderr")
    assert "Sandbox local-" in caplog.text and "GitHub refused" in caplog.text  # the check below means something
    assert_no_secret(caplog.text, "log records and their tracebacks")
    assert_no_secret(result.model_dump_json(), "the result")
    assert_no_secret(str(error), "the error")
    stored = asyncio.run(everything_prefect_stored())
    assert "notion-to-github octo/secret" in stored and "Outcome" in stored  # runs and artifacts are in the dump
    assert_no_secret(stored, "Prefect's database")
