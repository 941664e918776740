"""Test session setup: an isolated Prefect home and sandbox root, no real credentials, one Prefect test harness.

The real components run everywhere (bubblewrap, the gateway, the official MCP servers, the `claude` binary, a real
Prefect API); only Anthropic, Notion and GitHub are replaced, by the rehearsal stand-ins.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="agentbox-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
os.environ["LOCAL_SANDBOX_ROOT"] = str(_SESSION_DIR / "sandboxes")
for _name in ("E2B_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "NOTION_INTEGRATION_TOKEN", "GITHUB_TOKEN",
              "SANDBOX_BACKEND", "LOCAL_MCP_CATALOG"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
WORKDIR = _SESSION_DIR  # where tests and the CLIs they start run: no developer's .env leaks into the tests
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


@pytest.fixture(scope="session", autouse=True)
def away_from_the_checkout():
    """Settings read `.env` from the working directory: run every test where there is none."""
    previous = os.getcwd()
    os.chdir(WORKDIR)
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test harness (a real API server on a temporary database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    import asyncio

    from agentbox.settings import load_settings
    from tasks.sandbox import ensure_sandbox_limit

    with prefect_test_harness(server_startup_timeout=120):
        # Sessions hold a slot of the sandbox limit; a flow process killed on purpose keeps its slot until its lease
        # ends (5 minutes), so the tests' limit is roomy. test_deployments.py checks the limit itself.
        asyncio.run(ensure_sandbox_limit(load_settings(), slots=50))
        yield


@pytest.fixture
def no_leftovers():
    """Asserts that a test leaves no sandbox behind: no process, no state directory."""
    before = frozenset(sandbox_processes())  # processes that are not this test's (a developer's gateway, say)
    yield
    assert wait_for_no_sandbox_processes(ignore=before) == []
    assert sandbox_dirs() == []


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """GitHub and Notion stand-ins for the whole session (see tests/worlds.py)."""
    from contextlib import ExitStack

    from tests.worlds import Services

    with ExitStack() as stack:
        yield Services.start(stack, tmp_path_factory.mktemp("services"))


@pytest.fixture(scope="session")
def e2b_standin(services):
    """One offline E2B for the session, started by the first test that needs it."""
    from tests.e2b_standin import E2BStandIn

    with E2BStandIn(catalog_file=str(services.catalog)) as e2b:
        yield e2b


@pytest.fixture(params=["local", "e2b"])
def world(request, services, monkeypatch, no_leftovers):
    """A production run's remote services on this machine, once per backend; no sandbox may outlive the test."""
    from tests.worlds import World

    e2b = request.getfixturevalue("e2b_standin") if request.param == "e2b" else None
    if e2b:
        e2b.clear_faults()
    world = World(request.param, services, e2b, monkeypatch.setenv)
    try:
        yield world
    finally:
        world.close()
    if e2b:
        e2b.clear_faults()
    assert world.leftovers() == [], f"left running on {world.backend}"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
