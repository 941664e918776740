"""What the sandbox's layers logged of the agent's attempts, as the run's audit reads them: the gateway's tool calls
(argument names and size, never their values) and the egress proxy's decisions (host and port, never what was
sent). The session fills them before the sandbox goes; the artifact shows them and counts their blocks."""

from __future__ import annotations

from pydantic import BaseModel


class GatewayCall(BaseModel):
    """One tools/call as the gateway logged it, with the id Claude Code gave the same call."""

    time: str
    tool: str
    arguments: list[str] = []
    argument_bytes: int = 0
    outcome: str  # ok | error | blocked
    detail: str = ""
    seconds: float = 0.0
    tool_use_id: str = ""

    @property
    def blocked(self) -> bool:
        return self.outcome == "blocked"


class EgressAttempt(BaseModel):
    """One connection the sandbox's egress proxy decided on."""

    time: float
    kind: str = "egress"  # egress (the forward proxy) | service (the model API, the gateway)
    method: str = ""
    host: str = ""
    port: int = 0
    service: str = ""
    decision: str  # allowed | blocked | error
    detail: str = ""

    @property
    def blocked(self) -> bool:
        return self.decision == "blocked"


def audit_of(calls: list[dict], tool_uses: list[tuple[str, str]]) -> list[GatewayCall]:
    """The gateway's calls, each joined with Claude's tool-use id: the n-th call of a tool at the gateway is the n-th
    time Claude called it (`tool_uses` holds (tool, id) in Claude's order)."""
    ids: dict[str, list[str]] = {}
    for tool, tool_use_id in tool_uses:
        ids.setdefault(tool, []).append(tool_use_id)
    audit = []
    for call in calls:
        entry = GatewayCall.model_validate(call)
        pending = ids.get(entry.tool) or []
        audit.append(entry.model_copy(update={"tool_use_id": pending.pop(0)}) if pending else entry)
    return audit
