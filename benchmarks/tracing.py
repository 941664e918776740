"""Benchmark: what tracing costs a session, on and off, and what the off path costs against older code.

    .venv/bin/python benchmarks/tracing.py [--runs 5] [--baseline REF]

Each run is `python -m flows.notion_to_github --rehearsal --json` in a fresh process against one kept Prefect
server, timed whole (the command's wall time) and by its session's steps (create, gateway ready, register, prompt,
kill, summed, as its result reports them):
- off: no OTEL_* variable (the default);
- on: OTEL_EXPORTER_OTLP_ENDPOINT at a local OTLP receiver that forwards the traces to Arize Phoenix (the tests'
  trace store, tests/tracestore.py), every layer exporting;
- baseline (with --baseline REF, e.g. the commit before tracing): the same command from that commit's code, taken
  with `git archive` into a temporary directory, run on this environment.
The kinds alternate (one of each in turn), so a slower minute of the machine slows all of them. While a traced run
is timed, the receiver takes its exports at once but holds them back from the store, then hands them over and waits
(untimed) until the store has the whole trace: on this 2-core machine the store's own work would otherwise land on
the run it traces, as a store on another machine would not. Prints medians and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.speed import DEMO, KeptServer, median  # noqa: E402 - after the path
from tests.tracestore import running_trace_store  # noqa: E402


def checkout(ref: str, directory: Path) -> Path:
    """The code of `ref` (git archive) in `directory`, with this checkout's npm tools (the `claude` binary)."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, check=True, capture_output=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(directory, filter="data")
    (directory / "node_modules").symlink_to(ROOT / "node_modules")
    return directory


def session(code: Path, env: dict[str, str], number: int) -> tuple[float, dict[str, float]]:
    """(wall seconds, the session's steps) of one rehearsal from the command line, run from `code`."""
    argv = [sys.executable, "-m", "flows.notion_to_github", *DEMO, "--json"]
    argv[argv.index("octo-org/demo")] = f"octo-org/trace-{number}"
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=code, env={**env, "PYTHONPATH": str(code)}, capture_output=True, text=True,
                          timeout=300)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"the run failed:\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout)["session"]["steps"]


def stored(tracing) -> None:
    """Wait until the store holds every span of the last traced run."""
    recorded = tracing.recorder.spans()
    last = [s for s in recorded if s["attributes"].get("prefect.run.type") == "flow"][-1]["trace_id"]
    tracing.store.spans(last, expect=sum(s["trace_id"] == last for s in recorded), timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind (alternating)")
    parser.add_argument("--baseline", default=None, metavar="REF", help="also run this git ref's code, untraced")
    parser.add_argument("--store-after", action="store_true",
                        help="hand the traces to the store only after the last run (the store idle throughout)")
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="agentbox-tracing-") as home:
        server = KeptServer(Path(home))
        try:
            with running_trace_store(Path(home) / "phoenix") as tracing:
                off = {k: v for k, v in server.env.items() if not k.startswith("OTEL_")}
                off.update(AGENTBOX_PREFECT_SERVER=server.api, PREFECT_API_URL=server.api)
                kinds = {"off": (ROOT, off), "on": (ROOT, {**off, **tracing.env()})}
                if args.baseline:
                    kinds["baseline"] = (checkout(args.baseline, Path(home) / "baseline"), off)
                session(ROOT, off, 0)  # warms the environment's caches; not counted
                for run in range(1, args.runs + 1):
                    for kind, (code, env) in kinds.items():
                        if kind == "on":
                            tracing.recorder.hold()
                        figures.setdefault(kind, []).append(session(code, env, run))
                        if kind == "on" and not args.store_after:
                            tracing.recorder.release()
                            stored(tracing)
                    print(f"run {run}/{args.runs} done", file=sys.stderr, flush=True)
                tracing.recorder.release()
                stored(tracing)
                spans = len(tracing.recorder.spans())
        finally:
            server.stop()

    m = {kind: (median([w for w, _ in runs]), median([sum(s.values()) for _, s in runs]))
         for kind, runs in figures.items()}
    steps = list(figures["off"][0][1])
    print(f"\nTracing's cost, medians of {args.runs} alternating runs (seconds): command wall time, session steps "
          f"(summed, then each: {', '.join(steps)})")
    for kind, (wall, total) in m.items():
        each = " ".join(f"{median([s[step] for _, s in figures[kind]]):>6.3f}" for step in steps)
        print(f"{kind:<10} {wall:>7.3f} {total:>7.3f}   {each}")
    on, off = m["on"], m["off"]
    print(f"on / off:        {on[0] / off[0]:.3f}x wall, {on[1] / off[1]:.3f}x steps (goal: at most 1.05x)")
    if "baseline" in m:
        base = m["baseline"]
        print(f"off / baseline:  {off[0] / base[0]:.3f}x wall, {off[1] / base[1]:.3f}x steps (goal: 1.00x within "
              "noise)")
    print(f"spans exported by the traced runs: {spans} ({spans / args.runs:.0f} a run)")
    print("\nEvery run (wall, steps): " + "; ".join(
        f"{kind} " + " ".join(f"{w:.2f}/{sum(s.values()):.2f}" for w, s in runs) for kind, runs in figures.items()))


if __name__ == "__main__":
    main()
