"""The Prefect API unreachable mid-session: its server stopped while the agent works, and started again 30 s later
(as an upgrade or a crash of the server would). The run's leases ride it out: the session completes, its sandbox is
torn down, no slot of the sandbox limit is left held, and the issue is opened once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentbox.rehearsal.seed import notion_to_github_script
from tests.deployed import FAST, free_port, start_server
from tests.support import WORKDIR, stop_process_group

pytestmark = pytest.mark.usefixtures("prefect_api")

OUTAGE = 30
LEASES_ON_DISK = "prefect.server.concurrency.lease_storage.filesystem"
THINKING = OUTAGE + 30  # the model's pause after create_issue: the outage and the server's start fall within it


class RestartableServer:
    """`prefect server start` on one port and one database, that a test can stop and start again."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        # leases kept on disk, as the README has a server keep them: Prefect's default keeps them in memory, and a
        # restarted server would forget every run's slot
        self.server_env = {**base, **FAST, "PREFECT_HOME": str(home / "server"),
                           "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASES_ON_DISK}
        self.env = {**base, **FAST, "PREFECT_API_URL": self.url, "PREFECT_HOME": str(home / "client")}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = start_server(self.port, self.server_env, self.home / "server.log")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None

    def slots_in_use(self) -> int:
        from prefect.client.orchestration import PrefectClient

        async def read() -> int:
            async with PrefectClient(self.url) as client:
                return (await client.read_global_concurrency_limit_by_name("agentbox-sandboxes")).active_slots

        return asyncio.run(read())


def test_a_session_rides_out_a_prefect_api_outage_of_thirty_seconds(world, tmp_path):
    server = RestartableServer(tmp_path)
    server.start()
    try:
        subprocess.run([sys.executable, "-m", "deployments.bootstrap", "--sandboxes", "2"], cwd=WORKDIR,
                       env=server.env, check=True, capture_output=True, timeout=120)
        repo = f"octo/outage-{world.backend}"
        script = notion_to_github_script(*repo.split("/"), "Through an outage", "The API went away meanwhile.")
        script.steps[2].hang_seconds = THINKING
        model = world.play(script)
        command = [sys.executable, "-m", "flows.notion_to_github", "--repo", repo, "--title", "Through an outage"]
        cli = subprocess.Popen(command, cwd=WORKDIR, env={**os.environ, **server.env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while len(model.app.state.requests) < 3 and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cli.poll() is None and len(model.app.state.requests) >= 3, cli.communicate()[1][-3000:]
        (sandbox,) = world.alive()

        server.stop()  # the agent works on; the run cannot reach Prefect
        time.sleep(OUTAGE)
        assert world.alive() == {sandbox}  # its lease is renewed all the same
        server.start()

        out, err = cli.communicate(timeout=THINKING + 180)
        assert cli.returncode == 0, err[-3000:]
        assert "Could not renew the lease of the session's slot" in err  # the outage was felt, and ridden out
        assert "is renewed again" in err
        assert world.wait_gone(sandbox)
        assert server.slots_in_use() == 0
        assert len(world.issues(repo)) == 1
    finally:
        server.stop()
