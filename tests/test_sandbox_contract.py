"""The sandbox port's contract, run against every registered backend through the shared world.

Whatever runs a sandbox (bubblewrap here, E2B's cloud through the real SDK against the wire-level stand-in), the
pipeline relies on the same promises: a handle that finds the sandbox again, files written from outside readable
inside, a non-zero exit returned and a command past its timeout killed, list filtered by labels, kill idempotent,
and a command cut off by the sandbox's TTL reported as exactly that.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest

from agentbox.errors import SandboxCommandTimeout, SandboxError, SandboxExpired
from agentbox.sandboxes import BACKENDS, SandboxBackend, get_backend
from agentbox.settings import load_settings
from tests.worlds import BACKENDS as WORLD_BACKENDS
from tests.worlds import CREDENTIALS

TTL = 15
MCP = {"notion": {"internalIntegrationToken": CREDENTIALS["NOTION_INTEGRATION_TOKEN"]}}


def test_every_registered_backend_has_a_world():
    assert sorted(WORLD_BACKENDS) == sorted(BACKENDS)


@pytest.fixture
def sandboxes(world) -> SandboxBackend:
    world.play([{"text": "unused"}])
    return get_backend(load_settings(), world.backend)


def create(sandboxes: SandboxBackend, ttl: int = 120, **labels: str):
    return asyncio.run(sandboxes.create(MCP, {"FROM_CREATE": "create-value"}, ttl, {"app": "contract", **labels}))


def run(sandboxes, handle, command: str, timeout: float = 30, **kwargs):
    return asyncio.run(sandboxes.run(handle, command, timeout=timeout, **kwargs))


def test_a_sandbox_runs_commands_and_reads_what_was_written(world, sandboxes):
    handle = create(sandboxes, purpose="commands")
    try:
        assert handle.backend == world.backend
        assert handle.metadata["purpose"] == "commands"
        assert 110 <= (handle.expires_at - handle.created_at).total_seconds() <= 130
        assert asyncio.run(sandboxes.gateway_token(handle))

        asyncio.run(sandboxes.write_file(handle, "/home/user/notes/hello.txt", "written from outside\n"))
        assert run(sandboxes, handle, "cat /home/user/notes/hello.txt").stdout == "written from outside\n"

        streamed: list[str] = []
        result = run(sandboxes, handle, 'echo "$FROM_CREATE $PER_COMMAND"; echo oops >&2; exit 3',
                     envs={"PER_COMMAND": "command-value"}, on_stdout=streamed.append)
        assert (result.exit_code, result.stdout, result.stderr) == (3, "create-value command-value\n", "oops\n")
        assert "".join(streamed) == result.stdout

        started = time.monotonic()
        with pytest.raises(SandboxCommandTimeout, match="past its 1 s timeout"):
            run(sandboxes, handle, "sleep 60", timeout=1)
        assert time.monotonic() - started < 15
        assert run(sandboxes, handle, "echo still usable").stdout == "still usable\n"
    finally:
        assert asyncio.run(sandboxes.kill(handle.id)) is True
    assert asyncio.run(sandboxes.kill(handle.id)) is False  # gone already: not an error
    with pytest.raises(SandboxError):
        run(sandboxes, handle, "true")


def test_list_filters_by_labels_and_kill_matching_kills_only_those(world, sandboxes):
    mine, other = create(sandboxes, run_id="mine"), create(sandboxes, run_id="other")
    try:
        assert [i.id for i in asyncio.run(sandboxes.list({"app": "contract", "run_id": "mine"}))] == [mine.id]
        assert {mine.id, other.id} <= {i.id for i in asyncio.run(sandboxes.list({"app": "contract"}))}
        assert asyncio.run(sandboxes.kill_matching({"run_id": "mine"})) == [mine.id]
        assert world.wait_gone(mine.id) or mine.id not in world.alive()
        assert [i.id for i in asyncio.run(sandboxes.list({"run_id": "other"}))] == [other.id]
    finally:
        asyncio.run(sandboxes.kill(other.id))
        asyncio.run(sandboxes.kill(mine.id))


def test_a_command_cut_off_by_the_ttl_says_so(world, sandboxes):
    handle = create(sandboxes, ttl=TTL)  # long enough for the create (E2B's starts the gateway), short for a test
    started = time.monotonic()
    with pytest.raises(SandboxExpired) as info:
        run(sandboxes, handle, "sleep 60", timeout=60)
    assert time.monotonic() - started < TTL + 15
    assert f"Sandbox {handle.id} reached its TTL ({TTL} s" in str(info.value)
    assert "SANDBOX_TTL_SECONDS" in str(info.value)
    assert world.wait_gone(handle.id)


LEASE = 8  # long enough for E2B's create (it starts the gateway within the lease), short for a test


def test_a_sandbox_lives_while_its_lease_is_renewed_and_dies_within_it_once_it_is_not(world, sandboxes):
    """The run's lease: renewed, the sandbox outlives its first lease; never renewed past its TTL; shortened, it
    follows; left alone, it is gone with everything it ran within the lease (the run died, say)."""
    handle = asyncio.run(sandboxes.create(MCP, {}, 120, {"app": "contract", "purpose": "lease"}, lease_seconds=LEASE))
    try:
        assert (handle.expires_at - handle.created_at).total_seconds() == pytest.approx(120, abs=2)  # the TTL
        # renewed at once, as a run covers its new sandbox (its creation took part of the lease), then every half
        # lease: two leases in all
        for _ in range(4):
            ends = asyncio.run(sandboxes.renew(handle, LEASE))
            assert 0 < (ends - datetime.now(timezone.utc)).total_seconds() <= LEASE
            time.sleep(LEASE / 2)
        assert run(sandboxes, handle, "echo alive").stdout == "alive\n"
        assert asyncio.run(sandboxes.renew(handle, 10_000)) == handle.expires_at  # never past the TTL

        asyncio.run(sandboxes.renew(handle, 3))  # shortened, as E2B's set_timeout allows; then nobody renews it
        started = time.monotonic()
        assert world.wait_gone(handle.id, timeout=30)
        assert time.monotonic() - started < 3 + 5
        with pytest.raises(SandboxError):
            asyncio.run(sandboxes.renew(handle, LEASE))
    finally:
        asyncio.run(sandboxes.kill(handle.id))
