"""Test session setup: an isolated Prefect home and sandbox root, no real credentials, one Prefect test harness.

The real components run everywhere (bubblewrap, the gateway, the official MCP servers, the `claude` binary, a real
Prefect API); only Anthropic, Notion and GitHub are replaced, by the rehearsal stand-ins.
"""

from __future__ import annotations

import os
import shutil
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
os.chdir(_SESSION_DIR)  # no developer's .env leaks into the tests

import pytest  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
SANDBOX_ROOT = Path(os.environ["LOCAL_SANDBOX_ROOT"])
# What runs inside a sandbox: the gateway, the MCP servers, Claude Code, the supervisor.
SANDBOX_PROCESS_MARKERS = ("agentbox.gateway", "agentbox.sandboxes.supervisor", "notion-mcp-server",
                           "github-mcp-server", "--output-format stream-json", "claude mcp ", str(SANDBOX_ROOT))


def sandbox_processes() -> dict[int, str]:
    """Pid → command line of every live process that belongs to a sandbox (zombies excluded)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and any(marker in cmdline for marker in SANDBOX_PROCESS_MARKERS):
            found[int(proc.name)] = cmdline[:200]
    return found


def wait_for_no_sandbox_processes(timeout: float = 10.0, ignore: frozenset[int] = frozenset()) -> list[str]:
    """Sandbox processes (other than `ignore`) still alive after `timeout`; an empty list is the good answer."""
    deadline = time.monotonic() + timeout
    while True:
        left = [cmd for pid, cmd in sandbox_processes().items() if pid not in ignore]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def sandbox_dirs() -> list[str]:
    return sorted(p.name for p in SANDBOX_ROOT.iterdir()) if SANDBOX_ROOT.exists() else []


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test harness (a real API server on a temporary database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def no_leftovers():
    """Asserts that a test leaves no sandbox behind: no process, no state directory."""
    before = frozenset(sandbox_processes())  # processes that are not this test's (a developer's gateway, say)
    yield
    assert wait_for_no_sandbox_processes(ignore=before) == []
    assert sandbox_dirs() == []


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
