"""The E2B backend through the real `e2b` SDK, against a wire-level stand-in of E2B's control plane and envd.

The whole notion_to_github session runs on `--backend e2b`: the SDK creates the sandbox (the stand-in runs this
project's gateway as its `mcp-gateway`, and commands under bubblewrap), the real claude binary and MCP servers do the
work, and the Notion, GitHub and Anthropic stand-ins play the remote APIs. Each injected fault must end with a clear
error and zero sandboxes left in the stand-in's books.
"""

from __future__ import annotations

import asyncio

import pytest

from agentbox.errors import ClaudeError, GatewayError, SandboxError, SandboxUnavailable
from agentbox.rehearsal.seed import notion_to_github_script
from agentbox.sandboxes.e2b import E2BSandboxes
from agentbox.settings import load_settings
from flows.notion_to_github import IssueRequest, notion_to_github

# The shared world (tests/worlds.py), on the e2b backend only: these are E2B's own wire details and faults.
pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.parametrize("world", ["e2b"], indirect=True)]


@pytest.fixture
def e2b(world):
    world.play(notion_to_github_script("octo", "e2b", "T", "B"))
    return world.e2b


def run(**overrides):
    return run_flow(notion_to_github, **overrides)


def run_flow(flow, **overrides):
    return asyncio.run(flow(IssueRequest(repo="octo/e2b", title="T", body="B"), backend="e2b", return_state=True,
                            **overrides))


def failure(state) -> BaseException:
    assert state.is_failed(), state
    return state.result(raise_on_failure=False)


def test_the_full_session_over_the_real_sdk(world, e2b):
    before = len(world.issues("octo/e2b"))
    state = run()
    assert state.is_completed(), state.result(raise_on_failure=False)
    result = state.result()
    assert result.issue_url == f"https://github.com/octo/e2b/issues/{before + 1}"
    assert world.issues("octo/e2b")[-1]["title"] == "T"
    assert result.session.backend == "e2b"
    assert [c.tool for c in result.session.run.tool_calls] == ["API-post-search", "create_issue", "StructuredOutput"]

    creates = [r for r in e2b.requests if r.method == "POST" and r.path == "/v2/sandboxes"]
    body = creates[-1].json
    assert body["templateID"] == "mcp-gateway"
    assert body["timeout"] == load_settings().sandbox_lease_seconds  # E2B's timeout is the lease, renewed by the run
    renewals = [r for r in e2b.requests if r.method == "POST" and r.path.endswith("/timeout")]
    assert renewals and all(0 < r.json["timeout"] <= load_settings().sandbox_lease_seconds for r in renewals)
    assert body["autoPause"] is False  # lifecycle on_timeout=kill
    assert set(body["mcp"]) == {"notion", "githubOfficial"}
    assert body["metadata"]["app"] == "agentbox"
    assert body["metadata"]["prefect_flow_run_id"] == str(state.state_details.flow_run_id)
    assert {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"} <= set(body["envVars"])
    assert creates[-1].headers.get("idempotency-key", "").startswith("agentbox-")
    record = e2b.sandboxes()[result.session.sandbox_id]
    assert record.state == "killed"  # deleted by the flow, not by its TTL


@pytest.mark.parametrize(
    ("fault", "error", "message", "reason"),
    [
        ({"kind": "create_error", "status": 401, "count": None}, SandboxError, "E2B refused the API key",
         "sandbox provider"),
        ({"kind": "create_error", "status": 500, "count": None}, SandboxUnavailable, "E2B failed to create a sandbox",
         "sandbox provider"),
        ({"kind": "create_error", "status": 429, "count": None}, SandboxUnavailable, "rate limit", "sandbox provider"),
        ({"kind": "gateway_error", "message": "docker: image pull failed"}, GatewayError, "MCP gateway failed to start",
         "gateway"),
        ({"kind": "vanish", "match": "claude --input-format"}, SandboxError, "is gone", "sandbox provider"),
    ],
    ids=["create-401", "create-500", "create-429", "gateway-start", "vanished-mid-run"],
)
def test_each_fault_ends_with_a_clear_error_and_no_sandbox(e2b, fault, error, message, reason):
    e2b.inject(**fault)
    exc = failure(run())
    assert isinstance(exc, error), exc
    assert message in str(exc)
    assert exc.reason == reason


def test_a_command_stream_cut_while_claude_works_is_reconnected_and_no_output_is_lost(world, e2b):
    """envd's stream of Claude's output breaks (twice) while the sandbox and Claude live on: the command is
    reconnected and its output read on from where the stream stopped; the session completes as if nothing happened."""
    before = len(world.issues("octo/e2b"))
    cut = e2b.inject("cut", match="claude --input-format", after_seconds=0.5, count=1)
    state = run()
    assert state.is_completed(), state.result(raise_on_failure=False)
    result = state.result()
    assert cut.hits == 1
    assert [(c.tool, c.ok) for c in result.session.run.tool_calls] == [
        ("API-post-search", True), ("create_issue", True), ("StructuredOutput", True)]
    assert result.session.run.finished and result.issue_url.endswith(f"/issues/{before + 1}")
    assert len(world.issues("octo/e2b")) == before + 1
    followers = [c for c in e2b.commands if "tail -c +$((at + 1))" in " ".join(c.args)]
    assert followers, "the output was not read on from the file"


def test_a_transient_create_error_is_retried_without_a_second_sandbox(e2b):
    e2b.inject("create_error", status=503, count=1)
    state = run()
    assert state.is_completed(), state.result(raise_on_failure=False)
    created = [r for r in e2b.requests if r.method == "POST" and r.path == "/v2/sandboxes"]
    assert created[-1].headers["idempotency-key"] == created[-2].headers["idempotency-key"]


def test_a_sandbox_created_whose_details_cannot_be_read_is_killed_by_the_adapter(e2b):
    """No handle reaches the caller, so nobody else could kill it: it would live out its lease (as seen in a loaded
    test run, after a connection reset on that read)."""
    e2b.inject("api_error", method="GET", path="/sandboxes/", status=500, count=None)
    backend = E2BSandboxes(e2b.env["E2B_API_KEY"], e2b.env["E2B_MCP_URL"], e2b.env["E2B_MCP_URL"])
    with pytest.raises(SandboxError, match="read the sandbox's details"):
        asyncio.run(backend.create({"notion": {"internalIntegrationToken": "x"}}, {}, 120, {"batch": "unreadable"},
                                   lease_seconds=60))
    e2b.clear_faults()
    made = [r for r in e2b.sandboxes().values() if r.metadata.get("batch") == "unreadable"]
    assert len(made) == 1 and not made[0].alive


def test_a_retried_run_reuses_its_completed_agent_run_and_opens_no_second_issue(world, e2b):
    """A failure after create_issue (every way to kill the sandbox fails: the E2B API errs four times), then the
    flow's retry: the agent's completed run is reused, no second sandbox or issue, and the retry kills the sandbox."""
    before = len(world.issues("octo/e2b"))
    kill_fails = e2b.inject("api_error", method="DELETE", path="/sandboxes/", status=500, count=4)
    state = run_flow(notion_to_github.with_options(retries=1, retry_delay_seconds=0))
    assert state.is_completed(), state.result(raise_on_failure=False)
    result = state.result()
    assert kill_fails.hits == 4  # the first attempt's kill task (three tries) and its fallback all failed
    assert len(world.issues("octo/e2b")) == before + 1  # one issue, from the first attempt's agent
    created = [r for r in e2b.requests if r.method == "POST" and r.path == "/v2/sandboxes" and r.status == 201]
    runs = [(r.json.get("metadata") or {}).get("prefect_flow_run_id") for r in created]
    assert runs.count(str(state.state_details.flow_run_id)) == 1
    assert "reused" in result.session.steps and result.issue_number == before + 1
    assert e2b.sandboxes()[result.session.sandbox_id].state == "killed"  # by the retry, not left to its TTL


def test_a_hanging_claude_is_killed_at_its_timeout(e2b, monkeypatch):
    monkeypatch.setenv("CLAUDE_TIMEOUT_SECONDS", "5")
    e2b.inject("hang", match="claude --input-format")
    exc = failure(run())
    assert isinstance(exc, ClaudeError)
    assert "ran past its 5 s timeout" in str(exc)


def test_list_reads_every_page(e2b):
    e2b.inject("list_pages", page_size=1)
    backend = E2BSandboxes(e2b.env["E2B_API_KEY"], e2b.env["E2B_MCP_URL"], e2b.env["E2B_MCP_URL"])

    async def scenario() -> tuple[set[str], set[str]]:
        made = [
            await backend.create({"notion": {"internalIntegrationToken": "x"}}, {}, 120, {"batch": "pages"})
            for _ in range(3)
        ]
        try:
            listed = {s.id for s in await backend.list({"batch": "pages"})}
        finally:
            for handle in made:
                await backend.kill(handle.id)
        return {h.id for h in made}, listed

    made, listed = asyncio.run(scenario())
    assert listed == made
