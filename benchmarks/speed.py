"""Benchmark: how fast one session is, from its parts to `make demo`, every figure measured side by side in one run.

    .venv/bin/python benchmarks/speed.py [--runs 3]

1. The MCP servers alone: each started bare, timed to its answer to initialize + tools/list over stdio.
2. The gateway: a local sandbox created until the readiness probe lists every expected tool (what a session waits
   for before it registers Claude), against the slowest server alone; cold, and claiming a warm spare gateway.
3. The session: the steps of a `notion_to_github` rehearsal run in this process (slot, create, gateway ready,
   register, prompt, kill), summed. This and what follows run as `make demo` does, with LOCAL_WARM_GATEWAY: each
   run leaves a warm spare gateway for the next.
4. The flow: the same run's wall time in this process, Prefect included (its first run, which warms imports, is not
   counted).
5. The command line: `python -m flows.notion_to_github --rehearsal` in a fresh process, against the flow in-process.
6. `make demo`, warm (its environment installed), and when its first line of output came (`make -s`: the
   program's own line, not make's echo of the command): with a kept Prefect server
   (`make server`: this benchmark starts one of its own, on a free port and a private PREFECT_HOME) and with the
   temporary server Prefect starts when none answers.

Every run, of every kind, is interleaved (one of each in turn), so a slower minute of the machine slows all of
them. Prints figures and the issue's goals beside them; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
BIN = Path(sys.executable).parent
DEMO = ["--repo", "octo-org/demo", "--rehearsal", "--require-approval="]  # what `make demo` runs without a tty
MAKE_DEMO = ["make", "-s", "--no-print-directory", "demo"]
UPSTREAMS = {  # the catalog's servers, with placeholder credentials: tools/list needs none
    "notion": (["notion-mcp-server"], {"OPENAPI_MCP_HEADERS": "{}"}),
    "githubOfficial": (["github-mcp-server", "stdio"], {"GITHUB_PERSONAL_ACCESS_TOKEN": "placeholder"}),
}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------------------------- the servers alone


def upstream_alone(command: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning an MCP stdio server to its tools/list answer."""
    path = f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"
    started = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PATH": path, **env})
    try:
        def send(message: dict) -> None:
            proc.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
            proc.stdin.flush()

        def answer(number: int) -> dict:
            while True:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{command[0]} exited before answering")
                message = json.loads(line)
                if message.get("id") == number:
                    return message

        send({"id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                                           "clientInfo": {"name": "speed", "version": "1"}}})
        answer(1)
        send({"method": "notifications/initialized"})
        send({"id": 2, "method": "tools/list"})
        if not answer(2)["result"]["tools"]:
            raise RuntimeError(f"{command[0]} listed no tools")
        return time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------------------------------- the gateway


async def gateway_ready(root: Path, warm: bool) -> float:
    """Seconds from a local sandbox's create to the probe's success, with the mission's servers and stand-ins; warm:
    the create claims a warm spare gateway (LOCAL_WARM_GATEWAY), made beforehand (the last kill under `root` made
    one)."""
    from agentbox.gateway.probe import wait_until_ready
    from agentbox.missions.notion_to_github import MCP
    from agentbox.plan import plan_session
    from agentbox.rehearsal.model import ModelScript
    from agentbox.rehearsal.stage import rehearsal_stage
    from agentbox.sandboxes.local import LocalSandboxes
    from agentbox.sandboxes.local.spare import CLAIMABLE_MARKER
    from agentbox.settings import load_settings

    with rehearsal_stage(ModelScript([{"text": "ok"}])) as stage:
        plan = plan_session(load_settings(), "benchmark", MCP, backend="local", stand_ins=stage.stand_ins)
        settings = plan.read_settings()
        sandboxes = LocalSandboxes(root, plan.backend_options["catalog_file"], warm_spare=warm)
        if warm:
            sandboxes.make_spare()
            deadline = time.monotonic() + 60
            while not any(root.glob(f"local-*/{CLAIMABLE_MARKER}")) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)  # let it finish its imports, as a spare left by the last session has
        started = time.monotonic()
        handle = await sandboxes.create(plan.resolved_mcp(settings), {}, 300, {})
        try:
            token = await sandboxes.gateway_token(handle)
            await wait_until_ready(handle.gateway_url, token, plan.expected_tools, deadline_seconds=60)
            return time.monotonic() - started
        finally:
            sandboxes.warm_spare = False  # this kill leaves no spare: each measure starts from its own
            await sandboxes.kill(handle.id)
            sandboxes.discard_spares()


# ---------------------------------------------------------------------------------------- the flow, in this process


def flow_in_process(number: int) -> tuple[float, float]:
    """(wall seconds of a notion_to_github rehearsal run in this process, the sum of its session's steps)."""
    from agentbox.policy import RunPolicy
    from flows.notion_to_github import IssueRequest, notion_to_github

    started = time.monotonic()
    result = asyncio.run(notion_to_github(IssueRequest(repo=f"octo-org/speed-{number}"), rehearsal=True,
                                          policy=RunPolicy(require_approval=[])))
    return time.monotonic() - started, sum(result.session.steps.values())


# ------------------------------------------------------------------------------------ the command line, make demo


def timed_command(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, seconds to its first line of output) of a command run without a terminal."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    first, output = None, []
    for line in proc.stdout:
        first = first or time.monotonic() - started
        output.append(line.decode(errors="replace"))
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{''.join(output[-20:])}")
    return time.monotonic() - started, first or float("nan")


class KeptServer:
    """What `make server` keeps, started for this benchmark: a Prefect server on a free loopback port, its own
    PREFECT_HOME, bootstrapped with the sandbox limit."""

    def __init__(self, home: Path) -> None:
        from agentbox.host import free_port

        port = free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.env.pop("PREFECT_API_URL", None)
        self.log = open(home / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                      str(port)], env=self.env, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.api}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"the Prefect server did not start: see {home / 'server.log'}") from None
                time.sleep(0.25)
        subprocess.run([sys.executable, "-m", "deployments.bootstrap", "--sandboxes", "5"], cwd=ROOT, check=True,
                       env={**self.env, "PREFECT_API_URL": self.api}, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (interleaved)")
    args = parser.parse_args()

    figures: dict[str, list[float]] = {}

    def measure(name: str, call: Callable[[], float | tuple[float, ...]], *more: str) -> None:
        values = call()
        for key, value in zip((name, *more), values if isinstance(values, tuple) else (values,)):
            figures.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory(prefix="agentbox-speed-") as home:
        server = KeptServer(Path(home))
        try:
            # as `make demo` runs: each run leaves a warm spare gateway for the next (LOCAL_WARM_GATEWAY)
            os.environ["LOCAL_WARM_GATEWAY"] = "true"
            kept = {**server.env, "AGENTBOX_PREFECT_SERVER": server.api, "LOCAL_WARM_GATEWAY": "true"}
            temporary = {**os.environ, "AGENTBOX_PREFECT_SERVER": ""}
            os.environ["PREFECT_API_URL"] = server.api  # the in-process flow runs on the same server as the CLI
            flow_in_process(0)  # warms this process's imports and Prefect's clients; not counted
            for run in range(1, args.runs + 1):
                for key, (command, env) in UPSTREAMS.items():
                    measure(f"upstream {key}", lambda: upstream_alone(command, env))  # noqa: B023 - called at once
                measure("gateway", lambda: asyncio.run(gateway_ready(Path(home) / "sandboxes", warm=False)))
                measure("gateway warm", lambda: asyncio.run(gateway_ready(Path(home) / "sandboxes", warm=True)))
                measure("flow", lambda: flow_in_process(run), "steps")  # noqa: B023
                measure("cli", lambda: timed_command([sys.executable, "-m", "flows.notion_to_github", *DEMO], kept),
                        "cli first line")
                measure("demo", lambda: timed_command(MAKE_DEMO, kept), "demo first line")
                measure("demo temporary", lambda: timed_command(MAKE_DEMO, temporary), "demo temporary first line")
                print(f"run {run}/{args.runs} done", file=sys.stderr, flush=True)
        finally:
            server.stop()
            from agentbox.sandboxes.local import LocalSandboxes
            from agentbox.settings import load_settings

            LocalSandboxes(load_settings().local_sandbox_root).discard_spares()  # the runs' last spare

    m = {name: median(values) for name, values in figures.items()}
    slowest = max(m[f"upstream {key}"] for key in UPSTREAMS)
    rows = [
        *((f"MCP server {key} alone: start to tools/list", m[f"upstream {key}"], "") for key in UPSTREAMS),
        ("gateway: create to probe success, cold", m["gateway"], f"{m['gateway'] / slowest:.1f}x the slowest server"),
        ("gateway: the same, claiming a warm spare", m["gateway warm"],
         f"{m['gateway warm'] / slowest:.1f}x the slowest server (goal: at most 2x)"),
        ("session: its steps, summed", m["steps"], "goal: at most 2.5 s"),
        ("flow in this process (Prefect included)", m["flow"], f"{m['flow'] / m['steps']:.2f}x the session"),
        ("command line, fresh process (kept server)", m["cli"],
         f"{m['cli'] / m['flow']:.2f}x the flow in-process (goal: at most 1.5x)"),
        ("  its first line of output", m["cli first line"], ""),
        ("make demo, warm, kept server", m["demo"], "goal: at most 8 s"),
        ("  its first line of output", m["demo first line"], "goal: within 1 s"),
        ("make demo, warm, temporary server", m["demo temporary"], ""),
        ("  its first line of output", m["demo temporary first line"], ""),
    ]
    print(f"\nSpeed of one session, medians of {args.runs} interleaved runs (seconds)")
    for label, value, note in rows:
        print(f"{label:<54} {value:>7.3f}  {note}")
    print("\nEvery run: " + "; ".join(f"{k} " + " ".join(f"{v:.2f}" for v in vs) for k, vs in figures.items()))


if __name__ == "__main__":
    main()
