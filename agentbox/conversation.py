"""A conversation with Claude Code in a sandbox, through the sandbox port: nothing here knows Prefect.

`Conversation` starts Claude Code in its bidirectional stream-json mode (see agentbox/claude.py) with the prompt as
the first line on its stdin, and reads its events as they stream: each event worth a line is logged, secrets
redacted, through the callable it was given; each permission request is answered by a `PermissionHost` (the run
policy, or an `Approver` for the tools that need a person); each model call's usage is priced (agentbox/spend.py).
Claude is stopped early when it starts without the gateway, or once the estimate passes the run's budget. What it
did is returned as an `AgentRun`, for `agentbox.run_checks.check_run` to judge once the run is recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from agentbox.approvals import Approver, PermissionHost, decision_line, refusal_for_agent
from agentbox.claude import (
    GATEWAY_NAME,
    AgentRun,
    ClaudeOptions,
    Event,
    InitEvent,
    PermissionRequest,
    ResultEvent,
    StreamParser,
    ToolCallEvent,
    ToolResultEvent,
    UsageEvent,
    describe,
    permission_response,
    prompt_command,
    split_tool_name,
    user_message,
)
from agentbox.errors import ClaudeError, SandboxCommandTimeout, one_line
from agentbox.journal import Journal
from agentbox.policy import RunPolicy
from agentbox.sandboxes import SandboxBackend, SandboxHandle
from agentbox.sandboxes.base import CommandResult
from agentbox.secrets import redact
from agentbox.spend import Spend

Log = Callable[[int, str], object]  # a level and a line, as `logging.Logger.log` takes them


class BudgetStop(Exception):
    """Why Claude was stopped when its spend passed the budget. Never raised: the run says so (`stopped`), and
    `check_run` fails it with the run recorded."""


class Conversation:
    """One run of Claude Code on a prompt in a sandbox, answering its permission requests as it goes.

    `run()` carries it out once. Its state is its attributes: `agent_run` (what Claude did, filled as events
    arrive), `spend` (the running estimate), `permissions` (who answers, and every decision), the lines waiting for
    Claude's stdin, the answers being decided, and why Claude was stopped early, if it was."""

    def __init__(self, sandboxes: SandboxBackend, handle: SandboxHandle, prompt: str, *, options: ClaudeOptions,
                 policy: RunPolicy, approver: Approver | None, claude_timeout: float, approval_timeout: float = 0.0,
                 servers: dict[str, list[str]] | None = None, secrets: Sequence[str] = (), log: Log | None = None,
                 journal: Journal | None = None, envs: dict[str, str] | None = None) -> None:
        """`claude_timeout` bounds Claude's own work and `approval_timeout` all of the run's waits for people, on
        top; `servers` maps each MCP server to its tools (to name the server when a person is asked); `secrets`
        (the gateway's token among them) are redacted from every line given to `log`; `journal` keeps the run's
        writes (each journaled before Claude may make it, and its outcome as it streams back); `envs` are added to
        Claude's environment (its telemetry's)."""
        self.sandboxes, self.handle, self.prompt, self.options = sandboxes, handle, prompt, options
        self.budget = policy.budget_usd
        self.timeout = claude_timeout + approval_timeout
        self.secrets = list(secrets)
        self.log = log or logging.getLogger(__name__).log
        self.policy, self.journal, self.envs = policy, journal, envs
        self.permissions = PermissionHost(policy, approver, wait_budget=approval_timeout, servers=servers,
                                          secrets=self.secrets, structured_output=options.json_schema is not None,
                                          journal=journal)
        self.agent_run = AgentRun()
        self.agent_run.decisions = self.permissions.decisions
        self.parser = StreamParser()
        self.spend = Spend()
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()  # lines for Claude's stdin; None closes it
        self.answering: set[asyncio.Task] = set()
        self.journaling: set[asyncio.Task] = set()  # outcomes of writes being saved to the journal
        self.stop_reason: asyncio.Future[BaseException] | None = None  # why Claude must stop early, once it must

    async def run(self) -> AgentRun:
        """Start Claude, converse until it finishes or is stopped, and return what it did.

        Stopped for its spend, it returns with `agent_run.stopped == "budget"`; stopped because it started without
        the gateway, or killed past its timeout, it raises ClaudeError; a wait for a person that failed (the run
        was cancelled) raises what it raised."""
        command = self._start()
        result = None
        try:
            await asyncio.wait({command, self.stop_reason}, return_when=asyncio.FIRST_COMPLETED)
            if self.stop_reason.done():
                await self._stop_early(command)
            else:
                result = await command
        except SandboxCommandTimeout:
            raise ClaudeError(
                f"Claude Code ran past its {self.timeout:g} s timeout and was killed.",
                "Raise CLAUDE_TIMEOUT_SECONDS or simplify the prompt.",
            ) from None
        finally:
            await self._wind_down(command)
        if result is not None:
            self.agent_run.exit_code = result.exit_code
            self.agent_run.stderr = redact(one_line(result.stderr, last=True, empty=""), self.secrets)
        return self.agent_run

    def _start(self) -> asyncio.Task[CommandResult]:
        """Claude's command in the sandbox, its stdin fed from the inbox, which holds the prompt first."""
        self.stop_reason = asyncio.get_running_loop().create_future()
        self.inbox.put_nowait(user_message(self.prompt))
        return asyncio.create_task(self.sandboxes.run(
            self.handle, prompt_command(self.options), envs=self.envs, timeout=self.timeout, on_stdout=self._read,
            stdin=self._claude_input()))

    async def _claude_input(self) -> AsyncIterator[str]:
        """The inbox's lines as they come, until the None that closes Claude's stdin."""
        while (line := await self.inbox.get()) is not None:
            yield line

    def _read(self, chunk: str) -> None:
        """Take each event a chunk of Claude's output completes."""
        for event in self.parser.feed(chunk):
            self._take(event)

    def _take(self, event: Event) -> None:
        """Record an event and log its line; then stop a Claude without the gateway, have a permission request
        answered, price a model call (stopping Claude past the budget), or close Claude's stdin once it finished."""
        self.agent_run.apply(event)
        if line := describe(event):
            self._say(line)
        if isinstance(event, InitEvent) and event.mcp_servers.get(GATEWAY_NAME) != "connected":
            status = event.mcp_servers.get(GATEWAY_NAME, "absent")
            self._stop(ClaudeError(f"Claude Code started without the gateway's tools (gateway status: {status}).",
                                   "Check the gateway and MCP_TIMEOUT; the run was stopped."))
        elif isinstance(event, PermissionRequest):
            answering = asyncio.ensure_future(self._answer(event))
            self.answering.add(answering)
            answering.add_done_callback(self.answering.discard)
        elif isinstance(event, UsageEvent):
            self.agent_run.estimated_cost_usd = round(self.spend.add(event.message_id, event.model, event.usage), 6)
            self.agent_run.tokens = self.spend.tokens()
            if self.budget is not None and self.spend.usd > self.budget and not self.agent_run.stopped:
                self.agent_run.stopped = "budget"
                self._stop(BudgetStop())
        elif isinstance(event, ResultEvent):
            self.inbox.put_nowait(None)
        if self.journal is not None and isinstance(event, ToolCallEvent | ToolResultEvent):
            self._journal(event)

    def _journal(self, event: ToolCallEvent | ToolResultEvent) -> None:
        """Save a write's outcome (and a write Claude made without asking, when permissions were bypassed) to the
        journal, in order; a failure to save is logged (the write itself was journaled before it was made)."""
        if isinstance(event, ToolCallEvent):
            server, tool = split_tool_name(event.name)
            if not self.options.bypass_permissions or server != GATEWAY_NAME or not self.policy.is_write(tool):
                return  # asked about: journaled by the permission host, before it is allowed
            saving = self.journal.called(event.id, tool, event.input)
        else:
            saving = self.journal.finished(event.tool_use_id, not event.is_error, redact(event.content, self.secrets))

        async def save() -> None:
            try:
                await saving
            except Exception as exc:  # noqa: BLE001 - said; the run goes on
                self._say(f"Could not save the journal of writes ({one_line(exc)}).", logging.WARNING)

        task = asyncio.ensure_future(save())
        self.journaling.add(task)
        task.add_done_callback(self.journaling.discard)

    async def _answer(self, request: PermissionRequest) -> None:
        """Decide one permission request, log the decision, and send Claude the answer: allowed (with the arguments
        a person edited, which the run's tool call then shows) or refused, saying why. A decision that raised (the
        run was cancelled while a person was asked) stops the run with it."""
        try:
            decision, arguments = await self.permissions.decide(request)
        except BaseException as exc:  # noqa: BLE001 - cancelled while waiting, say: the run stops with it
            self._stop(exc)
            return
        self._say(decision_line(decision))
        if decision.edited and arguments is not None:
            for call in self.agent_run.tool_calls:
                if call.id == request.tool_use_id:
                    call.input = arguments
        message = "" if decision.allowed else refusal_for_agent(decision)
        self.inbox.put_nowait(permission_response(request.request_id, decision.allowed, message=message,
                                                  updated_input=arguments))

    def _stop(self, reason: BaseException) -> None:
        """Have `run` stop Claude for `reason` (the first one given wins)."""
        if not self.stop_reason.done():
            self.stop_reason.set_result(reason)

    async def _stop_early(self, command: asyncio.Task[CommandResult]) -> None:
        """Kill Claude (the backend kills the process when its command is cancelled) and raise why, unless it was
        the budget: that is logged, and the run returned."""
        command.cancel()
        await asyncio.gather(command, return_exceptions=True)
        reason = self.stop_reason.result()
        if not isinstance(reason, BudgetStop):
            raise reason
        self._say(f"Spend estimated at ${self.spend.usd:.4f} passed the run's budget of ${self.budget:g}: Claude "
                  "Code was stopped.", logging.ERROR)

    async def _wind_down(self, command: asyncio.Task[CommandResult]) -> None:
        """However the run ended: no command nor answer left running, and the output's last line taken."""
        for task in (command, *self.answering):
            task.cancel()
        await asyncio.gather(command, *self.answering, return_exceptions=True)
        for event in self.parser.close():
            self.agent_run.apply(event)
        await asyncio.gather(*self.journaling, return_exceptions=True)  # the outcomes saved before the run ends

    def _say(self, line: str, level: int = logging.INFO) -> None:
        self.log(level, redact(line, self.secrets))
