"""Chaos: one batch run of 16 concurrent sessions on each backend, through a real Prefect API, while about a quarter
of them are hit by a seeded fault at a remote edge (E2B, the model API, GitHub, an MCP upstream behind the gateway).

Each session must end as its fault says: completed where a retry absorbs it (one E2B 503, one model 529), failed
with the right reason otherwise; the others untouched. Afterwards nothing may be left: no sandbox alive in the
stand-in's books or as a process, every slot of the sandbox limit free, no issue opened twice, no secret in anything
Prefect stored. The seed is printed; `CHAOS_SEED=<n>` replays a run, `CHAOS_HIT=16` hits every session (each
scenario of the backend once, as far as there are scenarios).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentbox.rehearsal.faults import FaultInjector
from agentbox.rehearsal.seed import notion_to_github_script
from agentbox.rehearsal.stage import rehearsal_catalog
from agentbox.settings import load_settings
from flows.notion_to_github import IssueRequest
from flows.notion_to_github_batch import notion_to_github_batch
from tests.support import everything_prefect_stored
from tests.worlds import CREDENTIALS, World

pytestmark = pytest.mark.usefixtures("prefect_api")

SESSIONS = 16
HIT = int(os.environ.get("CHAOS_HIT") or 4)  # about a quarter of them (CHAOS_HIT=16: all, each its own fault)
SEED = int(os.environ.get("CHAOS_SEED") or 20261205)


@dataclass
class Faults:
    """What one chaos run arms: faults per edge, each aimed at one session (its repository)."""

    model: list[dict]
    github: list[dict]
    e2b: list[dict]
    dying_upstream: str = "nobody"  # the repository whose create_issue kills github-mcp-server


@dataclass(frozen=True)
class Scenario:
    name: str
    arm: Callable[[Faults, str], None]
    reason: str | None  # the failure reason it must end with; None: the session completes
    backends: tuple[str, ...] = ("local", "e2b")


SCENARIOS = [
    # absorbed by a retry (Claude Code's own, the SDK's, or our create and kill tasks')
    Scenario("model API 529 overloaded, once", lambda f, r: f.model.append({"status": 529, "count": 1, "match": r}),
             None),
    Scenario("E2B create 503, once", lambda f, r: f.e2b.append(
        {"kind": "create_error", "status": 503, "session": r}), None, ("e2b",)),
    Scenario("model API 429 with retry-after, once", lambda f, r: f.model.append(
        {"status": 429, "retry_after": 1, "count": 1, "match": r}), None),
    Scenario("model stream cut mid-message, once", lambda f, r: f.model.append({"kind": "cut", "count": 1, "match": r}),
             None),
    Scenario("model slow first byte", lambda f, r: f.model.append(
        {"kind": "slow", "delay_seconds": 3, "count": 1, "match": r}), None),
    Scenario("GitHub slow", lambda f, r: f.github.append(
        {"kind": "slow", "delay_seconds": 2, "match": f"/repos/{r}/"}), None),
    Scenario("E2B create 429 with Retry-After, once", lambda f, r: f.e2b.append(
        {"kind": "create_error", "status": 429, "retry_after": 1, "session": r}), None, ("e2b",)),
    Scenario("E2B slow create", lambda f, r: f.e2b.append({"kind": "slow_create", "delay_seconds": 3, "session": r}),
             None, ("e2b",)),
    Scenario("E2B kill fails once", lambda f, r: f.e2b.append(
        {"kind": "api_error", "method": "DELETE", "path": "/sandboxes/", "status": 500, "session": r}), None, ("e2b",)),
    # failures, each with its reason
    Scenario("model API 500, not retryable", lambda f, r: f.model.append(
        {"status": 500, "should_retry": False, "match": r}), "model API"),
    Scenario("GitHub rate limit (429)", lambda f, r: f.github.append(
        {"status": 429, "retry_after": 60, "match": f"/repos/{r}/"}), "MCP upstream"),
    Scenario("GitHub 502", lambda f, r: f.github.append({"status": 502, "match": f"/repos/{r}/"}), "MCP upstream"),
    Scenario("github-mcp-server dies mid-run", lambda f, r: setattr(f, "dying_upstream", r), "MCP upstream"),
    Scenario("E2B create 500, every time", lambda f, r: f.e2b.append(
        {"kind": "create_error", "status": 500, "count": None, "session": r}), "sandbox provider", ("e2b",)),
    Scenario("E2B gateway fails to start", lambda f, r: f.e2b.append({"kind": "gateway_error", "session": r}),
             "gateway", ("e2b",)),
    Scenario("E2B sandbox vanishes mid-run", lambda f, r: f.e2b.append(
        {"kind": "vanish", "match": "claude --input-format", "session": r}), "sandbox provider", ("e2b",)),
    Scenario("E2B output stream cut mid-run", lambda f, r: f.e2b.append(
        {"kind": "cut", "match": "claude --input-format", "after_seconds": 1, "session": r}), None, ("e2b",)),
]
ABSORBED = {"local": ["model API 529 overloaded, once", "model API 429 with retry-after, once"],
            "e2b": ["E2B create 503, once", "model API 529 overloaded, once"]}


def chaos_plan(backend: str, repos: list[str], rng: random.Random) -> dict[str, Scenario]:
    """Which sessions are hit, and by what: always the faults a retry must absorb, the rest drawn by the seed."""
    named = {s.name: s for s in SCENARIOS}
    others = [s for s in SCENARIOS if backend in s.backends and s.name not in ABSORBED[backend]]
    count = min(HIT, len(ABSORBED[backend]) + len(others))
    hit = rng.sample(repos, count)
    chosen = [named[name] for name in ABSORBED[backend]] + rng.sample(others, count - len(ABSORBED[backend]))
    return dict(zip(hit, chosen))


def chaos_catalog(world: World, directory: Path, dying: str) -> Path:
    """The world's catalog, with github-mcp-server behind a pass-through that kills it on `dying`'s create_issue."""
    catalog = rehearsal_catalog(world.services.notion.url, world.github.host)
    github = catalog["githubOfficial"]
    github["command"] = [sys.executable, "-m", "agentbox.rehearsal.dying_upstream", "--die-on", dying, "--",
                         *github["command"]]
    path = directory / "chaos-catalog.json"
    path.write_text(json.dumps(catalog))
    return path


async def slots_in_use() -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(load_settings().sandbox_concurrency_limit)
        return limit.active_slots


def test_sixteen_sessions_at_once_while_the_clouds_fail(world, tmp_path, monkeypatch):
    rng = random.Random(SEED)
    print(f"\nchaos seed: {SEED} (replay with CHAOS_SEED={SEED})")
    repos = [f"octo-org/chaos-{world.backend}-{n:02d}" for n in range(SESSIONS)]
    plan = chaos_plan(world.backend, repos, rng)
    for repo, scenario in plan.items():
        print(f"  {repo}: {scenario.name} -> {scenario.reason or 'completed'}")
    faults = Faults(model=[], github=[], e2b=[])
    for repo, scenario in plan.items():
        scenario.arm(faults, repo)

    issues = [IssueRequest(repo=repo, title=f"Chaos {repo}", body="From the chaos suite.") for repo in repos]
    model = world.play({i.repo: notion_to_github_script(*i.repo.split("/"), i.title, i.body) for i in issues})
    model.app.state.faults = FaultInjector(faults.model, seed=SEED)
    world.github.app.state.faults = FaultInjector(faults.github, seed=SEED)
    catalog = chaos_catalog(world, tmp_path, faults.dying_upstream)
    alive_before, slots_before = world.alive(), asyncio.run(slots_in_use())
    armed = []
    try:
        if world.e2b:
            world.e2b.use_catalog(str(catalog))
            armed = [world.e2b.inject(**fault) for fault in faults.e2b]
        else:
            monkeypatch.setenv("LOCAL_MCP_CATALOG", str(catalog))

        state = asyncio.run(notion_to_github_batch(issues, return_state=True))
        batch = state.result(raise_on_failure=False)
    finally:
        github_faults, world.github.app.state.faults = world.github.app.state.faults, FaultInjector()
        if world.e2b:
            world.e2b.clear_faults()
            world.e2b.use_catalog(None)

    print("\n".join(f"  {r.repo}: {r.outcome} {r.reason or ''} {r.message[:150]}" for r in batch.sessions))
    outcomes = {r.repo: (r.outcome, r.reason) for r in batch.sessions}
    expected = {repo: ("failed", plan[repo].reason) if repo in plan and plan[repo].reason else ("completed", None)
                for repo in repos}
    assert outcomes == expected
    assert state.is_failed() == any(reason for _, reason in expected.values())
    for injector in (model.app.state.faults, github_faults):  # every armed fault hit its session
        assert {f["fault"] for f in injector.fired} == set(range(len(injector.faults)))
    assert all(fault.hits >= 1 for fault in armed)
    # nothing left, nothing twice, nothing leaked
    assert world.alive() - alive_before == set()
    assert world.leftovers() == []
    assert asyncio.run(slots_in_use()) == slots_before
    for repo in repos:
        opened = len(world.issues(repo))
        assert opened == 1 if expected[repo][0] == "completed" else opened <= 1, f"{repo}: {opened} issues"
    stored = asyncio.run(everything_prefect_stored())
    assert "notion-to-github-batch" in stored
    for secret in CREDENTIALS.values():
        assert secret not in stored
