"""Benchmark: many concurrent sessions from one batch run on the E2B stand-in, with and without faults.

    uv run python benchmarks/fanout.py [--levels 1,8,32,64] [--seed 7] [--faults both|off|on]

For each level N, one `notion-to-github-batch` run of N sessions (a production run, not a rehearsal: the remote
services are stand-ins) runs in a fresh orchestrating process under a sandbox limit of min(N, --slots) slots. The
stand-ins (E2B's control plane and envd with its sandboxes, Anthropic, Notion, GitHub) run in another process, so the
orchestrator's
memory is its own. Printed per run: wall time, sessions per minute, p50/p95 of each step, the orchestrator's peak RSS
(children excluded: the temporary Prefect server is a child, the sandboxes belong to the stand-ins' process), what
it grew per session and per session in flight, its CPU time (is it the bottleneck, or the sandboxes?), the least
memory the machine had left, outcomes with failure reasons, and sandboxes left alive.

With faults, seeded rates hit the sessions: E2B create 503 (10 %), model 529 (10 %), both absorbed by retries;
GitHub 502 on create_issue (5 %) and a sandbox vanishing mid-run (3 %), which fail their sessions with a reason.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MAX_SESSIONS = 64
TITLE, BODY = "Fanout", "From the fanout benchmark."
STEPS = ["slot", "create", "gateway_ready", "register", "prompt", "kill", "reused"]


def repos(count: int) -> list[str]:
    return [f"octo-org/fanout-{n:03d}" for n in range(count)]


# ------------------------------------------------------------------------------------- the stand-ins' process


def serve(seed: int) -> None:
    """Start every remote service's stand-in; print the environment a run needs; then answer `faults on|off`,
    `alive` and `quit` on stdin, one JSON line each."""
    from agentbox.rehearsal.faults import FaultInjector
    from agentbox.rehearsal.seed import notion_to_github_script
    from tests.e2b_standin import E2BStandIn
    from tests.worlds import CREDENTIALS, Services, World

    with ExitStack() as stack, tempfile.TemporaryDirectory() as directory:
        services = Services.start(stack, Path(directory))
        e2b = stack.enter_context(E2BStandIn(catalog_file=str(services.catalog), seed=seed))
        world = World("e2b", services, e2b)
        stack.callback(world.close)
        scripts = {repo: notion_to_github_script(*repo.split("/"), TITLE, BODY) for repo in repos(MAX_SESSIONS)}
        model = world.model(scripts)
        print(json.dumps({**world.environment(model), **CREDENTIALS}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "faults on":
                e2b.inject("create_error", status=503, rate=0.10, count=None)
                e2b.inject("vanish", match="claude --input-format", rate=0.03, count=None)
                model.app.state.faults = FaultInjector([{"status": 529, "rate": 0.10}], seed=seed)
                services.github.app.state.faults = FaultInjector(
                    [{"status": 502, "rate": 0.05, "match": "/issues"}], seed=seed)
                answer = {"armed": True}
            elif command == "faults off":
                e2b.clear_faults()
                model.app.state.faults = services.github.app.state.faults = FaultInjector()
                answer = {"armed": False}
            elif command == "alive":
                answer = {"sandboxes": len(e2b.alive()), "processes": len(e2b.wait_for_no_processes(10))}
            else:
                break
            print(json.dumps(answer), flush=True)


# ------------------------------------------------------------------------------------- the orchestrating process


def rss_mb() -> float:
    """This process's resident memory now (children excluded)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def orchestrate(sessions: int, slots: int) -> None:
    """One batch run of `sessions` sessions under a limit of `slots` sandboxes; print its figures as one JSON line."""
    import asyncio

    from agentbox.policy import RunPolicy
    from flows.notion_to_github import IssueRequest
    from flows.notion_to_github_batch import notion_to_github_batch

    issues = [IssueRequest(repo=repo, title=TITLE, body=BODY) for repo in repos(sessions)]
    unattended = RunPolicy(require_approval=[])
    peak, lowest, sampling = [rss_mb()], [available_mb()], True

    def sample() -> None:
        while sampling:
            peak[0], lowest[0] = max(peak[0], rss_mb()), min(lowest[0], available_mb())
            time.sleep(0.1)

    async def main() -> dict:
        await sandbox_limit_of(slots)
        baseline = rss_mb()
        threading.Thread(target=sample, daemon=True).start()
        started = time.monotonic()
        state = await notion_to_github_batch(issues, policy=unattended, return_state=True)
        wall = time.monotonic() - started
        batch = await state.aresult(raise_on_failure=False)
        return {"sessions": sessions, "slots": slots, "wall": wall, "baseline_mb": baseline,
                "rows": [r.model_dump(mode="json") for r in batch.sessions]}

    figures = asyncio.run(main())
    sampling = False
    own = resource.getrusage(resource.RUSAGE_SELF)
    figures.update(peak_mb=peak[0], min_available_mb=lowest[0], maxrss_mb=own.ru_maxrss / 1024,
                   cpu_seconds=own.ru_utime + own.ru_stime)
    print("FIGURES " + json.dumps(figures), flush=True)


async def sandbox_limit_of(slots: int) -> None:
    """The temporary server's sandbox limit, with exactly `slots` (it outlives a run: the runs share PREFECT_HOME)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from agentbox.settings import load_settings
    from tasks.sandbox import ensure_sandbox_limit

    settings = load_settings()
    await ensure_sandbox_limit(settings, slots=slots)
    async with get_client() as client:
        await client.update_global_concurrency_limit(settings.sandbox_concurrency_limit,
                                                     GlobalConcurrencyLimitUpdate(limit=slots))


# ------------------------------------------------------------------------------------- the report


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_level(env: dict[str, str], sessions: int, slots: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--orchestrate", str(sessions), "--slots", str(slots)], env=env,
                          cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=3600)
    line = next((out for out in done.stdout.splitlines() if out.startswith("FIGURES ")), None)
    if line is None:
        raise RuntimeError(f"the {sessions}-session run failed: {done.stderr[-3000:]}")
    return json.loads(line[len("FIGURES "):])


def report(figures: dict, faults: bool, left: dict) -> list[str]:
    rows, n = figures["rows"], figures["sessions"]
    steps = sorted({k for r in rows for k in r["steps"]}, key=STEPS.index)
    outcome: dict[str, int] = {}
    for r in rows:
        key = r["outcome"] if r["outcome"] == "completed" else f"{r['outcome']} ({r['reason']})"
        outcome[key] = outcome.get(key, 0) + 1
    per_step = "  ".join(
        f"{s} {statistics.median([r['steps'][s] for r in rows if s in r['steps']]):.2f}/"
        f"{percentile([r['steps'][s] for r in rows if s in r['steps']], 0.95):.2f}" for s in steps)
    grown = figures["peak_mb"] - figures["baseline_mb"]
    return [
        f"{n:>3} sessions ({figures['slots']} at once), faults {'on ' if faults else 'off'}: "
        f"wall {figures['wall']:.1f} s, "
        f"{n / figures['wall'] * 60:.1f} sessions/min; orchestrator RSS {figures['baseline_mb']:.0f} -> "
        f"{figures['peak_mb']:.0f} MB (+{grown / n:.2f} MB/session); machine's least available "
        f"{figures['min_available_mb'] / 1024:.1f} GiB; left alive: {left['sandboxes']} sandboxes, "
        f"{left['processes']} processes",
        f"      orchestrator CPU {figures['cpu_seconds']:.1f} s in all ({figures['cpu_seconds'] / figures['wall']:.0%} "
        f"of one core over the wall time; {os.cpu_count()} cores); outcomes: "
        f"{', '.join(f'{k}: {v}' for k, v in sorted(outcome.items()))}",
        *(f"      e.g. {reason}: {message[:160]}" for reason, message in
          {r["reason"]: r["message"] for r in rows if r["reason"]}.items()),
        f"      step p50/p95 s: {per_step}",
    ]


def slope_line(peaks: dict[int, float]) -> str:
    """What the orchestrator grows per session in flight at once, between the fewest and the most (a first session's
    one-off cost, imports and clients, is left out when there are more than two levels)."""
    counts = sorted(peaks)
    if len(counts) < 2:
        return "      (one level: no slope)"
    low = counts[1] if len(counts) > 2 else counts[0]
    slope = (peaks[counts[-1]] - peaks[low]) / (counts[-1] - low)
    return (f"      orchestrator: +{slope:.2f} MB per session in flight ({low} -> {counts[-1]} at once); at that rate "
            f"100 at once would need about {peaks[low] + slope * (100 - low):.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8,32,64", help="comma-separated session counts (at most 64)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--faults", choices=["both", "off", "on"], default="both")
    parser.add_argument("--slots", type=int, default=16,
                        help="the sandbox limit (all stand-in sandboxes share this machine's CPUs: 32 gateways "
                        "starting at once on 2 cores pass E2B's 60 s start timeout)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--orchestrate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.seed)
    if args.orchestrate:
        return orchestrate(args.orchestrate, args.slots)

    levels = [min(int(x), MAX_SESSIONS) for x in args.levels.split(",")]
    modes = {"both": [False, True], "off": [False], "on": [True]}[args.faults]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "E2B_", "ANTHROPIC_"))}
    base.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=tempfile.mkdtemp(prefix="fanout-prefect-"),
                PYTHONPATH=str(ROOT), PREFECT_LOGGING_LEVEL="WARNING")
    stand_ins = subprocess.Popen([sys.executable, __file__, "--serve", "--seed", str(args.seed)], env=base,
                                 cwd=tempfile.gettempdir(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(command: str) -> dict:
        stand_ins.stdin.write(command + "\n")
        stand_ins.stdin.flush()
        return json.loads(stand_ins.stdout.readline())

    try:
        env = {**base, **json.loads(stand_ins.stdout.readline())}
        print(f"fanout: levels {levels}, seed {args.seed}, {os.cpu_count()} CPUs, "
              f"{available_mb() / 1024:.1f} GiB available")
        for faults in modes:
            ask("faults on" if faults else "faults off")
            peaks = {}
            for level in levels:
                figures = run_level(env, level, min(level, args.slots))
                print("\n".join(report(figures, faults, ask("alive"))), flush=True)
                peaks.setdefault(figures["slots"], figures["peak_mb"])  # by sessions in flight at once
            print(slope_line(peaks), flush=True)
    finally:
        stand_ins.stdin.close()
        stand_ins.wait(60)


if __name__ == "__main__":
    main()
