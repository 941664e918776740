"""The run policy: what the agent may do, decided once per run and enforced by every layer that can.

An agent that reads untrusted text (Notion pages, GitHub issues) and holds write tools will, sooner or later, be
told by that text to misuse them. The policy is the answer decided before the run starts and carried by its plan:
which gateway tools it may call, whether it may run commands. The gateway serves only the allowed tools (a tool it
does not serve cannot be called, whatever Claude is told) and Claude Code is started with the same allow-list
(`--allowedTools`), so one layer failing open does not open the run. Where a backend's gateway cannot filter, the
run's log and artifact say which layers enforce the policy: it is never weakened in silence.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentbox.claude import GATEWAY_NAME
from agentbox.errors import ConfigError

BLOCKED = "Blocked by policy: do not retry."  # what every layer says to the agent when it refuses
COMMAND_TOOLS = ("Bash",)
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


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

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, tools: list[str] | None) -> list[str] | None:
        if tools is None:
            return None
        bad = [t for t in tools if not _TOOL_NAME.match(t)]
        if bad:
            raise ValueError(f"not tool names: {', '.join(repr(t[:40]) for t in bad[:5])}")
        return list(dict.fromkeys(tools))

    def claude_tools(self) -> tuple[str, ...]:
        """Claude Code's `--allowedTools`: the gateway's allowed tools, and the command tool if commands are on."""
        prefix = f"mcp__{GATEWAY_NAME}"
        gateway = (prefix,) if self.tools is None else tuple(f"{prefix}__{t}" for t in self.tools)
        return (*gateway, *(COMMAND_TOOLS if self.allow_commands else ()))

    def summary(self) -> list[str]:
        """The policy in a few lines, for the run's log and artifact."""
        tools = "every tool of the requested servers" if self.tools is None else ", ".join(self.tools) or "none"
        return [f"Tools allowed: {tools}", f"Commands: {'allowed' if self.allow_commands else 'not allowed'}"]


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


def parse_policy(tools: str | None, allow_commands: bool, source: str, hint: str) -> RunPolicy:
    """A policy from text, as a setting or a flag gives it; a bad tool name is one ConfigError naming `source`."""
    try:
        return RunPolicy(tools=tool_list(tools), allow_commands=allow_commands)
    except ValidationError as exc:
        why = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"Invalid {source} ({why}).", hint) from None


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
