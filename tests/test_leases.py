"""A run's sandbox dies with the run, however it dies: killed outright (SIGKILL, as the out-of-memory killer or a lost
machine would), nothing of its sandbox (supervisor, bubblewrap, gateway with the MCP servers' credentials, egress
proxy; on E2B the sandbox itself) outlives the sandbox's lease by more than a few seconds, on both backends.

The run renews the lease while it lives (tasks/lease.py): a run that waits, or an agent that thinks, keeps its
sandbox; only the renewals stopping ends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from agentbox.rehearsal.model import ModelScript
from agentbox.rehearsal.seed import notion_to_github_script
from tests.support import WORKDIR

pytestmark = pytest.mark.usefixtures("prefect_api", "no_leftovers")

LEASE = 6
THINKING = 300  # the model's pause after the issue was opened: the run is alive, busy, far from done


def after_the_write_the_model_thinks(owner: str, repo: str, title: str) -> ModelScript:
    """The flow's script, with the model taking its time after `create_issue` succeeded."""
    script = notion_to_github_script(owner, repo, title, "Opened before the run was killed.")
    script.steps[2].hang_seconds = THINKING
    return script


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_command_line_run_killed_outright_leaves_nothing_alive_past_its_lease(world):
    from prefect.settings import PREFECT_API_URL

    repo = f"octo/lease-{world.backend}"
    model = world.play(after_the_write_the_model_thinks(*repo.split("/"), "Killed mid-run"))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SANDBOX_LEASE_SECONDS": str(LEASE)}
    command = [sys.executable, "-m", "flows.notion_to_github", "--repo", repo, "--title", "Killed mid-run"]
    cli = subprocess.Popen(command, cwd=WORKDIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(model.app.state.requests) >= 3 or cli.poll() is not None, 180,
                 "the model's turn after create_issue")
        assert cli.poll() is None, cli.stderr.read().decode()[-3000:]
        (sandbox,) = world.alive()
        time.sleep(2 * LEASE)  # the agent thinks: renewed, the sandbox outlives its lease twice over
        assert world.alive() == {sandbox}, cli.stderr.read1().decode()[-3000:] if cli.poll() is not None else "alive"

        cli.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        cli.wait(10)
        assert world.wait_gone(sandbox, timeout=LEASE + 30)
        gone_after = time.monotonic() - killed
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    print(f"\n{world.backend}: sandbox gone {gone_after:.1f} s after the run's SIGKILL (lease {LEASE} s)")
    assert gone_after < LEASE + 5
    assert len(world.issues(repo)) == 1
