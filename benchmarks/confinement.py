"""Benchmark: what confinement costs a session (the network namespace, the egress proxy, the sandbox's own uid).

    uv run python benchmarks/confinement.py [--pairs 5]

Full `notion_to_github` rehearsal sessions through Prefect on the local backend, alternating in one process:
confined (the product as it ships) and a baseline without confinement (the same bubblewrap sandbox, but commands
share the host's network, hold the real model key and gateway token, and start as bwrap's own user). The baseline is
this file's subclass, swapped in under the backend's name between sessions; the egress proxy still starts with
each baseline sandbox (its supervisor starts it), it just carries nothing. Prints each pair, the medians and the
ratio pair by pair (confined / baseline); asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from unittest import mock

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("SANDBOX_CONCURRENCY_LIMIT", "")  # Prefect's temporary server has no limit to count against

from agentbox.sandboxes import BACKENDS
from agentbox.sandboxes.local import LocalSandboxes, processes
from agentbox.sandboxes.local.owners import write_private
from agentbox.sandboxes.local.state import SandboxState

CONFINED = BACKENDS["local"]
BASELINE = f"{__name__}:UnconfinedSandboxes"


class UnconfinedSandboxes(LocalSandboxes):
    """The local backend with its commands' confinement taken out (the baseline only: never a product path)."""

    async def create(self, mcp_config, envs, *args, **kwargs):
        handle = await super().create(mcp_config, envs, *args, **kwargs)
        state = SandboxState.of(self.root, handle.id)
        write_private(state.env_file, json.dumps(envs))  # the real model URL and key, no proxy
        return handle

    async def run(self, handle, command, **kwargs):
        # Its commands' argv without the network namespace and without confine (sessions run one at a time).
        with (mock.patch.object(processes, "offline", lambda state, routes, command: ["--", *command]),
              mock.patch.object(processes, "confined", lambda argv, *limits: argv)):
            return await super().run(handle, command, **kwargs)

    async def claude_gateway_token(self, handle):
        return await self.gateway_token(handle)


def session(adapter: str, index: int) -> tuple[float, dict[str, float]]:
    from agentbox.policy import RunPolicy
    from flows.notion_to_github import IssueRequest, notion_to_github

    BACKENDS["local"] = adapter
    try:
        started = time.monotonic()
        unattended = RunPolicy(require_approval=[])  # nobody approves create_issue in a benchmark
        result = asyncio.run(notion_to_github(IssueRequest(repo=f"octo/bench-{index}"), rehearsal=True,
                                              policy=unattended))
        return time.monotonic() - started, result.session.steps
    finally:
        BACKENDS["local"] = CONFINED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="confined/baseline session pairs (after one warm-up)")
    args = parser.parse_args()

    session(CONFINED, 0)  # warm-up: Prefect's temporary server, imports, the page cache
    pairs = []
    for i in range(args.pairs):
        confined, baseline = session(CONFINED, 2 * i + 1), session(BASELINE, 2 * i + 2)
        pairs.append((confined, baseline))
        print(f"pair {i + 1}: confined {confined[0]:.2f} s, baseline {baseline[0]:.2f} s, "
              f"ratio {confined[0] / baseline[0]:.3f}", flush=True)
    names = list(pairs[0][0][1])
    print("\nMedian seconds per step (confined / baseline)")
    for name in names:
        a = statistics.median(p[0][1][name] for p in pairs)
        b = statistics.median(p[1][1][name] for p in pairs)
        print(f"{name:>16} {a:>8.3f} {b:>8.3f}")
    ratios = [a[0] / b[0] for a, b in pairs]
    confined, baseline = (statistics.median(pair[k][0] for pair in pairs) for k in (0, 1))
    print(f"\nwhole session: median confined {confined:.2f} s, baseline {baseline:.2f} s; ratio pair by pair median "
          f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}; target <= 1.05)")


if __name__ == "__main__":
    main()
