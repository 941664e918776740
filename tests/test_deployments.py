"""The deployments on a real Prefect server, as a user runs them (the server, deployments and worker of
tests/deployed.py): runs are triggered through the API, cancelled, limited to two sandboxes at once, and a served
schedule fires on its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.states import Cancelling

from tasks.sandbox import SLOT_LEASE_SECONDS
from tests.deployed import SESSION, call, final_state, start, trigger
from tests.support import PROJECT, WORKDIR, sandbox_dirs, stop_process_group
from tests.worlds import World

pytestmark = pytest.mark.usefixtures("no_leftovers")
DEPLOYMENTS = {"notion-to-github", "notion-to-github-batch", "agent-session", "reap-sandboxes"}


def test_a_served_schedule_fires_on_its_own(server, tmp_path):
    """First, on the fresh server: a name served after `prefect deploy` made it keeps the deployed storage settings
    and its served runs cannot load their code (Prefect 3.9.1), so one name is either served or deployed."""
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        if deployment["name"] == "reap-sandboxes":
            deployment["schedules"] = [{"interval": 5}]
    served = tmp_path / "prefect.yaml"
    served.write_text(yaml.safe_dump(spec))
    log = tmp_path / "serve.log"
    server.logs.append(log)
    proc = start([sys.executable, "-m", "deployments.serve", "--prefect-yaml", str(served)], server.env, log)

    async def scheduled_runs(client: PrefectClient):
        reaper = await client.read_deployment_by_name("reap-sandboxes/reap-sandboxes")
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id={"any_": [reaper.id]}, state={"type": {"any_": ["COMPLETED"]}}),
        )
        return reaper, runs

    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                reaper, runs = call(server, scheduled_runs)
            except Exception:  # noqa: BLE001 - not served yet
                reaper, runs = None, []
            if any(r.auto_scheduled and r.work_pool_name is None for r in runs):  # run by the serving process
                break
            assert time.monotonic() < deadline, (
                "no scheduled reaper run completed\n" + log.read_text()[-3000:]
            )
            time.sleep(0.5)
        assert reaper.work_pool_name is None  # served by the process, not a worker
        assert [s.schedule.interval.total_seconds() for s in reaper.schedules] == [5]
    finally:
        stop_process_group(proc)


def test_before_the_bootstrap_a_session_refuses_to_run_without_its_limit(server, services):
    """The limit is strict: on a server that lacks it, a session says so instead of running unlimited."""
    world = World("local", services)
    try:
        env = {**server.env, **world.environment(world.model([{"text": "unused"}]))}
        proc = subprocess.run(
            [sys.executable, "-m", "flows.agent_session", "--prompt", "hi", "--mcp", json.dumps(SESSION["request"]["mcp"])],
            cwd=WORKDIR, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        world.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr  # the flow's log lines, then one line saying what to do
    assert proc.stderr.strip().splitlines()[-1:] == [
        "error: The Prefect concurrency limit 'agentbox-sandboxes' does not exist, so sessions cannot be counted. "
        "Create it with `python -m deployments.bootstrap`, or set SANDBOX_CONCURRENCY_LIMIT= to run without one."
    ]
    assert sandbox_dirs() == []


def test_bootstrap_and_deploy_all_create_the_deployments_with_their_schedules(server, deployed):
    assert "Work pool 'agentbox' (process): created" in deployed.bootstrap[0]
    assert "already there" in deployed.bootstrap[1] and "2 sandboxes at once" in deployed.bootstrap[1]

    async def read(client: PrefectClient):
        deployments = await client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=list(DEPLOYMENTS)))
        )
        limit = await client.read_global_concurrency_limit_by_name("agentbox-sandboxes")
        return {d.name: d for d in deployments}, limit

    deployments, limit = call(server, read)
    assert set(deployments) == DEPLOYMENTS
    assert limit.limit == 2
    assert all(d.work_pool_name == "agentbox" for d in deployments.values())
    daily = deployments["notion-to-github"].schedules
    assert [(s.schedule.cron, s.schedule.timezone) for s in daily] == [("0 8 * * *", "Europe/Paris")]
    assert [s.schedule.interval.total_seconds() for s in deployments["reap-sandboxes"].schedules] == [300]
    assert deployments["agent-session"].schedules == []
    # The UI's run form: descriptions and defaults from the pydantic parameter models, no secret among them.
    form = deployments["notion-to-github"].parameter_openapi_schema
    issue = form["definitions"]["IssueRequest"]["properties"]
    assert issue["repo"]["description"].startswith("GitHub repository") and "pattern" in issue["repo"]
    assert issue["title"]["default"] and form["properties"]["rehearsal"]["description"].startswith("Replace")
    # choices are selects with a default, not a "str / None" type picker
    assert (form["properties"]["backend"]["enum"], form["properties"]["backend"]["default"]) == (["auto", "local", "e2b"], "auto")
    policy = form["definitions"]["RunPolicy"]["properties"]
    assert policy["on_silence"]["enum"] == ["deny", "approve"] and policy["require_approval"]["description"]
    session_form = deployments["agent-session"].parameter_openapi_schema
    assert session_form["definitions"]["SessionRequest"]["properties"]["mcp"]["description"].startswith("MCP servers")


def test_a_triggered_rehearsal_completes_and_reports_in_an_artifact(server, worker):
    started = time.monotonic()
    # unattended: this run's policy lifts the approval the workflow asks for (tests/test_ui.py gives it in the UI)
    run_id = trigger(server, "notion-to-github/notion-to-github",
                     {"issue": {"repo": "octo/deployed"}, "policy": {"require_approval": []}})
    run = final_state(server, run_id)
    elapsed = time.monotonic() - started
    assert run.state.is_completed(), run.state
    assert run.name == "notion-to-github octo/deployed"

    async def read(client: PrefectClient):
        artifacts = await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        states = await client.read_flow_run_states(run_id)
        return artifacts, states

    artifacts, states = call(server, read)
    markdown = next(str(a.data) for a in artifacts if a.key == "notion-to-github")
    assert "succeeded" in markdown and "REHEARSAL" in markdown
    assert "https://github.com/octo/deployed/issues/1" in markdown
    # Where the time goes, from the API call to Completed (printed for the record: pytest -s).
    times = {s.name: s.timestamp for s in states}
    steps = dict(re.findall(r"^\| (\w+) \| ([\d.]+) \|$", markdown, re.M))
    print(f"\ntriggered run: {elapsed:.1f} s from API call to Completed; "
          f"scheduled->pending {(times['Pending'] - times['Scheduled']).total_seconds():.1f} s, "
          f"pending->running {(times['Running'] - times['Pending']).total_seconds():.1f} s, "
          f"running->completed {(times['Completed'] - times['Running']).total_seconds():.1f} s; session steps {steps}")


def test_a_triggered_batch_runs_every_session_and_reports_them_in_one_table(server, worker):
    """The deployed batch with its own parameters (two repositories, a rehearsal): both sessions complete under
    the server's limit of two sandboxes, and the run's table artifact has one row per session."""
    run_id = trigger(server, "notion-to-github-batch/notion-to-github-batch", {"policy": {"require_approval": []}})
    run = final_state(server, run_id)
    assert run.state.is_completed(), run.state
    assert run.state.message == "2 of 2 sessions completed, 0 failed."

    async def read(client: PrefectClient):
        return await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))

    artifacts = {a.key: a for a in call(server, read)}
    rows = json.loads(artifacts["notion-to-github-batch"].data)
    assert [(r["repo"], r["outcome"], r["reason"]) for r in rows] == [
        ("octo-org/demo", "completed", None), ("octo-org/docs", "completed", None)]
    assert rows[0]["issue_url"] == "https://github.com/octo-org/demo/issues/1"
    assert {"session-1", "session-2"} <= set(artifacts)  # each session's own report


def flow_run_process(run_id: str) -> int:
    """The pid of the process a worker started for this flow run."""
    wanted = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted in environ.read_bytes().split(b"\0"):
                return int(environ.parent.name)
        except OSError:
            continue
    raise LookupError(f"no process runs flow run {run_id}")


def test_a_killed_run_gives_its_sandbox_slot_back_at_once(server, worker):
    """SIGKILL of a deployed run's process: its `finally` never runs, so the worker's crash hook kills the sandbox
    and frees its slot of the sandbox limit by the lease on the sandbox's label, long before the lease would end."""
    async def slots(client: PrefectClient) -> int:
        return (await client.read_global_concurrency_limit_by_name("agentbox-sandboxes")).active_slots

    before = call(server, slots)
    run_id = trigger(server, "agent-session/agent-session", SESSION, env={"ANTHROPIC_BASE_URL": worker.never.url})
    sandbox = worker.world.wait_for_sandbox_of(run_id)
    assert call(server, slots) == before + 1
    os.kill(flow_run_process(run_id), signal.SIGKILL)
    killed = time.monotonic()
    while call(server, slots) > before and time.monotonic() - killed < 2 * SLOT_LEASE_SECONDS:
        time.sleep(0.25)
    freed = time.monotonic() - killed
    print(f"\nslot freed {freed:.1f} s after SIGKILL (the lease alone would take up to {SLOT_LEASE_SECONDS} s + "
          "the server's 15 s sweep)")
    assert call(server, slots) == before
    assert freed < SLOT_LEASE_SECONDS  # by the hook, not by the lease running out
    assert final_state(server, run_id).state.is_crashed()
    assert worker.world.wait_gone(sandbox)


def test_the_command_line_runs_on_a_kept_local_server_when_one_answers(server, deployed):
    """`make server` keeps a server on loopback: a CLI run without PREFECT_API_URL finds it (AGENTBOX_PREFECT_SERVER
    names where to look), says so, runs there instead of on a temporary server, and shows in its UI."""
    env = {k: v for k, v in server.env.items() if k != "PREFECT_API_URL"}
    env["AGENTBOX_PREFECT_SERVER"] = server.url
    proc = subprocess.run([sys.executable, "-m", "flows.notion_to_github", "--repo", "octo/kept-server", "--rehearsal",
                           "--require-approval=", "--json"], cwd=WORKDIR, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Prefect: the server at {server.ui} (its UI shows this run)." in proc.stderr
    assert f"View at {server.ui}/runs/flow-run/" in proc.stderr

    async def runs(client: PrefectClient):
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
            any_=["notion-to-github octo/kept-server"])))

    (run,) = call(server, runs)
    assert run.state.is_completed()

    async def logs(client: PrefectClient):
        return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))

    # the command line ends without the interpreter's teardown (cli.exit_now): nothing the run logged is lost
    flow_lines = [log.message for log in call(server, logs) if log.task_run_id is None]
    assert flow_lines[-1:] == ["Finished in state Completed()"], flow_lines


def test_a_cancelled_deployment_run_ends_cancelled_and_leaves_no_sandbox(server, worker):
    run_id = trigger(server, "agent-session/agent-session", SESSION, env={"ANTHROPIC_BASE_URL": worker.never.url})
    sandbox = worker.world.wait_for_sandbox_of(run_id)
    cancel_and_see_it_gone(server, worker, run_id, sandbox)


def cancel_and_see_it_gone(server, worker, run_id: str, sandbox: str) -> None:
    """Cancel a run as the UI's Cancel button does; it must end Cancelled with its sandbox gone."""
    async def cancel(client: PrefectClient):
        await client.set_flow_run_state(run_id, Cancelling(), force=True)

    call(server, cancel)
    run = final_state(server, run_id)
    assert run.state.is_cancelled(), run.state
    assert worker.world.wait_gone(sandbox)


def test_a_deployed_run_cancelled_while_it_waits_for_approval_leaves_no_sandbox(server, worker):
    """notion-to-github pauses before create_issue (its default policy); cancelled then, from the API as from the
    UI's Cancel button, the worker stops it and nothing is left running."""
    run_id = trigger(server, "notion-to-github/notion-to-github", {"issue": {"repo": "octo/cancel-paused"}})
    sandbox = worker.world.wait_for_sandbox_of(run_id)
    deadline = time.monotonic() + 120
    while not call(server, lambda c: c.read_flow_run(run_id)).state.is_paused():
        assert time.monotonic() < deadline, "the run never paused for approval"
        time.sleep(0.25)
    cancel_and_see_it_gone(server, worker, run_id, sandbox)


def test_five_sessions_never_hold_more_than_two_sandboxes(server, worker):
    peak = {"sandboxes": 0, "running": 0}
    done = threading.Event()

    def watch_sandboxes() -> None:
        while not done.is_set():
            peak["sandboxes"] = max(peak["sandboxes"], len(sandbox_dirs()))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_sandboxes, daemon=True)
    watcher.start()
    runs = [trigger(server, "agent-session/agent-session", SESSION) for _ in range(5)]

    async def running(client: PrefectClient) -> int:
        flow_runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)))
        return sum(1 for r in flow_runs if r.state and r.state.is_running())

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            peak["running"] = max(peak["running"], call(server, running))
            if all(call(server, lambda c, r=r: c.read_flow_run(r)).state.is_final() for r in runs):
                break
            time.sleep(0.3)
    finally:
        done.set()
        watcher.join()
    states = [final_state(server, r).state for r in runs]
    assert all(s.is_completed() for s in states), states
    assert peak["sandboxes"] == 2, peak  # the limit held, and was reached
    assert peak["running"] > 2, peak  # more runs were going at once than sandboxes: the limit did the waiting


def test_a_deployed_run_times_out_at_the_flow_timeout_of_its_workers_environment(server, worker):
    """FLOW_TIMEOUT_SECONDS is what the worker's flow-run process reads (job variables add to its environment), not
    the built-in 1800 s; the sandbox's TTL is far away, so the timeout is what stops the run, and it says so."""
    env = {"ANTHROPIC_BASE_URL": worker.never.url, "FLOW_TIMEOUT_SECONDS": "20", "SANDBOX_TTL_SECONDS": "300"}
    run_id = trigger(server, "agent-session/agent-session", SESSION, env=env)
    sandbox = worker.world.wait_for_sandbox_of(run_id)
    run = final_state(server, run_id)
    assert run.state.name == "TimedOut", run.state
    assert "timeout of 20" in run.state.message

    async def states(client: PrefectClient):
        return {s.name: s.timestamp for s in await client.read_flow_run_states(run_id)}

    times = call(server, states)
    ran = (times["TimedOut"] - times["Running"]).total_seconds()
    assert 19 <= ran <= 45, ran
    assert worker.world.wait_gone(sandbox)
