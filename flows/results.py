"""What a session leaves: its result (where it ran, each step's seconds, the agent's run, the audit) and, when it
failed, why, as one reason from a fixed set that a user can count failures by. No secrets."""

from __future__ import annotations

import asyncio

from prefect.exceptions import TerminationSignal
from pydantic import BaseModel, Field, computed_field

from agentbox.audit import EgressAttempt, GatewayCall
from agentbox.claude import GATEWAY_NAME, AgentRun
from agentbox.errors import AgentboxError, FailureReason, one_line
from agentbox.policy import BLOCKED
from agentbox.secrets import redact
from agentbox.settings import Settings


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
        """How many things a layer blocked (see `blocked`)."""
        return len(self.blocked())

    def blocked(self) -> list[str]:
        """Everything a layer blocked, one line each, for people to see what was tried: calls the gateway refused,
        connections the egress proxy refused, where a layer's log is unreadable its refusals as the agent saw them,
        and tools Claude Code denied."""
        lines = [f"gateway call {c.tool}: {c.detail or 'blocked'}" for c in self.audit or [] if c.blocked]
        lines += [f"connection to {e.service or f'{e.host}:{e.port}'}: {e.detail or 'blocked'}"
                  for e in self.egress or [] if e.blocked]
        refused_by_claude = {d.tool_use_id for d in self.run.decisions if not d.allowed}  # in permission_denials
        for call in self.run.tool_calls:
            unlogged = self.audit is None if call.server == GATEWAY_NAME else self.egress is None
            if unlogged and BLOCKED in call.output and call.id not in refused_by_claude:
                lines.append(f"call {call.name}: blocked (as the agent saw it)")
        lines += [f"tool {tool} (refused to Claude Code)" for tool in self.run.permission_denials]
        return lines

    def acted(self) -> bool:
        """Whether the agent's run did anything through the gateway (any tool call that succeeded): running it again
        could do it twice. A run that did nothing yet (the model API failed its first turn, say) may run again."""
        return any(c.server == GATEWAY_NAME and c.ok for c in self.run.tool_calls)

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
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, TerminationSignal)):
        return "cancelled"
    done = result.steps
    return "sandbox provider" if "create" not in done else "gateway" if "gateway_ready" not in done else "agent"


def failure_of(exc: BaseException, result: SessionResult, settings: Settings) -> SessionFailure:
    why = str(exc) if isinstance(exc, AgentboxError) else f"{type(exc).__name__}: {one_line(exc)}"
    return SessionFailure(reason=failure_reason(exc, result), message=redact(why, settings.secret_values()))
