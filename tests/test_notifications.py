"""People are told, through Prefect's own automations and notification blocks, on a real server with its automation
service, a real worker and the real deployments (tests/deployed.py): a run paused for approval sends one message with
its call, the link to its page and the command that answers it, then a reminder at half the wait; answering with
that command completes the run; a denied run's failure sends its reason; no secret reaches the webhook; the
bootstrap is idempotent and `--notify ''` removes what it made."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from agentbox.rehearsal.stage import GITHUB_TOKEN
from deployments.notify import AUTOMATION_PREFIX, BLOCK_PREFIX
from tests.deployed import call, cli, final_state, trigger
from tests.support import WORKDIR

pytestmark = pytest.mark.usefixtures("no_leftovers")


def bootstrap(server, *flags: str) -> str:
    return cli(server, sys.executable, "-m", "deployments.bootstrap", "--sandboxes", "2", *flags)


async def ours(client) -> tuple[list[str], list[str]]:
    blocks = [d.name for d in await client.read_block_documents(include_secrets=False)
              if (d.name or "").startswith(BLOCK_PREFIX)]
    automations = [a.name for a in await client.read_automations() if a.name.startswith(AUTOMATION_PREFIX)]
    return sorted(blocks), sorted(automations)


def test_bootstrap_sets_notifications_up_once_per_url_and_removes_them(server, listener):
    assert "Notifications: 4 automations sending to webhook (1 block(s))" in bootstrap(server, "--notify",
                                                                                      listener.url)
    first = call(server, ours)
    bootstrap(server, "--notify", listener.url)
    assert call(server, ours) == first and len(first[0]) == 1 and len(first[1]) == 4
    assert "5 automations" in bootstrap(server, "--notify", listener.url, "--notify-success")  # runs that succeed
    assert "Notifications: none (removed)" in bootstrap(server, "--notify", "")
    assert call(server, ours) == ([], [])
    proc = subprocess.run([sys.executable, "-m", "deployments.bootstrap", "--notify", "hooks.example/x"], cwd=WORKDIR,
                          env=server.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: A --notify value is not an http(s) URL")
    assert call(server, ours) == ([], [])  # nothing changed
    bootstrap(server, "--notify", listener.url)


def answer_from(message: dict, server, *extra: str) -> subprocess.CompletedProcess:
    """Run the answering command a message carries, as the person who got it would (more options after it)."""
    command = re.search(r"python -m flows\.approvals approve \S+ --call \S+", message["body"]).group(0)
    return subprocess.run([sys.executable, *command.split()[1:], *extra], cwd=WORKDIR, env=server.env,
                          capture_output=True, text=True, timeout=120)


def test_a_paused_run_is_announced_reminded_and_answered_from_the_message(server, worker, listener):
    run_id = trigger(server, "notion-to-github/notion-to-github",
                     {"issue": {"repo": "octo/notified"}, "policy": {"approval_timeout_seconds": 40}})
    received, message = listener.wait_for("Approval needed: create_issue", run_id)
    paused_at = call(server, lambda c: c.read_flow_run(run_id)).state.timestamp.timestamp()
    body = message["body"]
    assert f"{server.ui}/runs/flow-run/{run_id}" in body  # the link, absolute
    assert '"repo": "notified"' in body and "silence then means deny" in body
    _, reminder = listener.wait_for("Reminder, approval still needed: create_issue", run_id, timeout=60)
    assert "min left" in reminder["body"]

    answered = answer_from(reminder, server, "--reason", "from the message")
    assert answered.returncode == 0, answered.stderr
    assert final_state(server, run_id).state.is_completed()
    about_run = [m["subject"].split(":")[0] for _, m in listener.received if run_id in m["body"]]
    assert about_run == ["Approval needed", "Reminder, approval still needed"]  # once each; nothing for success
    print(f"\npaused -> message: {received - paused_at:.2f} s")


def test_a_secret_in_the_calls_arguments_never_reaches_the_webhook(server, worker, listener):
    """The issue's body holds the run's GitHub token: the message shows it redacted; approved as shown, the gateway
    still refuses the call, and the failure's message says what was blocked, without the token."""
    run_id = trigger(server, "notion-to-github/notion-to-github",
                     {"issue": {"repo": "octo/leaky", "body": f"The token is {GITHUB_TOKEN}."}})
    _, message = listener.wait_for("Approval needed: create_issue", run_id)
    assert "The token is ***." in message["body"]
    assert answer_from(message, server).returncode == 0
    assert final_state(server, run_id).state.is_failed()
    _, failure = listener.wait_for("Run failed (policy): notion-to-github octo/leaky", run_id)
    assert "gateway call create_issue: a secret of this run in its arguments" in failure["body"]
    assert not any(GITHUB_TOKEN in json.dumps(m) for _, m in listener.received)
def test_a_denied_run_sends_its_failure_and_reason(server, worker, listener):
    run_id = trigger(server, "notion-to-github/notion-to-github", {"issue": {"repo": "octo/refused"}})
    _, message = listener.wait_for("Approval needed: create_issue", run_id)
    command = re.search(r"python -m flows\.approvals approve (\S+) --call (\S+)", message["body"])
    env = {**server.env, "PREFECT_API_URL": server.url}
    denied = subprocess.run([sys.executable, "-m", "flows.approvals", "deny", command.group(1), "--call",
                             command.group(2), "--reason", "wrong repository", "--as", "Ada"], cwd=WORKDIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert denied.returncode == 0, denied.stderr
    assert final_state(server, run_id).state.is_failed()
    _, failure = listener.wait_for("Run failed (policy): notion-to-github octo/refused", run_id)
    assert "create_issue was not approved: Ada denied it on the prefect-ui (wrong repository)" in failure["body"]
    assert f"{server.ui}/runs/flow-run/{run_id}" in failure["body"]
    assert os.environ.get("POLICY_REQUIRE_APPROVAL") == ""  # the suite's; the worker runs with the workflow's


def test_the_same_event_sent_twice_is_one_message(server, worker, listener):
    """What a retried task or a restarted automation service would do: the same fact (the same event id) arrives
    twice, and people get one message."""
    import asyncio
    import uuid

    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    from tasks.events import RUN_FAILED

    run_id = trigger(server, "notion-to-github/notion-to-github", {"issue": {"repo": "octo/twice"},
                                                                   "policy": {"require_approval": []}})
    assert final_state(server, run_id).state.is_completed()
    event = Event(event=RUN_FAILED, id=uuid.uuid4(),
                  resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"},
                  payload={"subject": "Run failed (agent): twice", "body": f"{run_id} sent twice"})

    async def send_twice() -> None:
        async with PrefectEventsClient(server.url) as events:
            await events.emit(event)
            await events.emit(event)

    asyncio.run(send_twice())
    listener.wait_for("Run failed (agent): twice", run_id)
    time.sleep(5)  # a second message would come within this
    assert [m["subject"] for _, m in listener.received if f"{run_id} sent twice" in m["body"]] == [
        "Run failed (agent): twice"]
