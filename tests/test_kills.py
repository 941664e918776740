"""Chaos by SIGKILL: a command-line run killed outright at each step of its session, on both backends. After each,
nothing of its sandbox lives past the lease (plus a few seconds), no issue is opened twice, and a run killed while
it waited for a slot held none. (A killed run's slot comes back when its lease ends, 60 s on: a real server's
repossessor frees it, which the test harness's server does not run; tests/test_outage.py checks the slots on one.)

The steps: waiting for a slot (the limit full), creating the sandbox, waiting for its gateway, the agent working
before its write and after it, and (on E2B, whose kill can be made slow) the teardown. Killed runs cannot be retried (a command-line run has no deployment): tests/test_served_hooks.py retries a
deployment's run killed after its write.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest

from agentbox.rehearsal.seed import notion_to_github_script
from tasks.compat import acquire_concurrency_slot
from tasks.sandbox import release_slot
from agentbox.sandboxes import get_backend
from agentbox.sandboxes.local.state import ABANDONED_AFTER_SECONDS
from agentbox.settings import load_settings
from tests.support import WORKDIR, sandbox_dirs, wait_for_no_sandbox_processes
from tests.test_leases import LEASE, wait_for

pytestmark = pytest.mark.usefixtures("prefect_api", "no_leftovers")

LIMIT = "agentbox-kill-test-{backend}"  # one per backend: the harness's server never frees a dead run's slot


async def limit(name: str, slots: int | None = None) -> int:
    """The test limit's slots in use (created first with `slots`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        if slots is not None:
            try:
                await client.read_global_concurrency_limit_by_name(name)
                await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots))
            except ObjectNotFound:
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


async def task_running(flow_run_name: str, task_name: str) -> bool:
    """Whether the flow run's task of that name is running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterName, TaskRunFilter, TaskRunFilterName,
                                                TaskRunFilterState, TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=task_name),
                                          state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))))
    return bool(runs)


def slow_catalog(world) -> Path:
    """The world's catalog, with Notion's server starting 4 s late (the gateway's readiness waits for it)."""
    catalog = json.loads(world.services.catalog.read_text())
    catalog["notion"]["command"] = ["sh", "-c", 'sleep 4; exec "$0" "$@"', *catalog["notion"]["command"]]
    path = world.services.catalog.with_name("slow-catalog.json")
    path.write_text(json.dumps(catalog))
    return path


def start_run(world, repo: str, script, **settings: str) -> tuple[subprocess.Popen, object]:
    from prefect.settings import PREFECT_API_URL

    model = world.play(script)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SANDBOX_LEASE_SECONDS": str(LEASE),
           "SANDBOX_CONCURRENCY_LIMIT": LIMIT.format(backend=world.backend), **settings}
    command = [sys.executable, "-m", "flows.notion_to_github", "--repo", repo, "--title", "Killed"]
    cli = subprocess.Popen(command, cwd=WORKDIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STARTED.append(cli)
    return cli, model


def kill_and_time(world, cli: subprocess.Popen, before: set[str] | None = None) -> float:
    """SIGKILL the run; seconds until nothing of its sandboxes runs (local: no process; e2b: no sandbox). `before`:
    the stand-in's sandboxes before the run, when its sandbox may only appear after the kill (a create in flight)."""
    cli.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    cli.wait(10)
    if world.e2b is None:
        assert wait_for_no_sandbox_processes(timeout=LEASE + 60) == []
        return time.monotonic() - killed
    if before is not None:  # the create the run asked for, if it left before the kill, completes without it
        deadline = time.monotonic() + 10
        while not set(world.e2b.sandboxes()) - before and time.monotonic() < deadline:
            time.sleep(0.05)
    wait_for(lambda: not world.alive(), LEASE + 60, "the stand-in killing the sandbox")
    seconds = time.monotonic() - killed
    assert world.e2b.wait_for_no_processes(timeout=30) == {}  # and what it ran, after it
    return seconds


STARTED: list[subprocess.Popen] = []


@pytest.fixture
def cleaned_up(world):
    """Whatever the test's outcome: no run of it left, no fault armed, the stand-in's own catalog."""
    yield
    for cli in STARTED:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    STARTED.clear()
    if world.e2b:
        world.e2b.clear_faults()
        world.e2b.use_catalog(None)


def test_a_command_line_run_killed_at_each_step_leaves_nothing_past_its_lease(world, cleaned_up):
    name = LIMIT.format(backend=world.backend)
    asyncio.run(limit(name, slots=1))
    figures: dict[str, float] = {}
    repo = f"octo/kills-{world.backend}"

    # waiting for a slot: the limit's only slot is held by someone else
    held = asyncio.run(asyncio.wait_for(acquire_concurrency_slot(name, 60, None), 30))
    cli, _ = start_run(world, f"{repo}-slot", notion_to_github_script(*repo.split("/"), "Never", "B"))
    try:
        time.sleep(8)  # planned, imported, asking for the slot
        assert cli.poll() is None and not world.alive()
        figures["waiting for a slot"] = kill_and_time(world, cli)
    finally:
        asyncio.run(release_slot(UUID(str(held))))
    assert asyncio.run(limit(name, slots=6)) == 0  # the killed run never held one

    # creating the sandbox: killed as soon as the backend has started it (E2B's create takes 3 s here)
    before = set(world.e2b.sandboxes()) if world.e2b else None
    if world.e2b:
        world.e2b.inject("slow_create", delay_seconds=3)
    cli, _ = start_run(world, f"{repo}-create", notion_to_github_script(*repo.split("/"), "Never", "B"))

    def creating() -> bool:  # E2B: the create task is running; local: the sandbox's state exists (0.3 s)
        return asyncio.run(task_running(f"notion-to-github {repo}-create", "create-sandbox")) if world.e2b \
            else bool(world.alive())

    wait_for(lambda: creating() or cli.poll() is not None, 120, "the sandbox's creation")
    figures["create"] = kill_and_time(world, cli, before)
    if world.e2b:
        world.e2b.clear_faults()
    else:  # a state its creator left without a supervisor: swept by the next create or list (or the reaper)
        time.sleep(ABANDONED_AFTER_SECONDS + 1)
        assert asyncio.run(get_backend(load_settings(), "local").list()) == []
        assert sandbox_dirs() == []

    # the gateway's readiness: Notion's server takes 4 s to start
    slow = slow_catalog(world)
    if world.e2b:
        world.e2b.use_catalog(str(slow))
    cli, _ = start_run(world, f"{repo}-ready", notion_to_github_script(*repo.split("/"), "Never", "B"),
                       LOCAL_MCP_CATALOG=str(slow))
    wait_for(lambda: asyncio.run(task_running(f"notion-to-github {repo}-ready", "wait-for-gateway"))
             or cli.poll() is not None, 120, "the wait for the gateway")
    figures["gateway ready"] = kill_and_time(world, cli)
    if world.e2b:
        world.e2b.use_catalog(None)

    # the agent at work, before its write, and after it
    for step, turns in (("prompt, before the write", 1), ("after the write", 3)):
        script = notion_to_github_script(*f"{repo}-{turns}".split("/"), "Killed", "B")
        script.steps[turns - 1].hang_seconds = 300
        cli, model = start_run(world, f"{repo}-{turns}", script)
        wait_for(lambda m=model, n=turns, c=cli: len(m.app.state.requests) >= n or c.poll() is not None, 180, step)
        assert cli.poll() is None
        figures[step] = kill_and_time(world, cli)
        assert len(world.issues(f"{repo}-{turns}")) == (1 if turns == 3 else 0)

    if world.e2b:  # the teardown: E2B's kill fails, so the kill task retries (locally a kill takes 30 ms)
        world.e2b.inject("api_error", method="DELETE", path="/sandboxes/", status=500, count=None)
        cli, _ = start_run(world, f"{repo}-teardown", notion_to_github_script("octo", "kills-teardown", "T", "B"))
        wait_for(lambda: asyncio.run(task_running(f"notion-to-github {repo}-teardown", "kill-sandbox"))
                 or cli.poll() is not None, 180, "the teardown")
        # killed while its teardown cannot kill the sandbox, or (on a slow machine) just after it gave up: either
        # way the sandbox, no longer renewed, ends with its lease
        figures["teardown"] = kill_and_time(world, cli)
        world.e2b.clear_faults()
        assert len(world.issues("octo/kills-teardown")) == 1

    print(f"\n{world.backend}: seconds from SIGKILL to nothing left (lease {LEASE} s): "
          + ", ".join(f"{step} {seconds:.1f}" for step, seconds in figures.items()))
    for step, seconds in figures.items():
        assert seconds < LEASE + (3 if step == "create" else 0) + 5, (step, seconds)
