"""A person approves the agent's writes: the run pauses with a typed form, and the answer goes back to Claude.

Each test runs notion_to_github on both backends through the shared world (tests/worlds.py) with `create_issue`
needing approval. The person is played through the Prefect API, as the UI's form does it: the test waits until the
run is Paused and resumes it with the form's values (`resume_flow_run(id, run_input=...)`). What the person decided
must be what happened at GitHub's stand-in, in the run's log and in its artifact.
"""

from __future__ import annotations

import asyncio

import pytest

from agentbox.errors import ApprovalDenied
from agentbox.policy import RunPolicy
from agentbox.rehearsal.seed import notion_to_github_script
from flows.notion_to_github import IssueRequest, notion_to_github
from tests.support import Person, latest_artifact

pytestmark = pytest.mark.usefixtures("prefect_api")

APPROVE_ISSUES = RunPolicy(require_approval=["create_issue"], approval_timeout_seconds=180)  # a lost answer fails, not hangs


def run(repo: str, policy: RunPolicy = APPROVE_ISSUES):
    return asyncio.run(notion_to_github(IssueRequest(repo=repo, title="T", body="B"), policy=policy,
                                        return_state=True))


def test_an_approved_call_runs_and_the_decision_is_recorded(world, caplog):
    caplog.set_level("INFO")
    world.play(notion_to_github_script("octo", "approved", "T", "B"))
    with Person("notion-to-github octo/approved", {"decision": "approve", "reason": "looks right"}) as person:
        state = run("octo/approved")

    assert state.is_completed(), state.result(raise_on_failure=False)
    assert person.form["arguments"] == {"owner": "octo", "repo": "approved", "title": "T", "body": "B"}
    assert [i["title"] for i in world.issues("octo/approved")] == ["T"]
    [decision] = [d for d in state.result().session.run.decisions if d.by != "policy"]
    assert (decision.tool, decision.allowed, decision.by, decision.via, decision.reason) == (
        "mcp__gateway__create_issue", True, "person", "prefect-ui", "looks right")
    assert "ALLOWED mcp__gateway__create_issue by a person (prefect-ui)" in caplog.text
    markdown = asyncio.run(latest_artifact("notion-to-github"))
    assert "## Approvals" in markdown and "| approved | prefect-ui |" in markdown and "looks right" in markdown


def test_a_denied_call_never_runs_and_the_run_fails_naming_the_denial(world):
    world.play(notion_to_github_script("octo", "denied", "T", "B"))
    with Person("notion-to-github octo/denied", {"decision": "deny", "reason": "wrong repository"}):
        state = run("octo/denied")

    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ApprovalDenied)
    assert str(error).startswith("create_issue was not approved: a person denied it on the prefect-ui "
                                 "(wrong repository).")
    assert world.issues("octo/denied") == []
    markdown = asyncio.run(latest_artifact("notion-to-github"))
    assert "FAILED: create_issue was not approved" in markdown and "| denied | prefect-ui |" in markdown


def test_a_call_approved_with_edited_arguments_runs_as_edited(world):
    world.play(notion_to_github_script("octo", "edited", "Draft title", "B"))
    edited = {"owner": "octo", "repo": "edited", "title": "Reviewed title", "body": "Checked by a person."}
    with Person("notion-to-github octo/edited", {"decision": "approve", "arguments": edited}):
        state = asyncio.run(notion_to_github(IssueRequest(repo="octo/edited", title="Draft title", body="B"),
                                             policy=APPROVE_ISSUES, return_state=True))

    assert state.is_completed(), state.result(raise_on_failure=False)
    [issue] = world.issues("octo/edited")
    assert (issue["title"], issue["body"]) == ("Reviewed title", "Checked by a person.")
    [decision] = [d for d in state.result().session.run.decisions if d.by != "policy"]
    assert decision.allowed and decision.edited
    assert "(edited)" in asyncio.run(latest_artifact("notion-to-github"))


def test_silence_denies_by_default_and_approves_when_the_policy_says_so(world):
    world.play(notion_to_github_script("octo", "silent", "T", "B"))
    state = run("octo/silent", RunPolicy(require_approval=["create_issue"], approval_timeout_seconds=10))
    assert state.is_failed(), state
    assert "create_issue was not approved: nobody answered in time" in str(state.result(raise_on_failure=False))
    assert world.issues("octo/silent") == []

    state = run("octo/silent", RunPolicy(require_approval=["create_issue"], approval_timeout_seconds=10,
                                         on_silence="approve"))
    assert state.is_completed(), state.result(raise_on_failure=False)
    assert [i["title"] for i in world.issues("octo/silent")] == ["T"]
