"""Tasks that register Claude Code against the gateway and run the prompt headless."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import jsonschema
from prefect import get_run_logger

from agentbox.approvals import PermissionHost
from agentbox.claude import (
    GATEWAY_NAME,
    STRUCTURED_OUTPUT_TOOL,
    TOKEN_ENV,
    AgentRun,
    InitEvent,
    PermissionDecision,
    PermissionRequest,
    ResultEvent,
    StreamParser,
    UsageEvent,
    describe,
    mcp_get_command,
    mcp_get_status,
    permission_response,
    prompt_command,
    register_command,
    split_tool_name,
    user_message,
)
from agentbox.errors import (
    ApprovalDenied,
    BudgetExceeded,
    ClaudeError,
    ModelApiError,
    SandboxCommandTimeout,
    one_line,
)
from agentbox.plan import SessionPlan, Timeouts
from agentbox.sandboxes import SandboxHandle
from agentbox.policy import BLOCKED
from agentbox.secrets import redact
from agentbox.spend import Spend
from tasks.approvals import current_approver
from tasks.budget import record_spend
from tasks.defaults import session_task

# `claude mcp add && claude mcp get` (twice the registration timeout), a lone `mcp get` after an add that found the
# server there already, and a margin.
REGISTER_TASK_TIMEOUT = 3 * Timeouts.model_fields["registration"].default + 30


@session_task(
    "register-claude",
    task_run_name="register-claude {handle.id}",
    retries=1,
    retry_delay_seconds=2,
    timeout_seconds=REGISTER_TASK_TIMEOUT,
)
async def register_claude(plan: SessionPlan, handle: SandboxHandle) -> str:
    """`claude mcp add --transport http --scope user ...`, then `claude mcp get` must say Connected (one command)."""
    settings = plan.read_settings()
    sandboxes = plan.sandboxes(settings)
    token = await sandboxes.gateway_token(handle)
    secrets = [*plan.secret_values(settings), token]
    timeout = plan.timeouts.registration
    inside_token = await sandboxes.claude_gateway_token(handle)
    got = await sandboxes.run(handle, register_command(handle.internal_gateway_url), envs={TOKEN_ENV: inside_token},
                              timeout=2 * timeout)
    output = got.stderr + got.stdout
    if got.exit_code != 0 and "Status:" not in output:  # one of the two failed before `mcp get` said anything
        if "already exists" not in output:
            failed = "get" if "Added " in got.stdout else "add"  # `mcp add` says "Added HTTP MCP server ..."
            why = redact(one_line(got.stderr or got.stdout, last=True, empty="no output"), secrets)
            raise ClaudeError(
                f"`claude mcp {failed}` failed with exit code {got.exit_code}: {why}.",
                "Check the Claude Code install in the sandbox.",
            )
        # a retry of this task (its `mcp get` failed, under load say) finds the server added by the first try: the
        # same gateway, URL and token, so `mcp get` alone decides
        got = await sandboxes.run(handle, mcp_get_command(), timeout=timeout)
    connected, status = mcp_get_status(redact(got.stdout + "\n" + got.stderr, secrets))
    if not connected:
        raise ClaudeError(
            f"Claude Code cannot connect to the MCP gateway ({status}).", "Check the gateway log in the sandbox."
        )
    get_run_logger().info("Claude connected to the gateway as '%s' (%s)", GATEWAY_NAME, status)
    return status


# Never retried: the agent's actions are not idempotent. Its timeout is the plan's, on the command.
@session_task("run-prompt", task_run_name="run-prompt {handle.id}", retries=0)
async def run_prompt(plan: SessionPlan, handle: SandboxHandle) -> AgentRun:
    """Run Claude Code on the plan's prompt in its bidirectional stream-json mode, logging events as they arrive and
    answering its permission requests (the policy, or a person for the tools that need one). Claude is stopped
    early when it starts without the gateway, or once its reported usage passes the run's budget; what it did is
    returned either way, for `check_run` to judge after the run is recorded."""
    settings = plan.read_settings()
    sandboxes = plan.sandboxes(settings)
    options, timeouts, budget = plan.claude, plan.timeouts, plan.policy.budget_usd
    secrets = [*plan.secret_values(settings), await sandboxes.gateway_token(handle)]
    logger = get_run_logger()
    run, parser, spend = AgentRun(), StreamParser(), Spend()
    host = PermissionHost(plan.policy, current_approver(plan), wait_budget=timeouts.approvals,
                          servers=plan.expected_tools, secrets=secrets,
                          structured_output=options.json_schema is not None)
    run.decisions = host.decisions
    inbox: asyncio.Queue[str | None] = asyncio.Queue()  # lines for Claude's stdin; None closes it
    inbox.put_nowait(user_message(plan.prompt))
    stop: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    answering: set[asyncio.Task] = set()

    def stop_with(error: BaseException) -> None:
        if not stop.done():
            stop.set_result(error)

    async def answer(request: PermissionRequest) -> None:
        try:
            decision, arguments = await host.decide(request)
        except BaseException as exc:  # noqa: BLE001 - cancelled while waiting, say: the run stops with it
            stop_with(exc)
            return
        logger.info(redact(decision_line(decision), secrets))
        if decision.edited and arguments is not None:
            for call in run.tool_calls:
                if call.id == request.tool_use_id:
                    call.input = arguments
        message = "" if decision.allowed else refusal_for_agent(decision)
        inbox.put_nowait(permission_response(request.request_id, decision.allowed, message=message,
                                             updated_input=arguments))

    def on_stdout(chunk: str) -> None:
        for event in parser.feed(chunk):
            run.apply(event)
            if line := describe(event):
                logger.info(redact(line, secrets))
            if isinstance(event, InitEvent) and event.mcp_servers.get(GATEWAY_NAME) != "connected":
                status = event.mcp_servers.get(GATEWAY_NAME, "absent")
                stop_with(ClaudeError(f"Claude Code started without the gateway's tools (gateway status: {status}).",
                                      "Check the gateway and MCP_TIMEOUT; the run was stopped."))
            elif isinstance(event, PermissionRequest):
                task = asyncio.ensure_future(answer(event))
                answering.add(task)
                task.add_done_callback(answering.discard)
            elif isinstance(event, UsageEvent):
                run.estimated_cost_usd = round(spend.add(event.message_id, event.model, event.usage), 6)
                if budget is not None and spend.usd > budget and not run.stopped:
                    run.stopped = "budget"
                    stop_with(BudgetStop())
            elif isinstance(event, ResultEvent):
                inbox.put_nowait(None)

    async def stdin() -> AsyncIterator[str]:
        while (line := await inbox.get()) is not None:
            yield line

    limit = timeouts.claude + timeouts.approvals
    command = asyncio.create_task(
        sandboxes.run(handle, prompt_command(options), timeout=limit, on_stdout=on_stdout, stdin=stdin())
    )
    result = None
    try:
        await asyncio.wait({command, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():  # the backend kills the process when its command is cancelled
            command.cancel()
            await asyncio.gather(command, return_exceptions=True)
            if not isinstance(stop.result(), BudgetStop):
                raise stop.result()
            logger.error("Spend estimated at $%.4f passed the run's budget of $%g: Claude Code was stopped.",
                         spend.usd, budget)
        else:
            result = await command
    except SandboxCommandTimeout:
        raise ClaudeError(
            f"Claude Code ran past its {limit:g} s timeout and was killed.",
            "Raise CLAUDE_TIMEOUT_SECONDS or simplify the prompt.",
        ) from None
    finally:
        for task in (command, *answering):
            task.cancel()
        await asyncio.gather(command, *answering, return_exceptions=True)
        for event in parser.close():
            run.apply(event)
        if not plan.rehearsal:  # what it spent counts towards the daily budget, whichever way it ended
            await record_spend(run.spent_usd)
    if result is not None:
        run.exit_code = result.exit_code
        run.stderr = redact(one_line(result.stderr, last=True, empty=""), secrets)
    return run


class BudgetStop(Exception):
    """The host stopped Claude for its spend (not raised: `check_run` says so with the run recorded)."""


def decision_line(decision: PermissionDecision) -> str:
    """The log line of one permission decision."""
    verdict = "ALLOWED" if decision.allowed else "DENIED"
    who = {"policy": "by the run policy", "person": f"by a person ({decision.via})",
           "silence": "as nobody answered in time", "error": "as nobody could be asked"}[decision.by]
    extra = (" with edited arguments" if decision.edited else "") + (f": {decision.reason}" if decision.reason else "")
    waited = f" after {decision.waited_seconds:.0f} s" if decision.by != "policy" else ""
    return f"{verdict} {decision.tool} {who}{waited}{extra}"


def refusal_for_agent(decision: PermissionDecision) -> str:
    """What Claude is told when a call is refused."""
    if decision.by == "policy":
        return BLOCKED
    if decision.by == "person":
        return f"A person denied this call{': ' + decision.reason if decision.reason else ''}. Do not retry it."
    return "Nobody approved this call in time. Do not retry it."


def check_run(run: AgentRun, plan: SessionPlan) -> None:
    """Raise what went wrong with a recorded run, if anything did: spend, refused approvals, Claude's own errors,
    missing tools, denied tools, no valid structured output."""
    options, budget = plan.claude, plan.policy.budget_usd
    if run.stopped == "budget" or run.subtype == "error_max_budget_usd":
        raise BudgetExceeded(
            f"The run spent ${run.spent_usd:.4f} of its ${budget or 0:g} budget and was stopped.",
            "Raise the policy's budget_usd (--budget, POLICY_BUDGET_USD) or simplify the prompt.",
        )
    if refused := run.refused_by_people():
        first = refused[0]
        _, tool = split_tool_name(first.tool)
        why = {"person": f"a person denied it on the {first.via or 'UI'}", "silence": "nobody answered in time",
               "error": "nobody could be asked"}[first.by]
        raise ApprovalDenied(
            f"{tool} was not approved: {why}{' (' + first.reason + ')' if first.reason else ''}.",
            "Run it again to ask again; see the run's artifact for every decision.",
        )
    if run.subtype == "error_max_turns":
        raise ClaudeError(
            f"Claude Code hit the turn limit ({options.max_turns}) before finishing.", "Raise CLAUDE_MAX_TURNS."
        )
    if not run.finished:
        raise ClaudeError(
            f"Claude Code exited with code {run.exit_code} without a result: {run.stderr or 'no output'}.",
            "See the run's logs.",
        )
    if run.api_error_status or run.result.startswith("API Error"):
        raise ModelApiError(
            f"The model API failed the run ({run.api_error_status or 'no status'}): {one_line(run.result)}.",
            "Claude Code retried it already; run again later, or check ANTHROPIC_BASE_URL and the API's status.",
        )
    if run.is_error or run.exit_code:
        raise ClaudeError(
            f"Claude Code reported an error ({run.subtype}): {one_line(run.result)}.", "See the run's logs."
        )
    if GATEWAY_NAME not in run.mcp_servers or run.mcp_servers[GATEWAY_NAME] != "connected":
        raise ClaudeError("Claude Code ran without the gateway's tools.", "Check the gateway.")
    if run.permission_denials:
        denied = ", ".join(sorted(set(run.permission_denials)))
        raise ClaudeError(
            f"Claude Code was denied tools: {denied}.",
            "Allow them with --allowed-tools if they are wanted.",
        )
    if options.json_schema is not None:
        check_structured_output(run, options.json_schema)


def check_structured_output(run: AgentRun, schema: dict) -> None:
    """The answer must be there and match the requested JSON Schema (Claude Code checks it too; this does not rely
    on that)."""
    output = run.structured_output
    if output is None:
        attempts = [c for c in run.tool_calls if c.name == STRUCTURED_OUTPUT_TOOL]
        why = (f"its last of {len(attempts)} attempt(s) was refused: {one_line(attempts[-1].output, limit=200)}"
               if attempts else "the agent never gave one")
        raise ClaudeError(f"Claude Code gave no valid structured output ({why}).",
                          "See the run's logs; the model must finish with JSON matching the output schema.")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(output))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise ClaudeError(f"Claude Code's structured output does not match the schema at {where}: "
                          f"{one_line(error.message, limit=200)}.", "See the run's logs.")
