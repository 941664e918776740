"""Benchmark: how long a sandbox outlives a run killed outright, and what keeping it alive costs.

    .venv/bin/python benchmarks/leases.py [--runs 3] [--lease 6]

For each backend (local bubblewrap, and E2B through the real SDK against the wire-level stand-in), a run process
creates a sandbox on a lease and renews it as a session does (tasks/lease.py: every third of the lease), for two
leases; then it is SIGKILLed, and the benchmark times how long until the last sandbox process is gone (local) or
the stand-in killed the sandbox (e2b). Also counted: the renewal requests E2B received per minute per sandbox, beside
what the session's lease keeper sends at the default lease (SANDBOX_LEASE_SECONDS=90). Prints figures; asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The run: create a sandbox on a lease, say its id, renew it every third of the lease until killed.
RUN = """
import asyncio, sys, time
from agentbox.sandboxes import get_backend
from agentbox.settings import load_settings

async def main(backend, lease):
    sandboxes = get_backend(load_settings(), backend)
    handle = await sandboxes.create({"notion": {"internalIntegrationToken": "ntn_bench"}}, {}, 600,
                                    {"app": "bench-leases"}, lease_seconds=lease)
    print(handle.id, flush=True)
    while True:
        await asyncio.sleep(lease / 3)
        await sandboxes.renew(handle, lease)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def local_processes(sandbox_id: str) -> list[int]:
    """Pids whose command line names the sandbox's state (its supervisor, bubblewrap, gateway, egress proxy)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if sandbox_id.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def one_run(backend: str, lease: int, env: dict[str, str], gone) -> tuple[float, float]:
    """Seconds from SIGKILL to the sandbox gone, and the run's life before it (two leases)."""
    run = subprocess.Popen([sys.executable, "-c", RUN, backend, str(lease)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, text=True)
    sandbox_id = run.stdout.readline().strip()
    started = time.monotonic()
    time.sleep(2 * lease)
    assert not gone(sandbox_id), "the sandbox died while its run renewed it"
    run.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    run.wait()
    while not gone(sandbox_id) and time.monotonic() - killed < lease + 60:
        time.sleep(0.05)
    return time.monotonic() - killed, killed - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lease", type=int, default=6)
    args = parser.parse_args()

    from tests.e2b_standin import E2BStandIn
    from tests.worlds import Services

    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        services = Services.start(stack, Path(tmp))
        e2b = stack.enter_context(E2BStandIn(catalog_file=str(services.catalog)))
        root = Path(tmp) / "sandboxes"
        base = {**os.environ, "PYTHONPATH": str(ROOT), "ANTHROPIC_API_KEY": "sk-bench"}
        envs = {"local": {**base, "SANDBOX_BACKEND": "local", "LOCAL_SANDBOX_ROOT": str(root),
                          "LOCAL_MCP_CATALOG": str(services.catalog)},
                "e2b": {**base, **e2b.env, "SANDBOX_BACKEND": "e2b"}}
        gone = {"local": lambda i: not local_processes(i), "e2b": lambda i: i not in e2b.alive()}
        figures: dict[str, list[float]] = {"local": [], "e2b": []}
        renewals, lived = 0, 0.0
        for run in range(args.runs):
            for backend in ("local", "e2b"):
                before = sum(1 for r in e2b.requests if r.path.endswith("/timeout"))
                after_kill, life = one_run(backend, args.lease, envs[backend], gone[backend])
                figures[backend].append(after_kill)
                if backend == "e2b":
                    renewals += sum(1 for r in e2b.requests if r.path.endswith("/timeout")) - before
                    lived += life
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)

    print(f"\nA sandbox after its run's SIGKILL, lease {args.lease} s, medians of {args.runs} interleaved runs")
    for backend, label in (("local", "local: last sandbox process gone"), ("e2b", "e2b: stand-in killed it")):
        print(f"{label:<40} {statistics.median(figures[backend]):>6.2f} s  (lease {args.lease} s; goal: lease + a "
              "few seconds)")
    per_minute = renewals / lived * 60 if lived else float("nan")
    print(f"{'e2b: set_timeout requests per minute':<40} {per_minute:>6.1f}    (a third of a {args.lease} s lease: "
          f"{180 / args.lease:.1f}; at the default 90 s lease the session sends 2.0, and 4.0 slot renewals to "
          "Prefect)")
    print("Every run: " + json.dumps({k: [round(v, 2) for v in vs] for k, vs in figures.items()}))


if __name__ == "__main__":
    main()
