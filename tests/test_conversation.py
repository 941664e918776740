"""The conversation with Claude Code in plain Python: no Prefect, no flow, no task.

The real `claude` binary runs in a real local sandbox whose real gateway serves one small MCP server (`echo`), and
talks to the model stand-in, which plays a script per prompt. Claude is registered once for the module (by
`register_claude_with_gateway`); each test then has one conversation with it and checks what Claude was answered,
what ran behind the gateway, what was logged, and how `check_run` judges the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from agentbox.approvals import Answer, ApprovalRequest
from agentbox.claude import AgentRun
from agentbox.conversation import Conversation
from agentbox.errors import ApprovalDenied, BudgetExceeded, ClaudeError, RunCancelled
from agentbox.gateway.probe import wait_until_ready
from agentbox.plan import SessionPlan, plan_session
from agentbox.policy import BLOCKED, RunPolicy
from agentbox.rehearsal.model import ModelScript, model_app, user_texts
from agentbox.rehearsal.servers import BackgroundServer
from agentbox.registration import register_claude_with_gateway
from agentbox.run_checks import check_run
from agentbox.sandboxes import SandboxBackend, SandboxHandle
from agentbox.settings import Settings, load_settings
from tests.support import PROJECT, sandbox_dirs, sandbox_processes, wait_for_no_sandbox_processes

MODEL_KEY = "sk-ant-conversation-test-key-0123456789"
ECHO_SERVER = '''
from fastmcp import FastMCP

mcp = FastMCP("echo")


@mcp.tool
def echo(text: str) -> str:
    """Return `text` unchanged."""
    return text


mcp.run(show_banner=False)
'''


@dataclass
class Stage:
    """The model stand-in (its scripts by prompt, filled by each test), the settings that point at it and at the
    `echo` server, and the registered sandbox."""

    scripts: dict[str, ModelScript]
    model: BackgroundServer
    settings: Settings
    sandboxes: SandboxBackend
    handle: SandboxHandle
    secrets: list[str]

    def plan(self, prompt: str, policy: RunPolicy) -> SessionPlan:
        return plan_session(self.settings, prompt, {"echo": {}}, backend="local", policy=policy)

    def model_calls(self, prompt: str) -> int:
        """The model calls of the conversation on `prompt` (not Claude's side requests, sent without tools)."""
        return sum(1 for body in self.model.app.state.requests if body.get("tools") and prompt in user_texts(body))

    def echo_calls(self) -> int:
        """The `echo` calls that reached the gateway's MCP server, in the gateway's own call log."""
        return sum(1 for c in asyncio.run(self.sandboxes.gateway_calls(self.handle)) if c["tool"] == "echo")


def create_sandbox(settings: Settings, plan: SessionPlan) -> tuple[SandboxBackend, SandboxHandle]:
    sandboxes = plan.sandboxes(settings)
    handle = asyncio.run(sandboxes.create(mcp_config=plan.resolved_mcp(settings), envs=plan.sandbox_envs(settings),
                                          ttl_seconds=600, metadata={"purpose": "conversation-test"},
                                          network=plan.network()))
    return sandboxes, handle


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("conversation") / "catalog.json"
    catalog.write_text(json.dumps({"echo": {"command": [sys.executable, "-c", ECHO_SERVER], "tools": ["echo"]}}))
    before = frozenset(sandbox_processes())  # not this module's
    scripts: dict[str, ModelScript] = {}  # model_app reads it at each request: tests add theirs as they go
    with BackgroundServer(model_app(scripts)) as model:
        settings = load_settings(anthropic_base_url=model.url, anthropic_api_key=MODEL_KEY,
                                 local_mcp_catalog=str(catalog))
        plan = plan_session(settings, "setup", {"echo": {}}, backend="local")
        sandboxes, handle = create_sandbox(settings, plan)
        try:
            token = asyncio.run(sandboxes.gateway_token(handle))
            asyncio.run(wait_until_ready(handle.gateway_url, token, plan.expected_tools, deadline_seconds=60))
            secrets = [*plan.secret_values(settings), token]
            asyncio.run(register_claude_with_gateway(sandboxes, handle, timeout=60, secrets=secrets))
            yield Stage(scripts, model, settings, sandboxes, handle, secrets)
        finally:
            asyncio.run(sandboxes.kill(handle.id))
    assert wait_for_no_sandbox_processes(ignore=before) == [] and sandbox_dirs() == []


@dataclass
class Outcome:
    """How one conversation ended: the run, what it raised, and what it logged (level, line)."""

    conversation: Conversation
    plan: SessionPlan
    run: AgentRun
    error: BaseException | None
    lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def log(self) -> str:
        return "\n".join(line for _, line in self.lines)


def converse(stage: Stage, prompt: str, script: list[dict], policy: RunPolicy | None = None, *,
             approver=None, claude_timeout: float | None = None, handle: SandboxHandle | None = None) -> Outcome:
    """One conversation on `prompt`, the model playing `script`, under the plan `policy` gives."""
    stage.scripts[prompt] = ModelScript.model_validate(script)
    plan = stage.plan(prompt, policy or RunPolicy())
    lines: list[tuple[int, str]] = []
    conversation = Conversation(
        stage.sandboxes, handle or stage.handle, prompt, options=plan.claude, policy=plan.policy, approver=approver,
        claude_timeout=claude_timeout or plan.timeouts.claude, approval_timeout=plan.timeouts.approvals,
        servers=plan.expected_tools, secrets=stage.secrets, log=lambda level, line: lines.append((level, line)),
    )
    try:
        run, error = asyncio.run(conversation.run()), None
    except Exception as exc:  # noqa: BLE001 - what the conversation raised is the test's to judge
        run, error = conversation.agent_run, exc
    return Outcome(conversation, plan, run, error, lines)


class Desk:
    """An approver that is a plain Python object: gives its answers in turn, and keeps what it was asked."""

    via = "desk"

    def __init__(self, *answers: Answer | BaseException) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[ApprovalRequest, float]] = []

    async def ask(self, request: ApprovalRequest, timeout: float) -> Answer | None:
        self.asked.append((request, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def claude_left(timeout: float = 5.0) -> list[str]:
    """Claude's processes (and the sandbox commands that run it) still alive after `timeout`, seen from the host:
    each sandbox command has a pid namespace of its own, so no other command could see them."""
    deadline = time.monotonic() + timeout
    while True:
        left = [cmd for cmd in sandbox_processes().values() if "--input-format stream-json" in cmd]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_the_policy_allows_and_refuses_what_claude_asks_for(stage):
    """With a tool needing approval, Claude asks about every gateway tool: the policy allows `echo` (it needs
    nobody) and refuses a Bash command that writes (commands are off). Claude is told so, the run records both, and the log says each
    decision with the model's words redacted of the run's secrets."""
    prompt = "conversation: echo, then run a command"
    outcome = converse(stage, prompt, [{"tool": "echo", "input": {"text": "hello"}},
                                       {"tool": "Bash", "input": {"command": "touch ~/made-by-the-agent"}},
                                       {"text": f"Done; the key is {MODEL_KEY}."}],
                       RunPolicy(require_approval=["create_*"]))

    assert outcome.error is None, outcome.error
    run = outcome.run
    assert run.finished and run.exit_code == 0
    assert [(d.tool, d.allowed, d.by, d.reason) for d in run.decisions] == [
        ("mcp__gateway__echo", True, "policy", ""), ("Bash", False, "policy", BLOCKED)]
    echo, bash = run.tool_calls
    assert (echo.tool, echo.ok, json.loads(echo.output)) == ("echo", True, {"result": "hello"})
    assert bash.ok is False and BLOCKED in bash.output
    assert asyncio.run(stage.sandboxes.run(stage.handle, "test -e ~/made-by-the-agent", timeout=30)).exit_code == 1
    assert run.permission_denials == ["Bash"]
    assert "ALLOWED mcp__gateway__echo by the run policy" in outcome.log.splitlines()
    assert "DENIED Bash by the run policy: Blocked by policy: do not retry." in outcome.log.splitlines()
    assert "Claude: Done; the key is ***." in outcome.log and MODEL_KEY not in outcome.log
    with pytest.raises(ClaudeError, match=r"^Claude Code was denied tools: Bash\."):
        check_run(run, outcome.plan)


def test_an_approver_approves_with_edited_arguments_and_the_edited_call_runs(stage):
    desk = Desk(Answer(approve=True, arguments={"text": "edited"}, via="desk"))
    outcome = converse(stage, "conversation: echo a draft", [{"tool": "echo", "input": {"text": "draft"}},
                                                             {"text": "Done."}],
                       RunPolicy(require_approval=["echo"], approval_timeout_seconds=120), approver=desk)

    assert outcome.error is None, outcome.error
    [(request, timeout)] = desk.asked
    assert (request.tool, request.server, request.arguments, timeout) == ("echo", "echo", {"text": "draft"}, 120)
    [call] = outcome.run.tool_calls
    assert (call.input, call.ok, json.loads(call.output)) == ({"text": "edited"}, True, {"result": "edited"})
    [decision] = outcome.run.decisions
    assert (decision.allowed, decision.by, decision.via, decision.edited) == (True, "person", "desk", True)
    assert re.search(r"^ALLOWED mcp__gateway__echo by a person \(desk\) after \d+ s with edited arguments$",
                     outcome.log, re.M)
    check_run(outcome.run, outcome.plan)


def test_an_approver_denies_with_a_reason_and_the_call_never_runs(stage):
    echoed = stage.echo_calls()
    desk = Desk(Answer(approve=False, reason="not that text", via="desk"))
    outcome = converse(stage, "conversation: echo something wrong", [{"tool": "echo", "input": {"text": "wrong"}},
                                                                     {"text": "Done."}],
                       RunPolicy(require_approval=["echo"]), approver=desk)

    assert outcome.error is None, outcome.error
    [call] = outcome.run.tool_calls
    assert call.ok is False and "A person denied this call: not that text. Do not retry it." in call.output
    assert stage.echo_calls() == echoed
    assert outcome.run.permission_denials == []  # a person's refusal is not the policy's
    assert re.search(r"^DENIED mcp__gateway__echo by a person \(desk\) after \d+ s: not that text$", outcome.log,
                     re.M)
    with pytest.raises(ApprovalDenied, match=r"^echo was not approved: a person denied it on the desk "
                                             r"\(not that text\)\."):
        check_run(outcome.run, outcome.plan)


def test_a_wait_for_a_person_that_ends_the_run_stops_claude_and_says_why(stage):
    desk = Desk(RunCancelled("The run was cancelled while it waited for approval.", "Start it again."))
    outcome = converse(stage, "conversation: echo while cancelled", [{"tool": "echo", "input": {"text": "x"}},
                                                                     {"text": "Done."}],
                       RunPolicy(require_approval=["echo"]), approver=desk)

    assert isinstance(outcome.error, RunCancelled), outcome.error
    assert not outcome.run.finished and outcome.run.tool_calls[0].ok is None
    assert claude_left() == []


def test_claude_is_stopped_once_its_estimated_spend_passes_the_budget(stage):
    """The reported usage climbs past the $0.5 budget with the second model call: Claude is killed there (or stops
    itself there, by its own --max-budget-usd: a race both ways), the third is never made, and the run says it was
    stopped for its budget (not raised: it is judged once recorded)."""
    prompt = "conversation: spend"
    outcome = converse(stage, prompt, [{"tool": "echo", "input": {"text": "1"}, "usage": {"input_tokens": 20_000}},
                                       {"tool": "echo", "input": {"text": "2"}, "usage": {"input_tokens": 200_000}},
                                       {"tool": "echo", "input": {"text": "3"}}, {"text": "Done."}],
                       RunPolicy(budget_usd=0.5))

    assert outcome.error is None, outcome.error
    run, spend = outcome.run, outcome.conversation.spend.usd
    assert run.stopped == "budget" and stage.model_calls(prompt) == 2
    assert run.estimated_cost_usd == pytest.approx(spend, abs=1e-6) and spend > 0.5
    if run.finished:  # Claude Code's own --max-budget-usd, the same budget, stopped it a moment before the host did
        assert run.subtype == "error_max_budget_usd" and run.spent_usd == run.cost_usd > 0.5
    else:
        assert run.exit_code is None and run.spent_usd == run.estimated_cost_usd
    assert (logging.ERROR, f"Spend estimated at ${spend:.4f} passed the run's budget of $0.5: Claude Code was "
                           "stopped.") in outcome.lines
    spent = run.spent_usd
    with pytest.raises(BudgetExceeded, match=rf"^The run spent \${spent:.4f} of its \$0.5 budget and was stopped\."):
        check_run(outcome.run, outcome.plan)


def test_claude_past_its_timeout_is_killed_and_the_run_says_so(stage):
    outcome = converse(stage, "conversation: hang", [{"hang_seconds": 60}], claude_timeout=3)

    assert isinstance(outcome.error, ClaudeError), outcome.error
    assert str(outcome.error) == ("Claude Code ran past its 3 s timeout and was killed. Raise CLAUDE_TIMEOUT_SECONDS "
                                  "or simplify the prompt.")
    assert claude_left() == []


def test_claude_started_without_the_gateway_is_stopped(stage):
    """A sandbox where Claude was never registered: it starts without the gateway, and is stopped at once."""
    plan = stage.plan("conversation: no gateway", RunPolicy())
    sandboxes, handle = create_sandbox(stage.settings, plan)
    try:
        outcome = converse(stage, "conversation: no gateway", [{"text": "Done."}], handle=handle)

        assert isinstance(outcome.error, ClaudeError), outcome.error
        assert str(outcome.error) == ("Claude Code started without the gateway's tools (gateway status: absent). "
                                      "Check the gateway and MCP_TIMEOUT; the run was stopped.")
        assert outcome.log.startswith("Claude started (model ")
        assert not outcome.run.finished and claude_left() == []
    finally:
        asyncio.run(sandboxes.kill(handle.id))


def test_registering_again_finds_the_gateway_there_and_checks_it(stage):
    """A retried registration: `claude mcp add` finds the server, and `claude mcp get` alone says it connects."""
    status = asyncio.run(register_claude_with_gateway(stage.sandboxes, stage.handle, timeout=60,
                                                      secrets=stage.secrets))
    assert "Connected" in status


def test_the_conversation_and_the_run_checks_know_nothing_of_prefect():
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, agentbox.conversation, agentbox.registration, agentbox.run_checks; "
                               "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"],
        cwd=PROJECT, capture_output=True, text=True, timeout=60, check=True)
    assert imported.stdout.strip() == "[]"
