"""Secrets never appear in logs, stdout/stderr, results, artifacts or Prefect's database.

A real (not rehearsal) run: the secrets come from settings, and the stand-ins accept only those exact values, so a
success proves the secrets went all the way through the pipeline; then every place a user or Prefect can see is
searched for them, after a success and after a failure.
"""

from __future__ import annotations

import asyncio

import pytest

from agentbox.errors import AgentboxError
from agentbox.rehearsal.seed import notion_to_github_script
from flows.notion_to_github import IssueRequest, notion_to_github
from tests.support import everything_prefect_stored
from tests.worlds import CREDENTIALS as SECRETS

pytestmark = pytest.mark.usefixtures("prefect_api")

WRONG_GITHUB_TOKEN = "ghp_SECRETwrongVALUE9876543210fedcba"
ISSUE = IssueRequest(repo="octo/secret", title="T", body="B")


def assert_no_secret(text: str, where: str, world) -> None:
    e2b_key = [world.e2b.env["E2B_API_KEY"]] if world.e2b else []
    for value in [*SECRETS.values(), WRONG_GITHUB_TOKEN, *e2b_key]:
        assert value not in text, f"a secret appeared in {where}"


def test_no_secret_anywhere_after_a_success_and_a_failure(world, monkeypatch, capfd, caplog):
    """On each backend: the stand-ins accept only the real values, so the success proves they went all the way."""
    world.play(notion_to_github_script("octo", "secret", "T", "B"))
    caplog.set_level("INFO")
    before = len(world.issues("octo/secret"))

    result = asyncio.run(notion_to_github(ISSUE))
    assert result.rehearsal is False and result.session.backend == world.backend
    assert len(world.issues("octo/secret")) == before + 1  # the secrets went through settings, gateway and servers

    monkeypatch.setenv("GITHUB_TOKEN", WRONG_GITHUB_TOKEN)
    state = asyncio.run(notion_to_github(ISSUE, return_state=True))
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, AgentboxError)
    assert "GitHub refused" in str(error)

    out, err = capfd.readouterr()
    assert_no_secret(out + err, "stdout/stderr", world)
    assert f"Sandbox {result.session.sandbox_id}" in caplog.text and "GitHub refused" in caplog.text  # the check below means something
    assert_no_secret(caplog.text, "log records and their tracebacks", world)
    assert_no_secret(result.model_dump_json(), "the result", world)
    assert_no_secret(str(error), "the error", world)
    stored = asyncio.run(everything_prefect_stored())
    assert "notion-to-github octo/secret" in stored and "Outcome" in stored  # runs and artifacts are in the dump
    assert_no_secret(stored, "Prefect's database", world)
