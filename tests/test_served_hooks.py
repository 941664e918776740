"""Teardown when the flow's own `finally` cannot run: a served deployment's flow process killed with SIGKILL, and a
cancelled deployment run. A real runner (`flow.serve`) against the test's Prefect API runs the real flow, as a
production run on each backend (tests/worlds.py) whose model never answers, so the run is mid-prompt when it ends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelling, Scheduled

from tests.support import WORKDIR, stop_process_group
from tests.test_leases import after_the_write_the_model_thinks, wait_for
from tests.worlds import BACKENDS, World

pytestmark = pytest.mark.usefixtures("prefect_api", "no_leftovers")

NEVER = [{"hang_seconds": 600}]
WRITTEN = "octo/written-{backend}"  # GitHub's stand-in serves the whole test session
SERVE = "from flows.notion_to_github import notion_to_github; notion_to_github.serve(name='hooks-{backend}')"


@pytest.fixture(scope="module", params=BACKENDS)
def runner(request, prefect_api, services):
    """A served deployment whose runs use this backend (its environment is a production run's)."""
    from prefect.settings import PREFECT_API_URL

    e2b = request.getfixturevalue("e2b_standin") if request.param == "e2b" else None
    world = World(request.param, services, e2b)
    # one model for every run, whose script each run's repository picks: most never answer (mid-prompt when killed)
    written = WRITTEN.format(backend=world.backend)
    model = world.model({"octo/sigkill": NEVER, "octo/cancel": NEVER, written: after_the_write_the_model_thinks(
        *written.split("/"), "Killed after its write")})
    env = {**os.environ, **world.environment(model), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SERVE.format(backend=world.backend)], cwd=WORKDIR, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deployment = asyncio.run(_deployment_id(proc, f"notion-to-github/hooks-{world.backend}"))
        yield SimpleNamespace(deployment=deployment, pid=proc.pid, world=world, model=model)
    finally:
        stop_process_group(proc)
        world.close()


async def _deployment_id(proc: subprocess.Popen, name: str) -> str:
    deadline = time.monotonic() + 120
    async with get_client() as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the runner died"
            try:
                return str((await client.read_deployment_by_name(name)).id)
            except Exception:  # noqa: BLE001 - not registered yet
                await asyncio.sleep(0.2)
    raise TimeoutError("the served deployment never appeared")


async def trigger(deployment_id: str, repo: str) -> str:
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(deployment_id, parameters={"issue": {"repo": repo}})
    return str(run.id)


def flow_process(runner_pid: int) -> int:
    """The runner's child process executing the (only) flow run in progress: the runner starts each run in a
    multiprocessing spawn child (its other child is multiprocessing's resource tracker)."""
    children = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == runner_pid and fields[0] != "Z" and b"spawn_main" in cmdline:
                children.append(int(proc.name))
    assert len(children) == 1, f"expected one flow process under the runner, found {children}"
    return children[0]


async def final_state(run_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            state = (await client.read_flow_run(run_id)).state
            if state and state.is_final():
                return state
            await asyncio.sleep(0.2)
    raise TimeoutError("the run never reached a final state")


def test_a_flow_process_killed_with_sigkill_leaves_no_sandbox(runner):
    run_id = asyncio.run(trigger(runner.deployment, "octo/sigkill"))
    sandbox = runner.world.wait_for_sandbox_of(run_id)
    os.kill(flow_process(runner.pid), signal.SIGKILL)  # no `finally` runs in that process
    state = asyncio.run(final_state(run_id))
    assert state.is_crashed(), state
    assert runner.world.wait_gone(sandbox), "the crash hook did not kill the sandbox"


def test_a_cancelled_deployment_run_leaves_no_sandbox(runner):
    run_id = asyncio.run(trigger(runner.deployment, "octo/cancel"))
    sandbox = runner.world.wait_for_sandbox_of(run_id)

    async def cancel() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Cancelling(), force=True)

    asyncio.run(cancel())
    state = asyncio.run(final_state(run_id))
    assert state.is_cancelled(), state
    assert runner.world.wait_gone(sandbox)


def test_a_run_killed_after_its_write_and_retried_never_writes_twice(runner):
    """SIGKILL of the flow process right after the agent opened its issue, then the run retried as the UI's Retry
    does (the same flow run, scheduled again): the journal shows the write, so the retry does not run the agent
    and fails for a person to decide; one issue."""
    written = WRITTEN.format(backend=runner.world.backend)
    run_id = asyncio.run(trigger(runner.deployment, written))
    sandbox = runner.world.wait_for_sandbox_of(run_id)

    def asked() -> list[dict]:
        return [r for r in runner.model.app.state.requests if written in json.dumps(r)]

    wait_for(lambda: len(asked()) >= 3, 120, "the model's turn after create_issue")
    assert len(runner.world.issues(written)) == 1
    os.kill(flow_process(runner.pid), signal.SIGKILL)
    assert asyncio.run(final_state(run_id)).is_crashed()
    assert runner.world.wait_gone(sandbox)

    async def retry() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Scheduled(name="AwaitingRetry"), force=True)

    asyncio.run(retry())
    state = asyncio.run(final_state(run_id))
    assert state.is_failed(), state
    assert "An earlier attempt of this run stopped after the agent's writes: create_issue" in state.message
    assert len(runner.world.issues(written)) == 1
    assert len(asked()) == 3  # the agent was not run again
