"""The run policy: decided once in the plan, from the run, the settings or the workflow, and turned into each layer's
allow-list; nothing here starts a sandbox."""

from __future__ import annotations

import pytest

from agentbox.errors import ConfigError
from agentbox.missions.notion_to_github import MCP, POLICY
from agentbox.plan import plan_session
from agentbox.policy import RunPolicy, check_tools_served
from agentbox.settings import load_settings


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    for name in ("ANTHROPIC_API_KEY", "NOTION_INTEGRATION_TOKEN", "GITHUB_TOKEN"):
        monkeypatch.setenv(name, "x-not-used")
    for name in ("POLICY_TOOLS", "POLICY_ALLOW_COMMANDS", "POLICY_REQUIRE_APPROVAL"):
        monkeypatch.delenv(name, raising=False)


def plan(**choices):
    return plan_session(load_settings(), "Do the mission.", MCP, backend="local", **choices)


def test_the_default_policy_lets_claude_use_the_servers_tools_and_no_command():
    decided = plan()
    assert decided.policy == RunPolicy(require_approval=[], approval_timeout_seconds=3600)
    # tools that write are journaled before Claude may call them: none is on Claude's list, the host allows each call
    assert decided.claude.allowed_tools == ()
    assert plan(policy=RunPolicy(writes=[])).claude.allowed_tools == ("mcp__gateway",)
    assert decided.expected_tools == {"notion": ["API-post-search"], "githubOfficial": ["create_issue"]}


def test_tools_that_write_are_named_by_the_policy_or_known_by_their_verb():
    by_verb = RunPolicy()
    writes = ["create_issue", "API-patch-page", "add_issue_comment", "merge_pull_request", "push_files",
              "API-post-page", "API-delete-a-block", "updateIssue"]
    reads = ["API-post-search", "API-post-database-query", "get_issue", "list_commits", "search_code",
             "API-retrieve-a-page", "API-get-block-children"]
    assert [t for t in writes + reads if by_verb.is_write(t)] == writes
    named = RunPolicy(writes=["create_*"])
    assert named.is_write("create_issue") and not named.is_write("merge_pull_request")
    assert not RunPolicy(writes=[]).is_write("create_issue")
    with pytest.raises(ValueError, match="not tool names or patterns"):
        RunPolicy(writes=["drop table"])


def test_the_mission_policy_becomes_claudes_allow_list_and_what_readiness_waits_for():
    decided = plan(default_policy=POLICY)
    # create_issue needs a person: it is served, but left out of Claude's list so that Claude asks before each call
    assert decided.policy.require_approval == ["create_issue"]
    assert decided.claude.allowed_tools == tuple(f"mcp__gateway__{t}" for t in POLICY.tools if t != "create_issue")
    assert "Bash" not in decided.claude.allowed_tools
    assert decided.expected_tools == {"notion": ["API-post-search"], "githubOfficial": ["create_issue"]}
    assert decided.timeouts.approvals == 3600
    assert "Approval by a person before each call of: create_issue (waiting 3600 s at most in all; silence means " \
        "deny)" in decided.policy.summary()


def test_approval_patterns_match_gateway_tools_and_leave_them_out_of_claudes_list():
    policy = RunPolicy(require_approval=["create_*", "API-patch-page"])
    assert [t for t in ("create_issue", "create_pull_request", "API-patch-page", "API-post-search")
            if policy.needs_approval(t)] == ["create_issue", "create_pull_request", "API-patch-page"]
    assert policy.claude_tools() == ()  # every tool allowed, some asked about: the host allows the others per call
    assert not policy.allows("mcp__gateway__create_issue") and policy.allows("mcp__gateway__API-post-search")
    assert not policy.allows("Bash")
    with pytest.raises(ValueError, match="not tool names or patterns: 'rm -rf'"):
        RunPolicy(require_approval=["rm -rf"])


def test_approvals_settings_and_flags_are_checked_in_one_line(monkeypatch):
    monkeypatch.setenv("POLICY_ON_SILENCE", "maybe")
    with pytest.raises(ConfigError, match=r"^Invalid POLICY_ON_SILENCE \("):
        plan()
    monkeypatch.setenv("POLICY_ON_SILENCE", "approve")
    monkeypatch.setenv("POLICY_APPROVAL_TIMEOUT_SECONDS", "5")
    with pytest.raises(ConfigError, match=r"^Invalid POLICY_APPROVAL_TIMEOUT_SECONDS \("):
        plan()


def test_a_run_that_may_wait_for_people_must_have_the_time_to(monkeypatch):
    monkeypatch.setenv("FLOW_TIMEOUT_SECONDS", "1800")
    monkeypatch.setenv("SANDBOX_TTL_SECONDS", "2000")
    with pytest.raises(ConfigError) as info:
        plan(default_policy=POLICY)
    assert str(info.value).startswith("The run may wait 3600 s for approvals, plus 600 s of Claude's work, but the "
                                      "flow times out after 1800 s. Raise FLOW_TIMEOUT_SECONDS to at least 4500")
    assert plan(default_policy=POLICY, policy=RunPolicy(approval_timeout_seconds=600)).timeouts.approvals == 600


def test_a_run_policy_wins_over_the_settings_which_win_over_the_workflow(monkeypatch):
    monkeypatch.setenv("POLICY_TOOLS", "API-post-search, API-retrieve-a-page")
    assert plan(default_policy=POLICY).policy.tools == ["API-post-search", "API-retrieve-a-page"]
    run = RunPolicy(tools=["create_issue"], allow_commands=True)
    decided = plan(default_policy=POLICY, policy=run)
    assert decided.policy == run.model_copy(update={"require_approval": ["create_issue"], "approval_timeout_seconds": 3600,
                                                   "writes": ["create_issue"]})
    assert decided.claude.allowed_tools == ("Bash",)  # create_issue is asked about, call by call
    assert decided.expected_tools == {"githubOfficial": ["create_issue"]}  # notion's proving tool is not served


def test_an_empty_tool_list_allows_no_tool_at_all(monkeypatch):
    monkeypatch.setenv("POLICY_TOOLS", "")
    decided = plan(default_policy=POLICY)
    assert decided.policy.tools == []
    assert decided.claude.allowed_tools == ()
    assert decided.expected_tools == {}


def test_explicit_claude_tools_are_taken_as_they_are():
    assert plan(allowed_tools=["mcp__gateway", "Read"]).claude.allowed_tools == ("mcp__gateway", "Read")


def test_a_malformed_tool_name_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("POLICY_TOOLS", "create_issue,rm -rf /")
    with pytest.raises(ConfigError) as info:
        plan()
    assert str(info.value).startswith("Invalid POLICY_TOOLS (")
    assert "'rm -rf /'" in str(info.value)


def test_an_allowed_tool_the_gateway_does_not_serve_is_named():
    check_tools_served(RunPolicy(tools=["create_issue"]), ["create_issue", "get_me"])
    check_tools_served(RunPolicy(), [])
    with pytest.raises(ConfigError, match="does not serve: create_isue"):
        check_tools_served(RunPolicy(tools=["create_isue", "get_me"]), ["create_issue", "get_me"])


def test_the_policy_summary_says_what_is_allowed():
    assert POLICY.summary()[1] == "Commands: not allowed"
    assert RunPolicy(tools=[]).summary()[0] == "Tools allowed: none"
    assert RunPolicy().summary()[0] == "Tools allowed: every tool of the requested servers"


def test_the_run_says_which_layers_enforce_its_policy():
    from flows.planning import policy_lines

    assert policy_lines(plan(default_policy=POLICY))[-1] == (
        "Enforced by: the gateway's allow-list, Claude Code's --allowedTools"
    )
    e2b = plan_session(load_settings(E2B_API_KEY="e2b-x"), "Do it.", MCP, backend="e2b", default_policy=POLICY)
    assert policy_lines(e2b)[-1] == "Enforced by: not the gateway (on e2b it serves all), Claude Code's --allowedTools"
    bypassed = plan(default_policy=POLICY, bypass_permissions=True, policy=RunPolicy(require_approval=[]))
    assert "not Claude Code (its permissions are bypassed)" in policy_lines(bypassed)[-1]


def test_a_policy_from_the_ui_form_keeps_what_it_leaves_none(monkeypatch):
    """The Prefect UI's form sends every field: None ones must not lift the workflow's tool list, its approvals or
    the settings' budget; the others replace them."""
    monkeypatch.setenv("POLICY_BUDGET_USD", "2")
    form = RunPolicy.model_validate({"tools": None, "allow_commands": False, "egress": [], "require_approval": None,
                                     "approval_timeout_seconds": None, "budget_usd": None, "on_silence": "deny"})
    decided = plan(default_policy=POLICY, policy=form).policy
    assert (decided.tools, decided.require_approval, decided.budget_usd) == (POLICY.tools, ["create_issue"], 2.0)
    form = form.model_copy(update={"require_approval": [], "budget_usd": 0.5})
    decided = plan(default_policy=POLICY, policy=RunPolicy.model_validate(form.model_dump())).policy
    assert (decided.require_approval, decided.budget_usd) == ([], 0.5)


def test_a_run_whose_claude_could_skip_an_approval_is_refused():
    """Claude Code asks only about tools it was not allowed in advance: bypassing permissions, or allowing a tool
    that needs approval, would let it call that tool unasked."""
    with pytest.raises(ConfigError, match=r"^Calls of create_issue need a person's approval, but bypassing"):
        plan(default_policy=POLICY, bypass_permissions=True)
    for allowed in (["mcp__gateway"], ["mcp__gateway__API-post-search", "mcp__gateway__create_issue"]):
        with pytest.raises(ConfigError, match=r"but the allowed tools let Claude Code make them unasked \(mcp__gateway"):
            plan(default_policy=POLICY, allowed_tools=allowed)
    assert plan(default_policy=POLICY, allowed_tools=["mcp__gateway__API-post-search"]).policy.require_approval
