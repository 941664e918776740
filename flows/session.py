"""The one session composition every session flow uses: plan → slot → create → ready → register → run → kill.

A flow builds the plan once (flows/planning.py), then `run_session` carries it out under one slot of the global
sandbox limit and tears the sandbox down on every path. `reported` writes the run's artifact (flows/report.py)
whether the session succeeded or not. `session_flow` is the decorator the session flows share.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled

from agentbox.audit import EgressAttempt, GatewayCall, audit_of
from agentbox.claude import AgentRun
from agentbox.errors import (AgentboxError, DailyBudgetReached, PolicyViolation, RunCancelled, RunTimedOut,
                             WritesAlreadyMade, one_line)
from agentbox.notifications import failure_notice, success_notice
from agentbox.plan import SessionPlan
from agentbox.run_checks import check_run
from agentbox.sandboxes.base import SLOT_LEASE_LABEL_KEY, SandboxHandle
from agentbox.settings import Settings, configured_flow_retries, configured_flow_timeout, load_settings
from agentbox.telemetry.spans import start_telemetry
from flows.janitor import kill_run_sandboxes_hook
from flows.planning import policy_lines, running_flow_timeout
from flows.report import session_artifact
from flows.results import SessionResult, failure_of
from tasks.agent_runs import completed_agent_run, load_journal, record_agent_run
from tasks.budget import check_daily_budget
from tasks.claude import register_claude, run_prompt
from tasks.events import RUN_COMPLETED, RUN_FAILED, emit_run_event
from tasks.gateway import read_egress_log, read_gateway_calls, wait_for_gateway
from tasks.lease import SessionLease
from tasks.sandbox import create_sandbox, kill_run_sandboxes, kill_sandbox, sandbox_slot


def session_flow(name: str, flow_run_name: Callable[[], str]) -> Callable[[Callable[..., Awaitable[Any]]], Flow]:
    """`@flow` with what every session flow shares, declared once: the configured timeout and retries (read where the
    flow's module is imported: the CLI, a runner, a worker's flow-run process), the hooks that kill a crashed or
    cancelled run's sandboxes and free their slots, and a run cancelled while it waited for a person ending
    Cancelled (its sandbox torn down), not Failed. Tracing starts here too, when the settings turn it on, before
    Prefect opens the flow run's span."""
    start_configured_telemetry()

    def decorate(fn: Callable[..., Awaitable[Any]]) -> Flow:
        @functools.wraps(fn)  # Prefect reads the parameters, their types and the docstring through the wrapper
        async def ending_cancelled_when_cancelled(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except RunCancelled as exc:
                return Cancelled(message=str(exc))

        return flow(name=name, flow_run_name=flow_run_name, timeout_seconds=configured_flow_timeout(),
                    retries=configured_flow_retries(), retry_delay_seconds=10,
                    on_crashed=[kill_run_sandboxes_hook], on_cancellation=[kill_run_sandboxes_hook],
                    )(ending_cancelled_when_cancelled)

    return decorate


def start_configured_telemetry() -> None:
    """Install the OpenTelemetry providers when the settings ask for tracing, wherever a session flow's module is
    imported (the CLI, a runner, a worker's flow-run process); bad settings are reported by the run's plan."""
    try:
        start_telemetry(load_settings())
    except AgentboxError:
        pass


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

    earlier = await completed_agent_run(plan)
    previous = SessionResult.model_validate(earlier) if earlier else None
    if previous and previous.run.finished and previous.acted():  # a retry, after the agent's finished work
        return await reuse_earlier_run(plan, result, previous)
    if writes := (await load_journal(plan)).done_or_perhaps():  # a retry, after an agent stopped half-way
        await teardown(plan, None)  # the earlier attempt's sandbox, if its teardown was what failed
        raise WritesAlreadyMade.of([w.summary() for w in writes])
    await check_daily_budget(plan)
    async with sandbox_slot(plan) as slot:  # held until the sandbox is gone
        if slot:  # on the sandbox, so that whoever kills it after a crash frees the slot too
            plan = plan.model_copy(update={"metadata": {**plan.metadata, SLOT_LEASE_LABEL_KEY: slot}})
        step("slot")  # the daily budget's check, and the wait for a slot of the sandbox limit
        failed, agent_done, problem = True, False, None
        async with SessionLease(plan, slot) as lease:  # both die with the run, however it dies
            try:
                handle = await create_sandbox(plan)
                result.sandbox_id, result.gateway_url = handle.id, handle.gateway_url
                await lease.cover(handle)
                step("create")
                result.tools = len(await wait_for_gateway(plan, handle))
                step("gateway_ready")
                await register_claude(plan, handle)
                step("register")
                result.run = await run_prompt(plan, handle)
                step("prompt")
                agent_done = True
                problem = problem_of(result.run, plan)  # raised after the audit: what the agent was kept from first
                failed = problem is not None
            finally:
                clock = time.monotonic()
                if handle:
                    result.audit, result.egress = await audit(plan, handle, result)
                if agent_done:  # before the teardown, which may fail: a retry of the run must not run the agent again
                    await asyncio.shield(record_agent_run(plan, result.model_dump(mode="json")))
                await lease.cover(None)
                await teardown(plan, handle, session_failed=failed)
                step("kill")
    return raise_if_failed(result, problem)


async def reuse_earlier_run(plan: SessionPlan, result: SessionResult, previous: SessionResult) -> SessionResult:
    """A retried flow run's session whose agent run an earlier attempt completed: that run, judged again, and no new
    sandbox nor agent run (which would do its writes twice)."""
    get_run_logger().warning(
        "The agent run of an earlier attempt of this run completed (sandbox %s), so it is reused: no new sandbox, "
        "the agent is not run again.", previous.sandbox_id)
    for name in SessionResult.model_fields:
        setattr(result, name, getattr(previous, name))
    result.steps = {**previous.steps, "reused": 0.0}
    await teardown(plan, None)  # the earlier attempt's sandbox, if its teardown was what failed
    return raise_if_failed(result, problem_of(result.run, plan))


def problem_of(run: AgentRun, plan: SessionPlan) -> AgentboxError | None:
    """What went wrong with a finished agent run (`check_run`'s error), or None."""
    try:
        check_run(run, plan)
    except AgentboxError as exc:
        return exc
    return None


def raise_if_failed(result: SessionResult, problem: AgentboxError | None) -> SessionResult:
    """The session's result, unless it failed: what a layer blocked fails it first (PolicyViolation), then what
    went wrong with the agent's run (`problem`)."""
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
    about = f"{flow_run.id}/{key}/{flow_run.run_count}"  # this attempt of this session
    try:
        yield extra
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and timeout and time.monotonic() - started >= timeout - 1:
            exc = RunTimedOut.after(timeout)
        result.failure = failure_of(exc, result, settings)
        await asyncio.shield(session_artifact(key, result, description=description))
        if not isinstance(exc, DailyBudgetReached):  # said once a day instead (tasks/budget.py)
            notice = failure_notice(str(flow_run.name), str(deployment.name or ""), result.failure.reason,
                                    result.failure.message, result.blocked())
            emit_run_event(RUN_FAILED, notice, about, reason=result.failure.reason)
        raise
    await session_artifact(key, result, extra=extra, description=description)
    summary = f"Sandbox {result.sandbox_id or '-'}; {len(result.run.tool_calls)} tool call(s); cost {result.cost()}."
    emit_run_event(RUN_COMPLETED, success_notice(str(flow_run.name), str(deployment.name or ""), summary), about)
