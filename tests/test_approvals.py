"""A person approves the agent's writes: the run pauses with a typed form, and the answer goes back to Claude.

Each test runs notion_to_github on both backends through the shared world (tests/worlds.py) with `create_issue`
needing approval. The person is played through the Prefect API, as the UI's form does it: the test waits until the
run is Paused and resumes it with the form's values (`resume_flow_run(id, run_input=...)`). What the person decided
must be what happened at GitHub's stand-in, in the run's log and in its artifact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from agentbox.errors import ApprovalDenied
from agentbox.policy import RunPolicy
from agentbox.rehearsal.seed import notion_to_github_script
from flows.agent_session import EXAMPLE_MCP, SessionRequest, agent_session
from flows.notion_to_github import IssueRequest, notion_to_github
from tests.support import WORKDIR, Person, everything_prefect_stored, latest_artifact
from tests.worlds import CREDENTIALS

pytestmark = pytest.mark.usefixtures("prefect_api")

APPROVE_ISSUES = RunPolicy(require_approval=["create_issue"], approval_timeout_seconds=180)  # a lost answer fails, not hangs


def run(world, case: str, policy: RunPolicy = APPROVE_ISSUES, title: str = "T"):
    """notion_to_github on `octo/<case>-<backend>` (GitHub's stand-in serves every test of the session), with the
    model playing the mission; returns the final state."""
    repo = f"{case}-{world.backend}"
    world.play(notion_to_github_script("octo", repo, title, "B"))
    return asyncio.run(notion_to_github(IssueRequest(repo=f"octo/{repo}", title=title, body="B"), policy=policy,
                                        return_state=True))


def test_an_approved_call_runs_and_the_decision_is_recorded(world, caplog):
    caplog.set_level("INFO")
    repo = f"approved-{world.backend}"
    with Person(f"notion-to-github octo/{repo}", {"decision": "approve", "reason": "looks right"}) as person:
        state = run(world, "approved")

    assert state.is_completed(), state.result(raise_on_failure=False)
    assert person.form["arguments"] == {"owner": "octo", "repo": repo, "title": "T", "body": "B"}
    assert [i["title"] for i in world.issues(f"octo/{repo}")] == ["T"]
    [decision] = [d for d in state.result().session.run.decisions if d.by != "policy"]
    assert (decision.tool, decision.allowed, decision.by, decision.via, decision.reason) == (
        "mcp__gateway__create_issue", True, "person", "prefect-ui", "looks right")
    assert "ALLOWED mcp__gateway__create_issue by a person (prefect-ui)" in caplog.text
    markdown = asyncio.run(latest_artifact("notion-to-github"))
    assert "## Approvals" in markdown and "| approved | prefect-ui |" in markdown and "looks right" in markdown


def test_a_person_slower_than_the_sandboxs_lease_finds_it_alive(world, monkeypatch):
    """The run renews its sandbox's lease while it waits for a person: an answer after two leases goes through. (The
    lease also covers E2B's create, which starts the gateway: 5 s was too short for a loaded machine.)"""
    lease, thinks = 8, 16
    monkeypatch.setenv("SANDBOX_LEASE_SECONDS", str(lease))
    with Person(f"notion-to-github octo/slow-person-{world.backend}", {"decision": "approve"}, thinks_for=thinks):
        state = run(world, "slow-person")
    assert state.is_completed(), state.result(raise_on_failure=False)
    assert len(world.issues(f"octo/slow-person-{world.backend}")) == 1
    if world.e2b:  # the renewals E2B received while the run waited
        renewals = [r for r in world.e2b.requests if r.path == f"/sandboxes/{state.result().session.sandbox_id}/timeout"]
        assert len(renewals) >= thinks / (lease / 3) - 2


def test_a_denied_call_never_runs_and_the_run_fails_naming_the_denial(world):
    repo = f"denied-{world.backend}"
    with Person(f"notion-to-github octo/{repo}", {"decision": "deny", "reason": "wrong repository"}):
        state = run(world, "denied")

    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ApprovalDenied)
    assert str(error).startswith("create_issue was not approved: a person denied it on the prefect-ui "
                                 "(wrong repository).")
    assert world.issues(f"octo/{repo}") == []
    markdown = asyncio.run(latest_artifact("notion-to-github"))
    assert "FAILED (policy): create_issue was not approved" in markdown and "| denied | prefect-ui |" in markdown


def test_a_call_approved_with_edited_arguments_runs_as_edited(world):
    repo = f"edited-{world.backend}"
    edited = {"owner": "octo", "repo": repo, "title": "Reviewed title", "body": "Checked by a person."}
    with Person(f"notion-to-github octo/{repo}", {"decision": "approve", "arguments": edited}):
        state = run(world, "edited", title="Draft title")

    assert state.is_completed(), state.result(raise_on_failure=False)
    [issue] = world.issues(f"octo/{repo}")
    assert (issue["title"], issue["body"]) == ("Reviewed title", "Checked by a person.")
    [decision] = [d for d in state.result().session.run.decisions if d.by != "policy"]
    assert decision.allowed and decision.edited
    assert "(edited)" in asyncio.run(latest_artifact("notion-to-github"))


def test_silence_denies_by_default_and_approves_when_the_policy_says_so(world):
    repo = f"octo/silent-{world.backend}"
    state = run(world, "silent", RunPolicy(require_approval=["create_issue"], approval_timeout_seconds=10))
    assert state.is_failed(), state
    assert "create_issue was not approved: nobody answered in time" in str(state.result(raise_on_failure=False))
    assert world.issues(repo) == []

    state = run(world, "silent", RunPolicy(require_approval=["create_issue"], approval_timeout_seconds=10,
                                           on_silence="approve"))
    assert state.is_completed(), state.result(raise_on_failure=False)
    assert [i["title"] for i in world.issues(repo)] == ["T"]


def test_a_run_cancelled_while_it_waits_ends_cancelled_with_its_sandbox_gone(world):
    repo = f"cancelled-{world.backend}"
    with Person(f"notion-to-github octo/{repo}", None):
        state = run(world, "cancelled")

    assert state.is_cancelled(), state
    assert state.message.startswith("The run was cancelled while it waited for approval; its sandbox was torn down.")
    assert world.issues(f"octo/{repo}") == []
    assert "FAILED (cancelled): The run was cancelled while it waited for approval" in asyncio.run(latest_artifact("notion-to-github"))
    assert world.alive() == set()


def test_a_secret_in_a_calls_arguments_never_reaches_the_approval_form(world):
    """The agent puts a token into the issue it wants to open: the form shows it redacted (Prefect stores the form),
    and approving what is shown does not let the token out: the gateway still refuses the call."""
    token = CREDENTIALS["GITHUB_TOKEN"]
    repo = f"leak-{world.backend}"
    world.play([{"tool": "create_issue", "input": {"owner": "octo", "repo": repo, "title": "hi",
                                                    "body": f"the token is {token}"}}, {"text": "Done."}])
    mcp = {**EXAMPLE_MCP, "githubOfficial": {"githubPersonalAccessToken": "${GITHUB_TOKEN}"}}
    request = SessionRequest(prompt="Do what the page says.", mcp=mcp, policy=APPROVE_ISSUES)
    with Person(f"agent-session {'+'.join(mcp)}", {"decision": "approve"}) as person:
        state = asyncio.run(agent_session(request, return_state=True))

    assert person.form["arguments"]["body"] == "the token is ***"
    assert state.is_failed() and "PolicyViolation" in state.message, state
    assert world.issues(f"octo/{repo}") == []
    assert token not in asyncio.run(everything_prefect_stored())


class Terminal:
    """A command run on a pseudo-terminal (its stdin and stderr, where it asks), stdout kept apart for the result."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.primary, secondary = os.openpty()
        self.proc = subprocess.Popen(command, cwd=WORKDIR, env=env, stdin=secondary, stderr=secondary,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        os.close(secondary)
        self.screen = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.primary, 4096)
            except OSError:  # the command closed its side
                return
            if not data:
                return
            self.screen += data.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before showing {text!r}: {self.screen[-3000:]}"
            assert time.monotonic() < deadline, f"never showed {text!r}: {self.screen[-3000:]}"
            time.sleep(0.1)

    def type(self, line: str) -> None:
        os.write(self.primary, line.encode() + b"\n")

    def finish(self, timeout: float = 180) -> tuple[int, str]:
        stdout, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        os.close(self.primary)
        return self.proc.returncode, stdout


@pytest.mark.parametrize("world", ["local"], indirect=True)
@pytest.mark.parametrize("answer", ["y", "n not on this repository"])
def test_the_cli_asks_on_its_terminal_with_approve(world, monkeypatch, answer):
    """`--approve` shows the call and its arguments on the terminal and takes y or n (and a reason)."""
    from prefect.settings import PREFECT_API_URL

    repo = f"octo/terminal-{answer[0]}"
    world.play(notion_to_github_script("octo", repo.split("/")[1], "T", "B"))
    monkeypatch.delenv("POLICY_REQUIRE_APPROVAL")  # the mission's own policy: create_issue needs a person
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    terminal = Terminal([sys.executable, "-m", "flows.notion_to_github", "--repo", repo, "--title", "T", "--body",
                         "B", "--approve"], env)
    try:
        terminal.wait_for("Approvals: calls of create_issue are asked on this terminal (silence after 3600 s means "
                          "deny).")
        terminal.wait_for("Allow create_issue? [y/n, or n followed by a reason]")
        assert 'The agent wants to call create_issue on githubOfficial with:\r\n{\r\n  "body": "B",' in terminal.screen
        terminal.type(answer)
        code, stdout = terminal.finish()
    finally:
        if terminal.proc.poll() is None:
            os.killpg(terminal.proc.pid, signal.SIGTERM)
            terminal.proc.wait(60)
    if answer == "y":
        assert code == 0, terminal.screen[-3000:]
        assert f"Issue: https://github.com/{repo}/issues/1" in stdout
        assert [i["title"] for i in world.issues(repo)] == ["T"]
        assert "ALLOWED mcp__gateway__create_issue by a person (terminal)" in terminal.screen
    else:
        assert code != 0 and stdout == ""
        assert world.issues(repo) == []
        assert terminal.screen.rstrip().splitlines()[-1] == (
            "error: create_issue was not approved: a person denied it on the terminal (not on this repository). "
            "Run it again to ask again; see the run's artifact for every decision.")
