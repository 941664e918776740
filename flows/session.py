"""The one session composition both flows use: plan → slot → create → ready → register → run → kill.

A flow builds the plan once, with what only Prefect knows (its run's labels and the timeout it really has), then
`run_session` carries it out under one slot of the global sandbox limit and tears the sandbox down on every path.
`reported` writes the run's markdown artifact for the Prefect UI whether the session succeeded or not.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel, Field, computed_field

from agentbox.claude import GATEWAY_NAME, AgentRun
from agentbox.errors import AgentboxError, FailureReason, PolicyViolation, RunTimedOut, one_line
from agentbox.plan import SessionPlan, plan_session
from agentbox.audit import EgressAttempt, GatewayCall, audit_of
from agentbox.policy import BLOCKED
from agentbox.sandboxes import BACKENDS, SandboxHandle, backend_class
from agentbox.sandboxes.base import APP_LABEL, APP_LABEL_KEY, SESSION_LABEL_KEY, SLOT_LEASE_LABEL_KEY
from agentbox.secrets import redact
from agentbox.settings import Settings, configured_flow_retries, configured_flow_timeout
from flows.janitor import kill_run_sandboxes_hook
from tasks.agent_runs import completed_agent_run, record_agent_run
from tasks.budget import check_daily_budget
from tasks.claude import check_run, register_claude, run_prompt
from tasks.gateway import read_egress_log, read_gateway_calls, wait_for_gateway
from tasks.sandbox import create_sandbox, kill_run_sandboxes, kill_sandbox, sandbox_slot


AUTO_BACKEND = "auto"
# "auto" or a registered backend: a select with a default in the Prefect UI's run form (an Optional would show as a
# type picker)
BackendChoice = Literal[(AUTO_BACKEND, *BACKENDS)]


def backend_named(choice: str | None) -> str | None:
    """The backend a run's choice names; None for auto, where the settings decide."""
    return None if choice in (None, AUTO_BACKEND) else choice


REHEARSAL_BANNER = "REHEARSAL: local stand-ins of Anthropic, Notion and GitHub; nothing left this machine."


class SessionFailure(BaseModel):
    """Why a session failed: one reason from a fixed set (to count them by), and what happened (secrets redacted)."""

    reason: FailureReason
    message: str


class SessionResult(BaseModel):
    """What one session did: where it ran, how long each step took, and the agent's run. No secrets."""

    rehearsal: bool = False
    backend: str
    sandbox_id: str = ""
    gateway_url: str = ""
    tools: int = 0
    policy: list[str] = Field(default_factory=list, description="The run policy, and which layers enforced it.")
    audit: list[GatewayCall] | None = Field(None, description="The gateway's calls; None where none can be read.")
    egress: list[EgressAttempt] | None = Field(
        None, description="The egress proxy's decisions on the sandbox's connections; None where none can be read."
    )
    steps: dict[str, float] = Field(default_factory=dict, description="Seconds per step.")
    budget_usd: float | None = Field(None, description="The run's budget for the model, if it had one.")
    run: AgentRun = Field(default_factory=AgentRun)
    failure: SessionFailure | None = Field(None, description="Why the session failed; None when it did not.")

    @computed_field
    @property
    def violations(self) -> int:
        """Everything a layer blocked: connections the egress proxy refused, calls the gateway refused, tools Claude
        Code denied."""
        blocked = sum(c.blocked for c in self.audit or []) + sum(e.blocked for e in self.egress or [])
        refused_by_claude = {d.tool_use_id for d in self.run.decisions if not d.allowed}  # counted once, below
        for call in self.run.tool_calls:  # where a layer's log is unreadable: its refusals as the agent saw them
            unlogged = self.audit is None if call.server == GATEWAY_NAME else self.egress is None
            blocked += unlogged and BLOCKED in call.output and call.id not in refused_by_claude
        return blocked + len(self.run.permission_denials)

    def cost(self) -> str:
        how = "" if self.run.finished else " (estimated from token usage: Claude Code was stopped)"
        spent = f"${self.run.spent_usd:.4f}{how}"
        if self.budget_usd is not None:
            spent += f" of a ${self.budget_usd:g} budget"
        if self.rehearsal:
            return f"nothing (a rehearsal: {spent} by the stand-in's token counts)"
        return spent


def failure_reason(exc: BaseException, result: SessionResult) -> FailureReason:
    """Whose side a failure was on. Our errors say it themselves; an agent that could not finish because an MCP
    server's calls failed is the upstream's; anything unforeseen is put on the step that was under way."""
    if isinstance(exc, AgentboxError):
        upstream_failed = any(c.server == GATEWAY_NAME and c.ok is False and BLOCKED not in c.output
                              for c in result.run.tool_calls)
        return "MCP upstream" if exc.reason == "agent" and upstream_failed else exc.reason
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)) or type(exc).__name__ == "TerminationSignal":
        return "cancelled"
    done = result.steps
    return "sandbox provider" if "create" not in done else "gateway" if "gateway_ready" not in done else "agent"


def failure_of(exc: BaseException, result: SessionResult, settings: Settings) -> SessionFailure:
    why = str(exc) if isinstance(exc, AgentboxError) else f"{type(exc).__name__}: {one_line(exc)}"
    return SessionFailure(reason=failure_reason(exc, result), message=redact(why, settings.secret_values()))


def session_flow(name: str, flow_run_name: Callable[[], str]):  # noqa: ANN201 - returns Prefect's decorator
    """`@flow` with what every session flow shares, declared once: the configured timeout and retries (read where the
    flow's module is imported: the CLI, a runner, a worker's flow-run process) and the hooks that kill a crashed or
    cancelled run's sandboxes and free their slots."""
    return flow(name=name, flow_run_name=flow_run_name, timeout_seconds=configured_flow_timeout(),
                retries=configured_flow_retries(), retry_delay_seconds=10,
                on_crashed=[kill_run_sandboxes_hook], on_cancellation=[kill_run_sandboxes_hook])


def session_metadata(session: str | None = None) -> dict[str, str]:
    """Labels that let hooks and the reaper find this run's sandboxes (and, in a batch, each session's own)."""
    metadata = {APP_LABEL_KEY: APP_LABEL, "prefect_flow_run_id": str(flow_run.id or "none")}
    if session:
        metadata[SESSION_LABEL_KEY] = session
    if flow_run.flow_name:
        metadata["prefect_flow"] = str(flow_run.flow_name)
    if deployment.name:
        metadata["prefect_deployment"] = str(deployment.name)
    return metadata


def running_flow_timeout() -> float | None:
    """The timeout Prefect applies to the flow run in progress (its decorator's, or a `with_options` one)."""
    context = FlowRunContext.get()
    return context.flow.timeout_seconds if context and context.flow else None


def plan_this_run(settings: Settings, prompt: str, mcp: Any, session: str | None = None, **choices: Any
                  ) -> SessionPlan:
    """The plan of the flow run in progress: its workflow, labels and effective timeout come from Prefect;
    `session` names one session of a batch (its sandbox's label)."""
    plan = plan_session(
        settings, prompt, mcp, workflow=str(flow_run.flow_name or "agent-session"),
        flow_timeout_seconds=running_flow_timeout(), metadata=session_metadata(session), **choices,
    )
    logger = get_run_logger()
    logger.info("%sBackend: %s", "REHEARSAL: " if plan.rehearsal else "", plan.backend)
    for line in policy_lines(plan):
        logger.info("Policy: %s", line)
    return plan


def policy_lines(plan: SessionPlan) -> list[str]:
    """The run's policy, and the layers that enforce it on this backend (said, never silently weakened)."""
    layers = ["Claude Code's --allowedTools"]
    if plan.claude.bypass_permissions:  # --dangerously-skip-permissions: Claude asks nobody and allows everything
        layers = ["not Claude Code (its permissions are bypassed)"]
    if plan.policy.tools is not None:
        filtering = backend_class(plan.backend).gateway_filters_tools
        gateway = "the gateway's allow-list" if filtering else f"not the gateway (on {plan.backend} it serves all)"
        layers.insert(0, gateway)
    return [*plan.policy.summary(), f"Enforced by: {', '.join(layers)}"]


async def run_session(plan: SessionPlan, result: SessionResult) -> SessionResult:
    """Create → wait for the gateway → register Claude → run the prompt, and kill the sandbox on every path; all
    under one slot of the global sandbox limit.

    `result` is filled as the session goes, so a failure still reports the steps that ran."""
    handle: SandboxHandle | None = None
    result.policy, result.budget_usd = policy_lines(plan), plan.policy.budget_usd
    clock = time.monotonic()

    def step(label: str) -> None:
        nonlocal clock
        result.steps[label] = round(time.monotonic() - clock, 3)
        clock = time.monotonic()

    problem: AgentboxError | None = None
    earlier = await completed_agent_run(plan)
    if earlier and acted(previous := SessionResult.model_validate(earlier)):
        return await reused(plan, result, previous)  # a retry of this flow run, whose agent did its work already
    await check_daily_budget(plan)
    async with sandbox_slot(plan) as lease:  # held until the sandbox is gone
        if lease:  # on the sandbox, so that whoever kills it after a crash frees the slot too
            plan = plan.model_copy(update={"metadata": {**plan.metadata, SLOT_LEASE_LABEL_KEY: lease}})
        step("slot")  # the daily budget's check, and the wait for a slot of the sandbox limit
        failed, agent_done = True, False
        try:
            handle = await create_sandbox(plan)
            result.sandbox_id, result.gateway_url = handle.id, handle.gateway_url
            step("create")
            result.tools = len(await wait_for_gateway(plan, handle))
            step("gateway_ready")
            await register_claude(plan, handle)
            step("register")
            result.run = await run_prompt(plan, handle)
            step("prompt")
            agent_done = True
            try:
                check_run(result.run, plan)
            except AgentboxError as exc:  # said after the audit: what the agent tried and was kept from comes first
                problem = exc
            failed = problem is not None
        finally:
            clock = time.monotonic()
            if handle:
                result.audit, result.egress = await audit(plan, handle, result)
            if agent_done:  # before the teardown, which may fail: a retry of the run must not run the agent again
                await asyncio.shield(record_agent_run(plan, result.model_dump(mode="json")))
            await teardown(plan, handle, session_failed=failed)
            step("kill")
    return judged(result, problem)


def acted(result: SessionResult) -> bool:
    """Whether the agent's run did anything through the gateway (any tool call that succeeded): running it again
    could do it twice. A run that did nothing yet (the model API failed its first turn, say) may run again."""
    return any(c.server == GATEWAY_NAME and c.ok for c in result.run.tool_calls)


async def reused(plan: SessionPlan, result: SessionResult, previous: SessionResult) -> SessionResult:
    """A retried flow run's session whose agent run an earlier attempt completed: that run, judged again, and no new
    sandbox nor agent run (which would do its writes twice)."""
    get_run_logger().warning(
        "The agent run of an earlier attempt of this run completed (sandbox %s), so it is reused: no new sandbox, "
        "the agent is not run again.", previous.sandbox_id)
    for name in SessionResult.model_fields:
        setattr(result, name, getattr(previous, name))
    result.steps = {**previous.steps, "reused": 0.0}
    await teardown(plan, None)  # the earlier attempt's sandbox, if its teardown was what failed
    problem = None
    try:
        check_run(result.run, plan)
    except AgentboxError as exc:
        problem = exc
    return judged(result, problem)


def judged(result: SessionResult, problem: AgentboxError | None) -> SessionResult:
    """The session's outcome: what a layer blocked fails it first, then what went wrong with the agent's run."""
    if result.violations:
        raise PolicyViolation(
            f"The agent tried {result.violations} thing(s) the run policy forbids; each was blocked.",
            "See the run's audit (gateway calls, network) for what it tried; look at what it read.",
        ) from problem
    if problem is not None:
        raise problem
    return result


async def audit(
    plan: SessionPlan, handle: SandboxHandle, result: SessionResult
) -> tuple[list[GatewayCall] | None, list[EgressAttempt] | None]:
    """The gateway's calls joined with Claude's tool uses, and the egress proxy's decisions, read before the sandbox
    goes; a failure to read them is logged, never raised over the session's own outcome."""
    logs: list[list[dict] | None] = []
    for what, read in (("gateway's call log", read_gateway_calls), ("egress log", read_egress_log)):
        try:
            logs.append(await asyncio.shield(read(plan, handle)))
        except BaseException as exc:  # noqa: BLE001 - the audit must not hide why the session ended
            get_run_logger().warning("Could not read the %s (%s).", what, one_line(exc))
            logs.append(None)
    calls, egress = logs
    tool_uses = [(c.tool, c.id) for c in result.run.tool_calls]
    return (None if calls is None else audit_of(calls, tool_uses),
            None if egress is None else [EgressAttempt.model_validate(e) for e in egress])


async def teardown(plan: SessionPlan, handle: SandboxHandle | None, session_failed: bool = False) -> None:
    """Kill the session's sandbox; without a handle (create died half-way) kill whatever carries the run's labels.

    Each way to kill is tried in turn until one works: the kill task, then the same kill without Prefect's task
    machinery (which a cancelled run or an API outage may have broken). When the session already failed, a teardown
    failure is logged rather than raised, so it cannot hide the cause; the sandbox's TTL ends it anyway."""
    if handle:
        kills = [lambda: kill_sandbox(plan, handle), lambda: kill_sandbox.fn(plan, handle)]
    else:
        kills = [lambda: kill_run_sandboxes(plan)]
    error: BaseException | None = None
    for kill in kills:
        try:
            await asyncio.shield(kill())
            return
        except BaseException as exc:  # noqa: BLE001 - a cancelled run must still kill its sandbox
            error = exc
    if not session_failed:
        raise error
    get_run_logger().error("Teardown failed (%s: %s); the sandbox's TTL will end it.", type(error).__name__,
                           one_line(error))


@asynccontextmanager
async def reported(key: str, result: SessionResult, settings: Settings, description: str = ""
                   ) -> AsyncIterator[list[str]]:
    """Write the run's artifact when the block ends, also when it fails (then with `result.failure`: the reason, and
    what happened, secrets redacted).

    The block may add lines for the artifact to the list it is given. Prefect stops a flow past its timeout by
    cancelling it: here that becomes our own RunTimedOut, so the artifact says which timeout it was."""
    extra: list[str] = []
    started, timeout = time.monotonic(), running_flow_timeout()
    try:
        yield extra
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and timeout and time.monotonic() - started >= timeout - 1:
            exc = RunTimedOut.after(timeout)
        result.failure = failure_of(exc, result, settings)
        await asyncio.shield(session_artifact(key, result, description=description))
        raise
    await session_artifact(key, result, extra=extra, description=description)


def session_markdown(title: str, result: SessionResult, extra: list[str] = ()) -> str:
    lines = [f"# {title}", ""]
    lines += [f"**{REHEARSAL_BANNER}**", ""] if result.rehearsal else []
    failure = result.failure
    outcome = f"FAILED ({failure.reason}): {failure.message}" if failure else "succeeded"
    lines += [f"**Outcome:** {outcome}", "", *extra]
    lines += [
        f"- Sandbox: `{result.sandbox_id or '-'}` on `{result.backend}`",
        f"- Gateway tools: {result.tools}",
        f"- Turns: {result.run.num_turns}, cost: {result.cost()}",
        *(f"- {line}" for line in result.policy),
        f"- Policy violations: {result.violations}",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in result.steps.items()),
        "",
        "| tool call | outcome |",
        "|---|---|",
        *(f"| `{c.name}` | {'ok' if c.ok else 'failed'} |" for c in result.run.tool_calls),
        "",
        *approvals_table(result),
        *audit_table(result),
        *egress_table(result),
        "## Answer",
        "",
        result.run.result or "_none_",
    ]
    return "\n".join(lines)


def approvals_table(result: SessionResult) -> list[str]:
    """Every call put to a person (or refused by the policy when asked), with its answer, as a markdown table."""
    shown = [d for d in result.run.decisions if d.by != "policy" or not d.allowed]
    if not shown:
        return []
    answers = {"person": "{via}", "silence": "nobody, in time", "error": "nobody could be asked", "policy": "policy"}
    rows = [
        f"| {d.asked_at:%H:%M:%S} | `{d.tool}` | `{cell(json.dumps(d.arguments, ensure_ascii=False))}` "
        f"| {'approved' if d.allowed else 'denied'}{' (edited)' if d.edited else ''} | "
        f"{answers[d.by].format(via=d.via or 'a person')} | {d.waited_seconds:.0f} | {cell(d.reason) or '-'} |"
        for d in shown
    ]
    header = ["## Approvals", "", "| asked (UTC) | tool | arguments | answer | by | waited (s) | reason |",
              "|---|---|---|---|---|---|---|"]
    return [*header, *rows, ""]


def cell(text: str, limit: int = 120) -> str:
    """Text for one cell of a markdown table: one line, short, no column breaks."""
    return one_line(text, limit=limit, empty="").replace("|", "\\|")


def audit_table(result: SessionResult) -> list[str]:
    """The gateway's call log as a markdown table (argument names and sizes only)."""
    if result.audit is None:
        return [f"_The {result.backend} gateway keeps no call log this run can read._", ""]
    rows = [
        f"| {c.time} | `{c.tool}` | {', '.join(c.arguments) or '-'} | {c.argument_bytes} | {c.outcome} | "
        f"{c.detail or '-'} | {c.seconds:.2f} | `{c.tool_use_id or '-'}` |"
        for c in result.audit
    ]
    header = ["## Gateway calls", "", "| time | tool | arguments | bytes | outcome | detail | seconds | tool use |",
              "|---|---|---|---|---|---|---|---|"]
    return [*header, *rows, ""]


def egress_table(result: SessionResult) -> list[str]:
    """The sandbox's connections out of the ordinary (any to a host the policy names, every block and error; not
    the many requests to the model API and the gateway) as a markdown table."""
    if result.egress is None:
        return [f"_The {result.backend} sandbox keeps no egress log this run can read._", ""]
    shown = [e for e in result.egress if e.kind == "egress" or e.decision != "allowed"]
    rows = [
        f"| {time.strftime('%H:%M:%S', time.gmtime(e.time))} | {e.method or '-'} | "
        f"`{e.service or f'{e.host}:{e.port}'}` | {e.decision} | {e.detail or '-'} |"
        for e in shown
    ]
    header = ["## Network", "", f"{len(result.egress) - len(shown)} connection(s) to the model API and the gateway.",
              "", "| time (UTC) | method | to | decision | detail |", "|---|---|---|---|---|"]
    return [*header, *rows, ""]


async def session_artifact(key: str, result: SessionResult, extra: list[str] = (), description: str = ""
                           ) -> None:
    title = key.replace("-", " ").capitalize()
    await acreate_markdown_artifact(key=key, markdown=session_markdown(title, result, extra),
                                    description=description or f"{title} run summary")
