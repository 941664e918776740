"""Helpers the tests share, and the isolation every test runs in (set up when this module is first imported).

Importing it gives the session its own Prefect home and sandbox root and removes real credentials from the
environment, before Prefect or the product reads either.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

SESSION_DIR = Path(tempfile.mkdtemp(prefix="agentbox-tests-"))
os.environ["PREFECT_HOME"] = str(SESSION_DIR / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
os.environ["LOCAL_SANDBOX_ROOT"] = str(SESSION_DIR / "sandboxes")
for _name in ("E2B_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "NOTION_INTEGRATION_TOKEN", "GITHUB_TOKEN",
              "SANDBOX_BACKEND", "LOCAL_MCP_CATALOG"):
    os.environ.pop(_name, None)

PROJECT = Path(__file__).resolve().parents[1]
WORKDIR = SESSION_DIR  # where tests and the CLIs they start run: no developer's .env leaks into the tests
SANDBOX_ROOT = Path(os.environ["LOCAL_SANDBOX_ROOT"])


def sandbox_processes() -> dict[int, str]:
    """Pid → command line of every live process of this session's local sandboxes: bubblewrap and the supervisor
    name the sandbox root in their command line, and everything inside descends from them."""
    from tests.e2b_standin.jail import processes_under

    return processes_under(str(SANDBOX_ROOT))


def wait_for_no_sandbox_processes(timeout: float = 10.0, ignore: frozenset[int] = frozenset()) -> list[str]:
    """Sandbox processes (other than `ignore`) still alive after `timeout`; an empty list is the good answer."""
    deadline = time.monotonic() + timeout
    while True:
        left = [cmd for pid, cmd in sandbox_processes().items() if pid not in ignore]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM a server, runner or worker started with `start_new_session=True`, then SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def latest_artifact(key: str) -> str:
    """The markdown of the newest artifact with this key, on the test harness's API."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifacts = await client.read_latest_artifacts()
    matching = [a for a in artifacts if a.key == key]
    assert matching, f"no artifact {key}"
    return str(matching[0].data)


def sandbox_dirs() -> list[str]:
    return sorted(p.name for p in SANDBOX_ROOT.iterdir()) if SANDBOX_ROOT.exists() else []
