"""Spend and typed answers: a run past its budget is stopped by us (not only by Claude Code's soft cap), and an answer
asked for as JSON must come and match its schema. Both backends, through the shared world (tests/worlds.py)."""

from __future__ import annotations

import asyncio
import re
import json

import pytest
from pydantic import BaseModel

from agentbox.claude import AgentRun
from agentbox.errors import AgentboxError, BudgetExceeded, ClaudeError
from agentbox.missions.notion_to_github import check_answer
from agentbox.policy import RunPolicy
from flows.agent_session import EXAMPLE_MCP, SessionRequest, agent_session
from tasks.budget import PAGE, every_page, recorded_usd, spent_today
from tests.support import latest_artifact

pytestmark = pytest.mark.usefixtures("prefect_api")


class Roadmap(BaseModel):
    """What the agent found: a Python caller's model of the answer."""

    database: str
    items: int


def session(prompt: str, **request):
    return asyncio.run(agent_session(SessionRequest(prompt=prompt, mcp=EXAMPLE_MCP, **request), return_state=True))


def test_a_typed_answer_is_checked_and_returned(world):
    answer = {"database": "Product Roadmap", "items": 3}
    model = world.play([{"tool": "API-post-search", "input": {"query": "roadmap"}},
                        {"tool": "StructuredOutput", "input": answer}, {"text": "Done."}])
    state = session("Find the roadmap; say how many items it has.", output_schema=Roadmap)

    assert state.is_completed(), state.result(raise_on_failure=False)
    run = state.result().run
    assert run.structured_output == answer and Roadmap.model_validate(run.structured_output)
    sent = json.dumps(model.app.state.requests)
    assert "StructuredOutput" in sent  # Claude Code offered the model its answer tool


def test_an_answer_that_does_not_match_its_schema_fails_the_run(world):
    """Claude Code refuses the mismatching answer; the model gives none other, and the run fails saying why."""
    world.play([{"tool": "StructuredOutput", "input": {"database": 3}}, {"text": "Done."}])
    state = session("Find the roadmap.", output_schema=Roadmap)

    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ClaudeError)
    assert str(error).startswith("Claude Code gave no valid structured output (its last of 1 attempt(s) was refused: "
                                 "Output does not match required schema: root: must have required property 'items'")
    assert "FAILED (agent): Claude Code gave no valid structured output" in asyncio.run(latest_artifact("agent-session"))


def test_a_run_past_its_budget_is_stopped_by_its_reported_usage(world):
    """The model's reported usage climbs (opus prices: $5 per million input tokens): $0.10, then $1.00 against a
    $0.50 budget. The second call's usage stops the run there: the write the script would make next never happens."""
    model = world.play([
        {"tool": "API-post-search", "input": {"query": "roadmap"}, "usage": {"input_tokens": 20_000}},
        {"tool": "API-post-search", "input": {"query": "bugs"}, "usage": {"input_tokens": 200_000}},
        {"tool": "API-post-page", "input": {"parent": {"page_id": "x"}, "properties": {}}},
        {"text": "Done."},
    ])
    writes_before = [r for r in world.services.notion.app.state.requests if r[0] == "POST" and r[1] == "/v1/pages"]
    state = session("Search twice, then write a page.", policy=RunPolicy(budget_usd=0.5))

    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BudgetExceeded)
    assert str(error).startswith("The run spent $1.1"), error
    assert " of its $0.5 budget and was stopped." in str(error)
    assert len([r for r in model.app.state.requests if r.get("tools")]) == 2  # no third model call
    writes = [r for r in world.services.notion.app.state.requests if r[0] == "POST" and r[1] == "/v1/pages"]
    assert writes == writes_before
    markdown = asyncio.run(latest_artifact("agent-session"))
    # the host's estimate, or Claude Code's own figure when its last event came out before the kill landed
    assert re.search(r"cost: \$1\.1\d* (\(estimated from token usage: Claude Code was stopped\) )?of a \$0\.5 budget",
                     markdown), markdown


def test_a_daily_budget_refuses_runs_once_todays_runs_have_spent_it(world, monkeypatch):
    """DAILY_BUDGET_USD, over the recorded spend of today's runs of the flow (of the deployment, when deployed): a
    run under it goes, and records what it spent; the next one, past it, does not start."""
    world.play([{"text": "Done.", "usage": {"input_tokens": 10_000}}])
    spent = asyncio.run(spent_today("agent-session"))  # this test session's earlier runs count too
    monkeypatch.setenv("DAILY_BUDGET_USD", f"{spent + 0.01:.6f}")

    first = session("Say done.")
    assert first.is_completed(), first.result(raise_on_failure=False)
    cost = first.result().run.cost_usd
    assert cost > 0.01 and asyncio.run(spent_today("agent-session")) == pytest.approx(spent + cost, abs=1e-5)

    second = session("Say done again.")
    assert second.is_failed(), second
    error = second.result(raise_on_failure=False)
    assert isinstance(error, BudgetExceeded)
    assert str(error).startswith(f"The runs of flow agent-session spent ${spent + cost:.4f} today (UTC) of their $")
    assert "daily budget; this run was not started. Raise DAILY_BUDGET_USD" in str(error)
    assert "FAILED (policy): The runs of flow agent-session" in asyncio.run(latest_artifact("agent-session"))


def test_spend_records_are_read_page_by_page_and_a_bad_one_counts_nothing():
    items = list(range(2 * PAGE + 50))
    assert asyncio.run(every_page(lambda offset: asyncio.sleep(0, items[offset:offset + PAGE]))) == items
    assert recorded_usd('[{"usd": 0.5}, {"usd": "0.25"}]') == [0.5, 0.25]
    assert recorded_usd(None) == recorded_usd("None") == recorded_usd([{"x": 1}]) == recorded_usd('[{"usd": "x"}]') == []


def test_the_missions_typed_answer_must_agree_with_its_tool_calls():
    url = "https://github.com/octo/x/issues/7"
    run = AgentRun(structured_output={"issue_url": url + "/", "notion_databases": ["Bug Tracker"]})
    assert check_answer(run, url, ["Product Roadmap", "Bug Tracker"]).issue_url == url + "/"

    wrong = run.model_copy(update={"structured_output": {"issue_url": url[:-1] + "8", "notion_databases": []}})
    with pytest.raises(AgentboxError, match=r"^The agent's answer names the issue https://github.com/octo/x/issues/8, "
                                            r"but its create_issue call opened https://github.com/octo/x/issues/7\."):
        check_answer(wrong, url, ["Bug Tracker"])
    invented = run.model_copy(update={"structured_output": {"issue_url": url, "notion_databases": ["Payroll"]}})
    with pytest.raises(AgentboxError, match="names Notion databases its searches never returned: Payroll"):
        check_answer(invented, url, ["Bug Tracker"])
