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

import fnmatch
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentbox.claude import GATEWAY_NAME, split_tool_name
from agentbox.errors import ConfigError

BLOCKED = "Blocked by policy: do not retry."  # what every layer says to the agent when it refuses
COMMAND_TOOLS = ("Bash",)
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_TOOL_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]{1,128}$")
Silence = Literal["deny", "approve"]
DEFAULT_APPROVAL_WAIT = 3600
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
# A tool writes, unless the policy says which do, when a word of its name is one of these verbs (create_issue,
# API-patch-page, add_issue_comment, merge_pull_request, ...). "post" alone writes only without a reading verb:
# Notion's API-post-search and API-post-database-query read.
WRITE_VERBS = frozenset({
    "add", "append", "approve", "archive", "assign", "cancel", "close", "comment", "commit", "create", "delete",
    "deploy", "dismiss", "dispatch", "edit", "fork", "insert", "invite", "label", "lock", "mark", "merge", "move",
    "patch", "post", "publish", "push", "put", "react", "release", "remove", "rename", "reopen", "replace", "reply",
    "request", "rerun", "resolve", "run", "send", "set", "star", "submit", "tag", "transfer", "trigger", "unlock",
    "unstar", "update", "upload", "write"})
READ_VERBS = frozenset({"search", "query", "get", "list", "read", "retrieve", "fetch", "find", "describe", "view"})
WRITES_BY_VERB = "*by-verb*"  # the gateway's --writes for the default: the tools named with a writing verb
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_EGRESS_HOST = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}(:[0-9]{{1,5}})?$")


class RunPolicy(BaseModel, frozen=True):
    """What the agent of one run may do. Secure by default: no commands; tools as the workflow allows."""

    model_config = ConfigDict(extra="forbid")

    tools: list[str] | None = Field(
        None,
        description="Gateway tools the agent may call, by the names the gateway lists (e.g. API-post-search, "
        "create_issue). Empty list: none. None: the workflow's list (every tool of the requested servers if it "
        "names none).",
        examples=[["API-post-search", "create_issue"]],
    )
    allow_commands: bool = Field(False, description="Let the agent run shell commands in its sandbox.")
    egress: list[str] = Field(
        default_factory=list,
        description="Hosts the sandbox's programs may reach besides the model API and the gateway, as host (ports "
        "443 and 80), host:port or *.domain (its subdomains). Empty: none.",
        examples=[["pypi.org", "files.pythonhosted.org"]],
    )

    require_approval: list[str] | None = Field(
        None,
        description="Gateway tools a person must approve before each call, by name or pattern (create_issue, "
        "API-patch-*). The run pauses and asks on its page in the Prefect UI (or on the terminal with --approve). "
        "Empty list: none. None: the settings' or the workflow's (notion-to-github: create_issue).",
        examples=[["create_issue"]],
    )
    approval_timeout_seconds: int | None = Field(
        None, ge=10, le=7 * 86400,
        description=f"How long the run waits for people, over all its approvals; the flow and sandbox timeouts make "
        f"room for it. None: the settings' (POLICY_APPROVAL_TIMEOUT_SECONDS), else {DEFAULT_APPROVAL_WAIT} s.",
    )
    budget_usd: float | None = Field(
        None, gt=0, le=10_000,
        description="The most the run may spend on the model, in USD: Claude Code stops past it, and the run is "
        "killed as soon as its reported usage passes it. None: the settings' (POLICY_BUDGET_USD), else no cap.",
    )
    on_silence: Silence = Field(
        "deny", description="What it means when nobody answers in time: deny the call, or approve it.")
    writes: list[str] | None = Field(
        None,
        description="Gateway tools that change something outside (by name or pattern): each call is journaled before "
        "it is made, a retried run never makes it twice, and a second call with the same arguments is refused. "
        "Empty list: none. None: the workflow's (notion-to-github: create_issue), else every tool whose name has a "
        "writing verb (create, update, delete, merge, push, send, patch, add, ...).",
        examples=[["create_issue", "API-patch-*"]],
    )
    secret_patterns: bool = Field(
        True,
        description="Scan the agent's tool calls at the gateway for credentials of known formats (GitHub, AWS, Slack, "
        "private keys, ...), besides the run's own secrets: a call carrying one is refused, a result redacted. Turn "
        "off only for a run that must pass such strings; the run's own secrets stay blocked.",
    )

    @field_validator("require_approval", "writes")
    @classmethod
    def _patterns(cls, patterns: list[str] | None) -> list[str] | None:
        if patterns is None:
            return None
        patterns = [p.strip() for p in patterns if p.strip()]
        bad = [p for p in patterns if not _TOOL_PATTERN.match(p)]
        if bad:
            raise ValueError(f"not tool names or patterns: {', '.join(repr(p[:40]) for p in bad[:5])}")
        return list(dict.fromkeys(patterns))

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
        workflow allows. A field set to None keeps base's: the Prefect UI's form sends every field, and a field left
        None there must not lift a workflow's tool list, approvals or budget."""
        return base.model_copy(update={name: getattr(self, name) for name in self.model_fields_set
                                       if getattr(self, name) is not None})

    def resolved(self) -> RunPolicy:
        """The policy with its unset approval fields at their defaults: no approval, an hour's wait."""
        return self.model_copy(update={"require_approval": self.require_approval or [],
                                       "approval_timeout_seconds": self.approval_timeout_seconds
                                       or DEFAULT_APPROVAL_WAIT})

    def needs_approval(self, tool: str) -> bool:
        """Whether a gateway tool (by the gateway's name for it) needs a person's approval before each call."""
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.require_approval or [])

    def is_write(self, tool: str) -> bool:
        """Whether a gateway tool (by the gateway's name for it) writes: the policy's `writes`, else by its verb."""
        if self.writes is not None:
            return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.writes)
        words = {w.lower() for w in _WORDS.findall(tool)}
        verbs = words & WRITE_VERBS
        return bool(verbs) and not (verbs == {"post"} and words & READ_VERBS)

    def allows(self, claude_tool: str) -> bool:
        """Whether the policy lets Claude use a tool (by Claude's name for it) without asking anyone."""
        server, tool = split_tool_name(claude_tool)
        if server == GATEWAY_NAME:
            return (self.tools is None or tool in self.tools) and not self.needs_approval(tool)
        return self.allow_commands and claude_tool in COMMAND_TOOLS

    def claude_tools(self) -> tuple[str, ...]:
        """Claude Code's `--allowedTools`: the gateway's allowed tools, and the command tool if commands are on.
        Tools that need approval or write are left out, so Claude asks the host about each call of them (a write is
        journaled before it is allowed); with every tool allowed and some asked about, none is listed and the host
        allows the others call by call."""
        prefix = f"mcp__{GATEWAY_NAME}"
        if self.tools is None:
            gateway = () if self.require_approval or self.writes != [] else (prefix,)
        else:
            gateway = tuple(f"{prefix}__{t}" for t in self.tools if not self.needs_approval(t) and not self.is_write(t))
        return (*gateway, *(COMMAND_TOOLS if self.allow_commands else ()))

    def summary(self) -> list[str]:
        """The policy in a few lines, for the run's log and artifact."""
        tools = "every tool of the requested servers" if self.tools is None else ", ".join(self.tools) or "none"
        egress = ", ".join(["the model API", "the gateway", *self.egress])
        writes = "those named with a writing verb" if self.writes is None else ", ".join(self.writes) or "none"
        lines = [f"Tools allowed: {tools}", f"Commands: {'allowed' if self.allow_commands else 'not allowed'}",
                 f"Network: {egress} only", f"Writes (journaled, never done twice): {writes}"]
        if self.require_approval:
            lines.append(f"Approval by a person before each call of: {', '.join(self.require_approval)} (waiting "
                         f"{self.approval_timeout_seconds} s at most in all; silence means {self.on_silence})")
        return lines


def tool_list(text: str | None) -> list[str] | None:
    """Tool names written as one comma-separated string (a flag, a setting); None stays None, "" is no tool."""
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def parse_policy(sources: dict[str, str], hint: str, **fields: str | bool | int | None) -> RunPolicy | None:
    """A policy from text, as settings or flags give it (only what they set; None if nothing); a bad value is one
    ConfigError naming its setting or flag (`sources` maps a field to it). List fields come as comma-separated text."""
    lists = {"tools", "egress", "require_approval", "writes"}
    given = {name: tool_list(value) if name in lists else value for name, value in fields.items()}
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
