"""A real Prefect server with this project deployed on it, as a user runs it, for the tests that need one
(test_deployments.py, test_ui.py): `prefect server start` on loopback with its own home, database and UI,
`python -m deployments.bootstrap`, `prefect deploy --all` from a copy of this checkout, and a real process worker
(`prefect worker start`) whose sessions run on the local backend against the stand-ins of tests/worlds.py.
One of each per test module that asks for them, stopped with it: the deployed reaper would otherwise kill the
sandboxes of the other tests, whose runs this server does not know. Registered as a plugin by conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prefect.client.orchestration import PrefectClient

from flows.agent_session import EXAMPLE_MCP
from tests.support import PROJECT, WORKDIR, stop_process_group
from tests.worlds import World

BIN = Path(sys.executable).parent
FAST = {  # the same services, polled more often than production needs, so the tests do not wait on timers
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "1",
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
}
SESSION = {"request": {"prompt": "Wait for the model.", "mcp": EXAMPLE_MCP}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict[str, str], log: Path, cwd: Path = WORKDIR) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`prefect server start` on a loopback port, returned once its API answers /health (within 3 minutes)."""
    proc = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the Prefect server did not start"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def server(tmp_path_factory, services):
    """`prefect server start` with its own home (so its own sqlite database), and the environment of its users."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    # the UI on, at the address its pages call the API from (tests/test_ui.py drives it in a browser)
    server_env = {**base, **FAST, "PREFECT_HOME": str(home / "server"), "PREFECT_UI_ENABLED": "true",
                  "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
                  "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
                  "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1"}
    log = home / "server.log"
    url = f"http://127.0.0.1:{port}/api"
    proc = start_server(port, server_env, log)
    env = {**base, **FAST, "PREFECT_API_URL": url, "PREFECT_HOME": str(home / "client")}
    try:
        yield SimpleNamespace(url=url, ui=url.removesuffix("/api"), env=env, home=home, logs=[log])
    finally:
        stop_process_group(proc)


def call(server, coroutine_fn):
    """Run `coroutine_fn(client)` against the test's server."""
    async def main():
        async with PrefectClient(server.url) as client:
            return await coroutine_fn(client)

    return asyncio.run(main())


def cli(server, *command: str, cwd: Path = WORKDIR, extra_env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(command), cwd=cwd, env={**server.env, **(extra_env or {})}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def deployed(server):
    """bootstrap (twice: it is idempotent) and `prefect deploy --all` from a copy of this checkout."""
    first = cli(server, sys.executable, "-m", "deployments.bootstrap", "--sandboxes", "2")
    again = cli(server, sys.executable, "-m", "deployments.bootstrap", "--sandboxes", "2")
    checkout = server.home / "checkout"  # `prefect deploy` may write next to prefect.yaml: keep the real one clean
    shutil.copytree(PROJECT, checkout, ignore=shutil.ignore_patterns(".venv", "node_modules", ".git", "__pycache__"))
    for link in (".venv", "node_modules"):
        (checkout / link).symlink_to(PROJECT / link)
    output = cli(server, str(BIN / "prefect"), "--no-prompt", "deploy", "--all", cwd=checkout)
    return SimpleNamespace(bootstrap=(first, again), output=output, checkout=checkout)


@pytest.fixture(scope="module")
def worker(server, deployed, services):
    """A real process worker on the `agentbox` pool whose runs use the local backend and a model that answers after
    4 s (so sessions overlap); a run can point ANTHROPIC_BASE_URL at `never`, a model that never answers."""
    world = World("local", services)
    model = world.model([{"hang_seconds": 4}])
    never = world.model([{"hang_seconds": 600}])
    # the workflows' own approvals (notion-to-github asks before create_issue), not the suite's "none" (support.py)
    env = {**{k: v for k, v in server.env.items() if k != "POLICY_REQUIRE_APPROVAL"}, **world.environment(model)}
    log = server.home / "worker.log"
    server.logs.append(log)
    proc = start([str(BIN / "prefect"), "worker", "start", "--pool", "agentbox", "--limit", "6"], env, log,
                 cwd=deployed.checkout)
    try:
        yield SimpleNamespace(proc=proc, world=world, never=never)
    finally:
        stop_process_group(proc)
        world.close()


async def deployment_id(client: PrefectClient, name: str) -> str:
    return str((await client.read_deployment_by_name(name)).id)


def trigger(server, name: str, parameters: dict | None = None, env: dict[str, str] | None = None) -> str:
    async def go(client: PrefectClient) -> str:
        run = await client.create_flow_run_from_deployment(
            await deployment_id(client, name), parameters=parameters or {},
            job_variables={"env": env} if env else None,
        )
        return str(run.id)

    return call(server, go)


def final_state(server, run_id: str, timeout: float = 240):
    deadline = time.monotonic() + timeout

    async def read(client: PrefectClient):
        return await client.read_flow_run(run_id)

    while time.monotonic() < deadline:
        run = call(server, read)
        if run.state and run.state.is_final():
            return run
        time.sleep(0.25)
    raise TimeoutError(f"run {run_id} never finished: {run.state}; logs in {server.logs}")


class WebhookListener:
    """A webhook on loopback that keeps every JSON body it is sent, with when it came."""

    def __init__(self) -> None:
        received = self.received = []

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait_for(self, subject_start: str, about: str, timeout: float = 120) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [(at, m) for at, m in self.received if m["subject"].startswith(subject_start) and about in m["body"]]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no '{subject_start}' message about {about}: {self.received}")


@pytest.fixture(scope="module")
def listener(server, deployed):
    """A webhook on loopback that this module's server notifies (`deployments.bootstrap --notify`)."""
    hook = WebhookListener()
    cli(server, sys.executable, "-m", "deployments.bootstrap", "--sandboxes", "2", "--notify", hook.url)
    yield hook
    hook.http.shutdown()
