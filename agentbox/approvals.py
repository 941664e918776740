"""Who answers Claude's permission requests: the run policy, or a person for the tools it says need one.

Claude Code asks its host before every tool call it was not allowed in advance (`can_use_tool`). `PermissionHost`
answers: a gateway tool the policy names under `require_approval` is put to an `Approver` (the Prefect UI, or the
terminal with `--approve`), one request at a time and within the run's whole approval budget; anything else is
allowed or refused by the policy alone. Every answer becomes a `PermissionDecision` for the log (`decision_line`) and
the artifact, and a refusal says why to Claude (`refusal_for_agent`). Nothing here knows Prefect: the approvers
that need it live with the tasks.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

from agentbox.claude import (
    GATEWAY_NAME,
    STRUCTURED_OUTPUT_TOOL,
    PermissionDecision,
    PermissionRequest,
    split_tool_name,
)
from agentbox.errors import ConfigError, RunCancelled, one_line
from agentbox.policy import BLOCKED, RunPolicy, Silence
from agentbox.secrets import redact, redact_value
from agentbox.telemetry.spans import step_span

if TYPE_CHECKING:
    from agentbox.journal import Journal


class ApprovalRequest(BaseModel, frozen=True):
    """A call a person must approve: which server's tool, with which arguments (secrets redacted), and what silence
    means."""

    tool: str = Field(description="The gateway's name for the tool, e.g. create_issue.")
    server: str = Field(description="The MCP server serving it, e.g. githubOfficial; empty if unknown.")
    arguments: dict[str, Any]
    tool_use_id: str = ""
    on_silence: Silence = "deny"

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, indent=2, ensure_ascii=False, sort_keys=True)

    @property
    def call(self) -> str:
        """The call an answer is for: Claude's id for it and a short hash of the arguments shown, so an answer to a
        call shown earlier (or with other arguments) cannot be taken for an answer to this one."""
        digest = hashlib.sha256(json.dumps(self.arguments, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return f"{self.tool_use_id or 'call'}:{digest[:8]}"


class Answer(BaseModel, frozen=True):
    """A person's answer: approve (perhaps with edited arguments) or deny, why, and who answered."""

    approve: bool
    reason: str = ""
    arguments: dict[str, Any] | None = Field(None, description="Edited arguments to call the tool with instead.")
    via: str = Field(description="Where the answer came from: terminal, prefect-ui.")
    answered_by: str = Field("", description="Who answered, as they said.")
    call: str = Field("", description="The call it answers (ApprovalRequest.call); empty: the one it was asked.")


class PendingApproval(BaseModel):
    """A call waiting for a person's answer, as a paused run publishes it for whoever answers from elsewhere (the
    command line, a notification): what the form shows, when it was asked, and until when it waits."""

    call: str = Field(description="The call an answer must name (ApprovalRequest.call).")
    tool: str
    server: str = ""
    arguments: dict[str, Any] = Field(description="As shown in the form (secrets redacted).")
    asked_at: datetime
    waits_until: datetime
    on_silence: Silence = "deny"

    def answer_command(self, flow_run_id: object, verb: str = "approve") -> str:
        """The command that answers this call (`verb`: approve or deny) from any terminal that reaches the run's
        Prefect server."""
        return f"python -m flows.approvals {verb} {flow_run_id} --call {self.call}"

    @classmethod
    def of(cls, request: ApprovalRequest, timeout: float) -> PendingApproval:
        asked_at = datetime.now(timezone.utc)
        return cls(call=request.call, tool=request.tool, server=request.server, arguments=request.arguments,
                   asked_at=asked_at, waits_until=asked_at + timedelta(seconds=timeout),
                   on_silence=request.on_silence)


class Approver(Protocol):
    """Puts one request to a person and waits at most `timeout` seconds; None when nobody answered in time.
    A cancelled run raises RunCancelled."""

    via: str

    async def ask(self, request: ApprovalRequest, timeout: float) -> Answer | None: ...


class PermissionHost:
    """Answers each `can_use_tool` request of one Claude run, and keeps what it decided."""

    def __init__(self, policy: RunPolicy, approver: Approver | None, *, wait_budget: float,
                 servers: dict[str, list[str]] | None = None, secrets: list[str] | None = None,
                 structured_output: bool = False, journal: Journal | None = None) -> None:
        self.policy, self.approver, self.journal = policy, approver, journal
        self.wait_budget = wait_budget
        self.servers = servers or {}
        self.secrets = secrets or []
        self.structured_output = structured_output
        self.waited = 0.0
        self.decisions: list[PermissionDecision] = []
        self._one_at_a_time = asyncio.Lock()

    def server_of(self, tool: str) -> str:
        return next((server for server, tools in self.servers.items() if tool in tools), "")

    async def decide(self, request: PermissionRequest) -> tuple[PermissionDecision, dict[str, Any] | None]:
        """The decision on one request, and the input to run the tool with when allowed. A write (the policy's
        `writes`) is journaled before it is allowed, and refused when it would repeat one done, or perhaps done, in
        this run."""
        server, tool = split_tool_name(request.tool_name)
        journaled = self.journal is not None and server == GATEWAY_NAME and self.policy.is_write(tool)
        if journaled and (earlier := self.journal.repeats(tool, request.input)):
            return self._decided(request, datetime.now(timezone.utc), False, "policy",
                                 f"this run already made this exact call ({earlier.summary()})"), None
        decision, arguments = await self._decide(request)
        if journaled and decision.allowed:
            try:
                await self.journal.called(request.tool_use_id, tool, arguments or {})
            except Exception as exc:  # noqa: BLE001 - a write nobody could journal is not made
                decision.allowed, decision.by = False, "error"
                decision.reason = redact(f"the run's journal of writes could not be saved ({one_line(exc)})",
                                         self.secrets)
                return decision, None
        return decision, arguments

    def _decided(self, request: PermissionRequest, asked_at: datetime, allowed: bool, by: str, reason: str = "",
                 answer: Answer | None = None, edited: bool = False) -> PermissionDecision:
        """A decision on `request`, kept."""
        decision = PermissionDecision(
            tool=request.tool_name, tool_use_id=request.tool_use_id,
            arguments=redact_value(request.input, self.secrets), asked_at=asked_at,
            answered_at=datetime.now(timezone.utc), allowed=allowed, by=by, via=answer.via if answer else "",
            answered_by=redact(answer.answered_by, self.secrets) if answer else "",
            reason=redact(reason, self.secrets), edited=edited)
        self.decisions.append(decision)
        return decision

    async def _decide(self, request: PermissionRequest) -> tuple[PermissionDecision, dict[str, Any] | None]:
        """The run policy's decision, or a person's where it asks for one."""
        asked_at = datetime.now(timezone.utc)
        server, tool = split_tool_name(request.tool_name)
        shown = redact_value(request.input, self.secrets)

        def decided(allowed: bool, by: str, reason: str = "", answer: Answer | None = None, edited: bool = False
                    ) -> PermissionDecision:
            return self._decided(request, asked_at, allowed, by, reason, answer, edited)

        permitted = self.policy.tools is None or tool in self.policy.tools
        if server == GATEWAY_NAME and permitted and self.policy.needs_approval(tool):
            ask = ApprovalRequest(tool=tool, server=self.server_of(tool), arguments=shown,
                                  tool_use_id=request.tool_use_id, on_silence=self.policy.on_silence)
            answer, by, why = await self._ask(ask)
            if answer is None:  # silence, or nobody could be asked: the policy says what that means
                allowed = by == "silence" and self.policy.on_silence == "approve"
                return decided(allowed, by, why), request.input if allowed else None
            edited = answer.approve and answer.arguments is not None and answer.arguments != shown
            decision = decided(answer.approve, "person", answer.reason, answer, edited)
            return decision, (answer.arguments if edited else request.input) if answer.approve else None
        if request.tool_name == STRUCTURED_OUTPUT_TOOL and self.structured_output:
            return decided(True, "policy"), request.input
        if self.policy.allows(request.tool_name):
            return decided(True, "policy"), request.input
        return decided(False, "policy", BLOCKED), None

    async def _ask(self, request: ApprovalRequest) -> tuple[Answer | None, str, str]:
        """A person's answer within what is left of the wait budget, how it was decided, and why when nobody did."""
        if self.approver is None:
            return None, "error", "nobody can be asked for approval on this run"
        async with self._one_at_a_time:  # people answer one question at a time, in order
            left = self.wait_budget - self.waited
            started = time.monotonic()
            with step_span(f"approval {request.tool}", {"agentbox.approval.tool": request.tool,
                                                        "agentbox.approval.server": request.server}) as span:
                try:
                    answer = await self.approver.ask(request, left) if left > 0 else None
                except (RunCancelled, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001 - a broken approver denies; the run goes on and says why
                    span.set_attribute("agentbox.approval.by", "error")
                    return None, "error", f"asking for approval failed ({one_line(exc)})"
                finally:
                    self.waited += time.monotonic() - started
                span.set_attributes({"agentbox.approval.by": "person" if answer else "silence",
                                     "agentbox.approval.approved": bool(answer and answer.approve)})
        if answer is None:
            return None, "silence", f"nobody answered within the run's {self.wait_budget:g} s for approvals"
        return answer, "person", ""


def decision_line(decision: PermissionDecision) -> str:
    """The log line of one permission decision: allowed or denied, by whom, after how long, and why."""
    verdict = "ALLOWED" if decision.allowed else "DENIED"
    signed = f", answered by {decision.answered_by}," if decision.answered_by else ""
    who = {"policy": "by the run policy", "person": f"by a person ({decision.via}){signed}",
           "silence": "as nobody answered in time", "error": "as nobody could be asked"}[decision.by]
    extra = (" with edited arguments" if decision.edited else "") + (f": {decision.reason}" if decision.reason else "")
    waited = f" after {decision.waited_seconds:.0f} s" if decision.by != "policy" else ""
    return f"{verdict} {decision.tool} {who}{waited}{extra}"


def refusal_for_agent(decision: PermissionDecision) -> str:
    """What Claude is told when a call is refused: the policy's word, a person's reason, or that nobody approved."""
    if decision.by == "policy":
        return BLOCKED
    if decision.by == "person":
        return f"A person denied this call{': ' + decision.reason if decision.reason else ''}. Do not retry it."
    return "Nobody approved this call in time. Do not retry it."


# -- the terminal -------------------------------------------------------------------------------------------------

# The approver a command line installs for the run it starts (`--approve`); flows use it over the Prefect UI's.
terminal_approver: contextvars.ContextVar[Approver | None] = contextvars.ContextVar("terminal_approver",
                                                                                    default=None)


class TerminalApprover:
    """Asks on this process's terminal: the tool and its arguments, then y/n (n may be followed by a reason)."""

    via = "terminal"

    def __init__(self, fd: int = 0, write: Callable[[str], Any] | None = None) -> None:
        if not os.isatty(fd):
            raise ConfigError("--approve asks on a terminal, and standard input is not one.",
                              "Run it in a terminal, or answer from the Prefect UI (set PREFECT_API_URL).")
        self.fd = fd
        self.write = write or (lambda text: (sys.stderr.write(text), sys.stderr.flush()))

    async def ask(self, request: ApprovalRequest, timeout: float) -> Answer | None:
        server = f" on {request.server}" if request.server else ""
        self.write(f"\nThe agent wants to call {request.tool}{server} with:\n{request.arguments_json()}\n")
        deadline = time.monotonic() + timeout
        while True:
            self.write(f"Allow {request.tool}? [y/n, or n followed by a reason] ")
            line = await self._line(deadline - time.monotonic())
            if line is None:
                self.write("\n(no answer in time)\n")
                return None
            word, _, reason = line.strip().partition(" ")
            if word.lower() in ("y", "yes"):
                return Answer(approve=True, reason=reason.strip(), via=self.via)
            if word.lower() in ("n", "no"):
                return Answer(approve=False, reason=reason.strip() or "denied on the terminal", via=self.via)

    async def _line(self, timeout: float) -> str | None:
        """One line typed on the terminal, None at end of input or past `timeout`."""
        if timeout <= 0:
            return None
        loop = asyncio.get_running_loop()
        line: asyncio.Future[str | None] = loop.create_future()
        buffer = bytearray()

        def readable() -> None:
            data = os.read(self.fd, 4096)
            buffer.extend(data)
            if (not data or b"\n" in buffer) and not line.done():
                line.set_result(buffer.decode(errors="replace").split("\n", 1)[0] if data or buffer else None)

        loop.add_reader(self.fd, readable)
        try:
            return await asyncio.wait_for(line, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            loop.remove_reader(self.fd)
