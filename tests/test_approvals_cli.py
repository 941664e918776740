"""Answers from anywhere: `python -m flows.approvals` lists the runs waiting for a person, shows the call one waits
on, and approves or denies it, bound to that call, recording who answered; bad input gets one line and changes
nothing. The run is a real notion_to_github on the local backend, paused on the test harness's Prefect API; the
answers come from real command lines on that API."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from agentbox.errors import ApprovalDenied
from agentbox.policy import RunPolicy
from agentbox.rehearsal.seed import notion_to_github_script
from flows.notion_to_github import IssueRequest, notion_to_github
from tests.support import WORKDIR, latest_artifact

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.parametrize("world", ["local"], indirect=True)]

APPROVE_ISSUES = RunPolicy(require_approval=["create_issue"], approval_timeout_seconds=180)


def approvals(*args: str, api: str | None = None) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": api or PREFECT_API_URL.value()}
    return subprocess.run([sys.executable, "-m", "flows.approvals", *args], cwd=WORKDIR, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def refused(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ")
    for text in expected:
        assert text in line, line


class CommandLinePerson:
    """Someone at another terminal: waits (in a thread) until `flows.approvals list` shows the run, then plays
    `answer(waiting) -> None` with the command line."""

    def __init__(self, run_name: str, answer) -> None:
        self.run_name, self.answer = run_name, answer
        self.error: BaseException | None = None
        self.shown: dict = {}
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._play,), daemon=True)

    def __enter__(self) -> CommandLinePerson:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._thread.join(240)
        if self.error and exc_info[0] is None:
            raise self.error

    def _play(self) -> None:
        try:
            deadline = time.monotonic() + 180
            while True:
                assert time.monotonic() < deadline, f"{self.run_name} never showed as waiting"
                listed = approvals("list", "--json")
                assert listed.returncode == 0, listed.stderr
                mine = [r for r in json.loads(listed.stdout)["runs"] if r["flow_run"] == self.run_name]
                if mine:
                    break
                time.sleep(0.5)
            shown = approvals("show", mine[0]["flow_run_id"], "--json")
            assert shown.returncode == 0, shown.stderr
            self.shown = json.loads(shown.stdout)
            self.answer(self.shown)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc


def run(world, repo: str):
    world.play(notion_to_github_script("octo", repo, "T", "B"))
    return asyncio.run(notion_to_github(IssueRequest(repo=f"octo/{repo}", title="T", body="B"), policy=APPROVE_ISSUES,
                                        return_state=True))


def test_a_paused_run_is_shown_and_approved_from_another_terminal_bound_to_its_call(world):
    repo = "cli-approved"
    answered: list[subprocess.CompletedProcess] = []

    def approve(shown: dict) -> None:
        run_id, call = shown["flow_run_id"], shown["pending"]["call"]
        stale = approvals("approve", run_id, "--call", "toolu_earlier:00000000")
        refused(stale, "The call toolu_earlier:00000000 is no longer pending", call)
        answered.append(approvals("approve", run_id, "--call", call, "--reason", "checked", "--as", "Ada at ops"))

    with CommandLinePerson(f"notion-to-github octo/{repo}", approve) as person:
        state = run(world, repo)

    assert state.is_completed(), state.result(raise_on_failure=False)
    pending = person.shown["pending"]
    assert (pending["tool"], pending["server"], pending["on_silence"]) == ("create_issue", "githubOfficial", "deny")
    assert pending["arguments"] == {"owner": "octo", "repo": repo, "title": "T", "body": "B"}
    assert pending["call"].split(":")[1] and person.shown["page"].endswith(person.shown["flow_run_id"])
    [reply] = answered
    assert reply.returncode == 0, reply.stderr
    assert "Approved create_issue" in reply.stdout and "as Ada at ops" in reply.stdout
    assert [i["title"] for i in world.issues(f"octo/{repo}")] == ["T"]
    [decision] = [d for d in state.result().session.run.decisions if d.by != "policy"]
    assert (decision.allowed, decision.answered_by, decision.reason) == (True, "Ada at ops", "checked")
    assert "| approved | prefect-ui | Ada at ops |" in asyncio.run(latest_artifact("notion-to-github"))
    listed = approvals("list")
    assert listed.returncode == 0 and f"octo/{repo}" not in listed.stdout  # nothing pending any more


def test_a_denial_from_the_command_line_fails_the_run_naming_the_reason_and_who(world, caplog):
    caplog.set_level("INFO")
    repo = "cli-denied"
    replies: list[subprocess.CompletedProcess] = []

    def deny(shown: dict) -> None:
        replies.append(approvals("deny", shown["flow_run_id"], "--reason", "not this repository"))

    with CommandLinePerson(f"notion-to-github octo/{repo}", deny):
        state = run(world, repo)

    assert replies[0].returncode == 0, replies[0].stderr
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ApprovalDenied) and "(not this repository)" in str(error)
    assert world.issues(f"octo/{repo}") == []
    who = replies[0].stdout.split(" as ")[1].split(";")[0]
    assert "@" in who  # user@host when --as is not given
    assert str(error).startswith(f"create_issue was not approved: {who} denied it on the prefect-ui")
    assert f"DENIED mcp__gateway__create_issue by a person (prefect-ui), answered by {who}," in caplog.text


def test_answers_to_runs_that_do_not_wait_are_refused_in_one_line(world):
    refused(approvals("approve", str(uuid.uuid4())), "There is no flow run")
    refused(approvals("show", "run-42"), "'run-42' is not a flow run id")
    refused(approvals("deny", str(uuid.uuid4()), "--reason", "x", api="http://127.0.0.1:9/api"),
            "Cannot reach the Prefect server at http://127.0.0.1:9/api")
    repo = "cli-finished"
    world.play(notion_to_github_script("octo", repo, "T", "B"))
    state = asyncio.run(notion_to_github(IssueRequest(repo=f"octo/{repo}"), policy=RunPolicy(require_approval=[]),
                                         return_state=True))
    assert state.is_completed(), state.result(raise_on_failure=False)
    refused(approvals("approve", str(state.state_details.flow_run_id), "--arguments", "[1, 2]"),
            "--arguments must be a JSON object")
    refused(approvals("approve", str(state.state_details.flow_run_id)), "is not waiting for an answer (it is "
            "Completed)")
