"""The janitors: the crash/cancel hook kills a run's sandboxes by metadata; the reaper kills only this app's
sandboxes whose run is over or unknown (or that are too old), and keeps those of live runs. On both backends."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Completed, Running

from agentbox.sandboxes import SandboxBackend, get_backend
from agentbox.sandboxes.base import APP_LABEL, APP_LABEL_KEY
from agentbox.settings import load_settings
from flows.janitor import kill_run_sandboxes_hook
from flows.reap_sandboxes import reap_sandboxes
from tests.worlds import CREDENTIALS

pytestmark = pytest.mark.usefixtures("prefect_api", "no_leftovers")


@flow(name="placeholder")
def placeholder() -> None:
    """A flow whose runs the tests create in chosen states."""


@pytest.fixture
def sandboxes(world):
    """Sandboxes made directly on the world's backend, labelled as a flow run's would be."""
    world.play([{"text": "unused"}])
    backend = get_backend(load_settings())
    mcp = {"notion": {"internalIntegrationToken": CREDENTIALS["NOTION_INTEGRATION_TOKEN"]}}
    made: list[str] = []

    def make(run_id: str, app: str = APP_LABEL) -> str:
        handle = asyncio.run(backend.create(mcp, {}, 300, {APP_LABEL_KEY: app, "prefect_flow_run_id": run_id}))
        made.append(handle.id)
        return handle.id

    yield SimpleNamespace(make=make, backend=backend, name=world.backend)
    for sandbox_id in made:
        asyncio.run(backend.kill(sandbox_id))


async def flow_run_in(state) -> str:
    async with get_client() as client:
        run = await client.create_flow_run(placeholder, state=state)
    return str(run.id)


def alive(backend: SandboxBackend) -> set[str]:
    return {s.id for s in asyncio.run(backend.list())}


def test_the_hook_kills_only_the_runs_sandboxes(sandboxes):
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    doomed, spared = sandboxes.make(mine), sandboxes.make(other)
    asyncio.run(kill_run_sandboxes_hook(None, SimpleNamespace(id=mine), SimpleNamespace(name="Crashed")))
    assert alive(sandboxes.backend) == {spared}
    assert doomed not in alive(sandboxes.backend)


def test_the_reaper_kills_finished_and_unknown_runs_sandboxes_only(sandboxes):
    finished = sandboxes.make(asyncio.run(flow_run_in(Completed())))
    unknown = sandboxes.make(str(uuid.uuid4()))
    live = sandboxes.make(asyncio.run(flow_run_in(Running())))
    foreign = sandboxes.make(asyncio.run(flow_run_in(Completed())), app="someone-else")

    preview = asyncio.run(reap_sandboxes(dry_run=True))
    assert {v.sandbox_id for v in preview.reaped} == {finished, unknown}
    assert alive(sandboxes.backend) == {finished, unknown, live, foreign}  # a dry run kills nothing

    report = asyncio.run(reap_sandboxes())
    assert {v.sandbox_id: v.reason for v in report.reaped} == {
        finished: "its flow run is Completed",
        unknown: "its flow run is unknown",
    }
    assert all(v.killed and v.backend == sandboxes.name for v in report.reaped)
    assert [v.sandbox_id for v in report.kept] == [live]
    assert alive(sandboxes.backend) == {live, foreign}

    too_old = asyncio.run(reap_sandboxes(max_age_minutes=0))
    assert [(v.sandbox_id, v.reason) for v in too_old.reaped] == [(live, "older than 0 minutes")]
    assert alive(sandboxes.backend) == {foreign}  # another app's sandbox is never touched
