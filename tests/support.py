"""Helpers the tests share, and the isolation every test runs in (set up when this module is first imported).

Importing it gives the session its own Prefect home and sandbox root and removes real credentials from the
environment, before Prefect or the product reads either.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

SESSION_DIR = Path(tempfile.mkdtemp(prefix="agentbox-tests-"))
os.environ["PREFECT_HOME"] = str(SESSION_DIR / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
os.environ["LOCAL_SANDBOX_ROOT"] = str(SESSION_DIR / "sandboxes")
# Runs answer no approvals unless a test asks for them (tests/test_approvals.py sets its own policy): this is how a
# user runs unattended, and the default (notion_to_github asks a person before create_issue) is tested on its own.
os.environ["POLICY_REQUIRE_APPROVAL"] = ""
os.environ["AGENTBOX_PREFECT_SERVER"] = ""  # a developer's `make server` is not the tests' server
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


class Person:
    """Someone who answers the approval form of the flow run named `run_name` the way the Prefect UI's form does:
    waits (in a thread) until the run is Paused, reads the form's fields and defaults (`form`), then resumes the run
    with the defaults and `answer` over them. `answers` > 1 answers that many pauses in turn; an answer of None
    cancels the run instead, as the UI's Cancel button does."""

    def __init__(self, run_name: str, answer: dict | None, answers: int = 1, timeout: float = 240,
                 thinks_for: float = 0.0) -> None:
        self.run_name, self.answer, self.answers, self.timeout = run_name, answer, answers, timeout
        self.thinks_for = thinks_for  # seconds the person takes before answering
        self.form: dict = {}
        self.forms: list[dict] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        # the test's Prefect settings (the harness's API) live in context variables: the thread gets a copy
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._play,), daemon=True)

    def __enter__(self) -> "Person":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error and exc_info[0] is None:
            raise self.error
        assert exc_info[0] is not None or len(self.forms) == self.answers, f"answered {len(self.forms)} form(s)"

    def _play(self) -> None:
        try:
            asyncio.run(self._answer_all())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc

    async def _answer_all(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
        from prefect.flow_runs import aresume_flow_run
        from prefect.input.actions import aread_flow_run_input
        from prefect.states import Cancelling

        deadline = time.monotonic() + self.timeout
        async with get_client() as client:
            while len(self.forms) < self.answers and not self._stop.is_set():
                assert time.monotonic() < deadline, f"{self.run_name} never paused for approval"
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[self.run_name])))
                paused = [r for r in runs if r.state and r.state.is_paused()]
                if not paused:
                    await asyncio.sleep(0.2)
                    continue
                run = paused[0]
                keyset = run.state.state_details.run_input_keyset
                schema = await aread_flow_run_input(keyset["schema"], flow_run_id=run.id)
                self.form = {name: field.get("default") for name, field in schema["properties"].items()}
                self.forms.append(self.form)
                await asyncio.sleep(self.thinks_for)
                if self.answer is None:
                    await client.set_flow_run_state(run.id, Cancelling(), force=True)
                    return
                await aresume_flow_run(run.id, run_input={**self.form, **self.answer})
                while (await client.read_flow_run(run.id)).state.is_paused():
                    await asyncio.sleep(0.1)


async def everything_prefect_stored() -> str:
    """What the test harness's Prefect API serves (logs, artifacts, runs) and every row of its database, as text."""
    import json
    import sqlite3

    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    async with get_client() as client:
        logs = await client.read_logs()
        artifacts = await client.read_artifacts()
        runs = await client.read_flow_runs()
    api_view = json.dumps([m.model_dump(mode="json") for m in [*logs, *artifacts, *runs]])
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    rows = []
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            rows += [repr(row) for row in conn.execute(f'SELECT * FROM "{table}"')]
    return api_view + "\n".join(rows)
