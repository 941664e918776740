"""The run policy: what the agent may do, decided once per run and enforced by every layer that can.

An agent that reads untrusted text (Notion pages, GitHub issues) and holds write tools will, sooner or later, be
told by that text to misuse them. The policy is the answer decided before the run starts and carried by its plan:
which gateway tools it may call, whether it may run commands, which hosts its sandbox may reach. The gateway
serves only the allowed tools (a tool it does not serve cannot be called, whatever Claude is told) and Claude Code
is started with the same allow-list (`--allowedTools`), so one layer failing open does not open the run. Where a
backend's gateway cannot filter, the run's log and artifact say which layers enforce the policy: it is never
weakened in silence.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentbox.claude import GATEWAY_NAME
from agentbox.errors import ConfigError

BLOCKED = "Blocked by policy: do not retry."  # what every layer says to the agent when it refuses
COMMAND_TOOLS = ("Bash",)
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_EGRESS_HOST = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}(:[0-9]{{1,5}})?$")


class RunPolicy(BaseModel, frozen=True):
    """What the agent of one run may do. Secure by default: no commands; tools as the workflow allows."""

    model_config = ConfigDict(extra="forbid")

    tools: list[str] | None = Field(
        None,
        description="Gateway tools the agent may call, by the names the gateway lists (e.g. API-post-search, "
        "create_issue). Empty list: none. Unset: every tool of the requested servers.",
        examples=[["API-post-search", "create_issue"]],
    )
    allow_commands: bool = Field(False, description="Let the agent run shell commands in its sandbox.")
    egress: list[str] = Field(
        default_factory=list,
        description="Hosts the sandbox's programs may reach besides the model API and the gateway, as host (ports "
        "443 and 80), host:port or *.domain (its subdomains). Empty: none.",
        examples=[["pypi.org", "files.pythonhosted.org"]],
    )

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, tools: list[str] | None) -> list[str] | None:
        if tools is None:
            return None
        bad = [t for t in tools if not _TOOL_NAME.match(t)]
        if bad:
            raise ValueError(f"not tool names: {', '.join(repr(t[:40]) for t in bad[:5])}")
        return list(dict.fromkeys(tools))

    @field_validator("egress")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        hosts = [h.strip().lower() for h in hosts if h.strip()]
        bad = [h for h in hosts if not _EGRESS_HOST.match(h) or (":" in h and not 0 < int(h.rsplit(":")[1]) < 65536)]
        if bad:
            raise ValueError(f"not host[:port] names: {', '.join(repr(h[:60]) for h in bad[:5])}")
        return list(dict.fromkeys(hosts))

    def over(self, base: RunPolicy) -> RunPolicy:
        """This policy's explicitly set fields over `base`: a run that only allows commands keeps the tools its
        workflow allows."""
        return base.model_copy(update={name: getattr(self, name) for name in self.model_fields_set})

    def claude_tools(self) -> tuple[str, ...]:
        """Claude Code's `--allowedTools`: the gateway's allowed tools, and the command tool if commands are on."""
        prefix = f"mcp__{GATEWAY_NAME}"
        gateway = (prefix,) if self.tools is None else tuple(f"{prefix}__{t}" for t in self.tools)
        return (*gateway, *(COMMAND_TOOLS if self.allow_commands else ()))

    def summary(self) -> list[str]:
        """The policy in a few lines, for the run's log and artifact."""
        tools = "every tool of the requested servers" if self.tools is None else ", ".join(self.tools) or "none"
        egress = ", ".join(["the model API", "the gateway", *self.egress])
        return [f"Tools allowed: {tools}", f"Commands: {'allowed' if self.allow_commands else 'not allowed'}",
                f"Network: {egress} only"]


class GatewayCall(BaseModel):
    """One tools/call as the gateway logged it (argument names and size, never their values), with the id Claude
    Code gave the same call."""

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
    """One connection the sandbox's egress proxy decided on (host and port, never what was sent)."""

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


def tool_list(text: str | None) -> list[str] | None:
    """Tool names written as one comma-separated string (a flag, a setting); None stays None, "" is no tool."""
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def parse_policy(tools: str | None, allow_commands: bool | None, egress: str | None, sources: dict[str, str],
                 hint: str) -> RunPolicy | None:
    """A policy from text, as settings or flags give it (only what they set; None if nothing); a bad value is one
    ConfigError naming its setting or flag (`sources` maps a field to it)."""
    given = {"tools": tool_list(tools), "allow_commands": allow_commands, "egress": tool_list(egress)}
    given = {name: value for name, value in given.items() if value is not None}
    if not given:
        return None
    try:
        return RunPolicy(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        why = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"Invalid {sources[str(error['loc'][0])]} ({why}).", hint) from None


def check_tools_served(policy: RunPolicy, served: list[str]) -> None:
    """Every allowed tool must exist at the gateway: a typo would silently leave the agent without it."""
    if policy.tools is None:
        return
    missing = [t for t in policy.tools if t not in served]
    if missing:
        raise ConfigError(
            f"The policy allows tools the gateway does not serve: {', '.join(missing)}.",
            "Fix the names (the gateway's tools are in the run's log) or the MCP servers.",
        )
