"""No write twice: the agent's writes are journaled outside the sandbox before they are made, so a retried run that
finds one done (or perhaps done) does not run the agent again, and within a run the same write is never made twice.

The fault is the one that opened second issues before: the sandbox dies right after `create_issue` succeeded, before
the agent's result, and the flow run is retried (FLOW_RETRIES=1). On both backends.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from agentbox.errors import WritesAlreadyMade
from agentbox.journal import Journal
from agentbox.rehearsal.seed import notion_to_github_script
from agentbox.sandboxes import get_backend
from agentbox.settings import load_settings
from flows.notion_to_github import IssueRequest, notion_to_github
from tests.test_leases import wait_for

pytestmark = pytest.mark.usefixtures("prefect_api")

THINKING = 300  # the model's pause after the issue was opened


def test_a_run_retried_after_its_sandbox_died_past_a_write_does_not_write_again(world):
    repo = f"octo/journal-{world.backend}"
    script = notion_to_github_script(*repo.split("/"), "Written once", "The sandbox dies after this.")
    script.steps[2].hang_seconds = THINKING
    model = world.play(script)
    states: list = []

    def run() -> None:
        flow = notion_to_github.with_options(retries=1, retry_delay_seconds=0)
        states.append(asyncio.run(flow(IssueRequest(repo=repo, title="Written once", body="B"), return_state=True)))

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_for(lambda: len(model.app.state.requests) >= 3 or not runner.is_alive(), 180,
                 "the model's turn after create_issue")
        assert len(world.issues(repo)) == 1
        (sandbox,) = world.alive()
        if world.e2b:
            assert world.e2b.vanish(sandbox)  # E2B loses the sandbox
        else:
            assert asyncio.run(get_backend(load_settings(), "local").kill(sandbox))
    finally:
        runner.join(240)
    (state,) = states
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, WritesAlreadyMade), error
    assert error.reason == "policy"
    assert (f'create_issue {{"body": "The sandbox dies after this.", "owner": "octo", "repo": "journal-{world.backend}", '
            '"title": "Written once"}: done') in str(error)
    assert "A person must decide" in str(error)
    assert len(world.issues(repo)) == 1  # never a second issue
    assert len([r for r in model.app.state.requests]) == 3  # the agent was not run again
    assert world.wait_gone(sandbox)


def test_within_a_run_the_same_write_is_refused_and_another_is_journaled():
    saved: list[list[dict]] = []

    async def save(entries: list[dict]) -> None:
        saved.append(entries)

    async def scenario() -> None:
        journal = Journal(save=save, secrets=["s3cr3t-value"])
        await journal.called("toolu_1", "create_issue", {"title": "A", "token": "s3cr3t-value"})
        assert saved[-1][0]["state"] == "called"  # saved before the call is made
        assert journal.repeats("create_issue", {"token": "s3cr3t-value", "title": "A"})  # key order aside
        await journal.finished("toolu_1", ok=False, result="502")
        assert journal.repeats("create_issue", {"title": "A", "token": "s3cr3t-value"}) is None  # it failed: retry
        await journal.called("toolu_2", "create_issue", {"title": "A", "token": "s3cr3t-value"})
        await journal.finished("toolu_2", ok=True, result="created")
        assert journal.repeats("create_issue", {"title": "A", "token": "s3cr3t-value"}).id == "toolu_2"
        assert journal.repeats("create_issue", {"title": "B", "token": "s3cr3t-value"}) is None
        assert [e["state"] for e in saved[-1]] == ["failed", "ok"]
        assert "s3cr3t-value" not in str(saved)

    asyncio.run(scenario())
