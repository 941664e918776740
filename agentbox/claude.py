"""Claude Code inside the sandbox: command lines, the stream-json event parser, and its control protocol.

Command lines are built with `shlex.quote` and never contain a secret or the prompt: the gateway token reaches
`claude mcp add` through an environment variable expanded by the sandbox's shell, and the prompt travels on stdin.
Claude runs in its bidirectional stream-json mode (as the Agent SDK drives it): the prompt is the first JSON line on
its stdin, and every tool call not allowed in advance arrives on stdout as a `can_use_tool` control request that the
host answers on stdin (allow, possibly with edited input, or deny). The parser turns the output, in chunks split
anywhere, into typed events, and `AgentRun` sums them up.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

GATEWAY_NAME = "gateway"
MODEL_KEY_ENV = "ANTHROPIC_API_KEY"  # how Claude Code finds the model key, and where
MODEL_URL_ENV = "ANTHROPIC_BASE_URL"
TOKEN_ENV = "AGENTBOX_GATEWAY_TOKEN"
STRUCTURED_OUTPUT_TOOL = "StructuredOutput"  # how Claude hands over its answer when a JSON schema is asked for
MAX_OUTPUT_KEPT = 65_536


def mcp_add_command(url: str, name: str = GATEWAY_NAME) -> str:
    """Register the gateway for every directory (`--scope user`); the token comes from $AGENTBOX_GATEWAY_TOKEN."""
    return (
        f"claude mcp add --transport http --scope user {shlex.quote(name)} {shlex.quote(url)} "
        f'--header "Authorization: Bearer ${TOKEN_ENV}"'
    )


def mcp_get_command(name: str = GATEWAY_NAME) -> str:
    return f"claude mcp get {shlex.quote(name)}"


def register_command(url: str, name: str = GATEWAY_NAME) -> str:
    """Add, then check: one sandbox command where two would cost a round trip each. `claude mcp get` runs only once
    the add succeeded, so a failed add leaves its own exit code and output."""
    return f"{mcp_add_command(url, name)} && {mcp_get_command(name)}"


def mcp_get_status(output: str) -> tuple[bool, str]:
    """(connected, reason) from `claude mcp get` text; its exit code is 0 either way. The text holds the token:
    only the status line is ever returned."""
    for line in output.splitlines():
        if "Status:" in line:
            status = line.split("Status:", 1)[1].strip()
            return "Connected" in status and "Failed" not in status, _redact_bearer(status)
    return False, "no status line in `claude mcp get` output"


def _redact_bearer(text: str) -> str:
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


class ClaudeOptions(BaseModel, frozen=True):
    """How Claude runs. Default permissions: only the gateway's tools, nothing else, no bypass; anything else it
    wants to use is asked of the host, which answers by the run policy."""

    max_turns: int = 12
    model: str | None = None
    allowed_tools: tuple[str, ...] = (f"mcp__{GATEWAY_NAME}",)
    bypass_permissions: bool = False
    append_system_prompt: str | None = None
    max_budget_usd: float | None = None
    json_schema: dict[str, Any] | None = None


def prompt_command(options: ClaudeOptions) -> str:
    """Claude Code in bidirectional stream-json mode: the prompt and the host's answers to its permission requests
    arrive on stdin, events leave on stdout. Without bypass it asks the host (`--permission-prompt-tool stdio`)
    about every tool not in `--allowedTools`."""
    args = ["claude", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
            "--max-turns", str(options.max_turns)]
    if options.model:
        args += ["--model", options.model]
    if options.allowed_tools:
        args += ["--allowedTools", ",".join(options.allowed_tools)]
    if options.bypass_permissions:
        args += ["--dangerously-skip-permissions"]
    else:
        args += ["--permission-prompt-tool", "stdio"]
    if options.max_budget_usd is not None:
        args += ["--max-budget-usd", f"{options.max_budget_usd:g}"]
    if options.json_schema is not None:
        args += ["--json-schema", json.dumps(options.json_schema, separators=(",", ":"))]
    if options.append_system_prompt:
        args += ["--append-system-prompt", options.append_system_prompt]
    return " ".join(shlex.quote(a) for a in args)


def user_message(prompt: str) -> str:
    """The prompt as the first line on Claude's stdin."""
    message = {"type": "user", "message": {"role": "user", "content": prompt}, "parent_tool_use_id": None,
               "session_id": "default"}
    return json.dumps(message, ensure_ascii=False) + "\n"


def permission_response(request_id: str, allow: bool, *, message: str = "", updated_input: dict | None = None) -> str:
    """The host's answer to a `can_use_tool` request, as a line for Claude's stdin."""
    answer: dict[str, Any] = {"behavior": "allow", "updatedInput": updated_input or {}} if allow else {
        "behavior": "deny", "message": message, "interrupt": False}
    response = {"subtype": "success", "request_id": request_id, "response": answer}
    return json.dumps({"type": "control_response", "response": response}, ensure_ascii=False) + "\n"


# -- events -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitEvent:
    session_id: str
    model: str
    tools: list[str]
    mcp_servers: dict[str, str]


@dataclass(frozen=True)
class TextEvent:
    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class ToolResultEvent:
    tool_use_id: str
    is_error: bool
    content: str


@dataclass(frozen=True)
class ResultEvent:
    subtype: str
    is_error: bool
    result: str
    num_turns: int
    total_cost_usd: float
    duration_ms: int
    permission_denials: list[dict[str, Any]]
    session_id: str
    structured_output: Any = None
    api_error_status: int | None = None  # the model API's HTTP status when it failed the run


@dataclass(frozen=True)
class PermissionRequest:
    """Claude asks the host whether a tool call may run (`can_use_tool`); it waits for the answer."""

    request_id: str
    tool_name: str
    input: dict[str, Any]
    tool_use_id: str


@dataclass(frozen=True)
class UsageEvent:
    """The token usage of one model call as Claude reports it when the call's first block arrives."""

    message_id: str
    model: str
    usage: dict[str, Any]


Event = InitEvent | TextEvent | ToolCallEvent | ToolResultEvent | ResultEvent | PermissionRequest | UsageEvent


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def events_from_message(message: dict[str, Any]) -> list[Event]:
    """The typed events of one stream-json line (unknown kinds give none)."""
    kind = message.get("type")
    if kind == "system" and message.get("subtype") == "init":
        servers = {s.get("name", "?"): s.get("status", "?") for s in message.get("mcp_servers") or []}
        return [
            InitEvent(
                message.get("session_id", ""), message.get("model", ""), list(message.get("tools") or []), servers
            )
        ]
    if kind == "control_request":
        request = message.get("request") or {}
        if request.get("subtype") != "can_use_tool":
            return []
        return [PermissionRequest(str(message.get("request_id", "")), str(request.get("tool_name", "")),
                                  request.get("input") or {}, str(request.get("tool_use_id", "")))]
    if kind in ("assistant", "user"):
        events: list[Event] = []
        body = message.get("message") or {}
        if kind == "assistant" and isinstance(body.get("usage"), dict):
            events.append(UsageEvent(str(body.get("id", "")), str(body.get("model", "")), body["usage"]))
        content = body.get("content") or []
        for block in content if isinstance(content, list) else []:
            btype = block.get("type")
            if btype == "text" and kind == "assistant" and block.get("text"):
                events.append(TextEvent(block["text"]))
            elif btype == "tool_use":
                events.append(ToolCallEvent(block.get("id", ""), block.get("name", ""), block.get("input") or {}))
            elif btype == "tool_result":
                events.append(
                    ToolResultEvent(
                        block.get("tool_use_id", ""), bool(block.get("is_error")), _content_text(block.get("content"))
                    )
                )
        return events
    if kind == "result":
        return [
            ResultEvent(
                subtype=message.get("subtype", ""),
                is_error=bool(message.get("is_error")),
                result=message.get("result") or "",
                num_turns=int(message.get("num_turns") or 0),
                total_cost_usd=float(message.get("total_cost_usd") or 0.0),
                duration_ms=int(message.get("duration_ms") or 0),
                permission_denials=list(message.get("permission_denials") or []),
                session_id=message.get("session_id", ""),
                structured_output=message.get("structured_output"),
                api_error_status=message.get("api_error_status") or None,
            )
        ]
    return []


@dataclass
class StreamParser:
    """Feeds on output chunks split anywhere (even inside a UTF-8 character: feed str, decoded upstream) and yields
    events line by line. Lines that are not JSON (a warning on stdout, say) are kept in `noise`."""

    _buffer: str = ""
    noise: list[str] = field(default_factory=list)

    def feed(self, chunk: str) -> list[Event]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split("\n")
        return [e for line in lines for e in self._parse(line)]

    def close(self) -> list[Event]:
        line, self._buffer = self._buffer, ""
        return self._parse(line)

    def _parse(self, line: str) -> list[Event]:
        line = line.strip()
        if not line:
            return []
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            self.noise.append(line[:500])
            return []
        return events_from_message(message) if isinstance(message, dict) else []


# -- the run, summed up ------------------------------------------------------------------------------------------


class ToolCall(BaseModel):
    """One tool call the agent made, with its outcome (output cut to a few KB)."""

    id: str
    name: str
    server: str
    tool: str
    input: dict[str, Any]
    ok: bool | None = None  # None: no result seen
    output: str = ""


class PermissionDecision(BaseModel):
    """One answer the host gave Claude on whether a tool call may run: what was asked, when, by whom decided."""

    tool: str = Field(description="The tool as Claude names it, e.g. mcp__gateway__create_issue.")
    tool_use_id: str = ""
    arguments: dict[str, Any] = Field(default_factory=dict, description="As asked (secrets redacted).")
    asked_at: datetime
    answered_at: datetime
    allowed: bool
    by: Literal["policy", "person", "silence", "error"] = Field(
        description="policy: the run policy decided; person: someone answered; silence: nobody did in time; "
        "error: asking failed (denied).")
    via: str = Field("", description="Where the person answered: terminal, prefect-ui.")
    answered_by: str = Field("", description="Who answered, as they said (the form's field, user@host, --as).")
    reason: str = ""
    edited: bool = Field(False, description="The person approved with changed arguments.")

    @property
    def waited_seconds(self) -> float:
        return (self.answered_at - self.asked_at).total_seconds()


class AgentRun(BaseModel):
    """What a Claude Code run did: its answer, tool calls, permission decisions, cost and why it may have failed."""

    result: str = ""
    subtype: str = ""
    is_error: bool = False
    api_error_status: int | None = Field(None, description="The model API's HTTP status, when it failed the run.")
    num_turns: int = 0
    cost_usd: float = 0.0
    duration_ms: int = 0
    session_id: str = ""
    model: str = ""
    mcp_servers: dict[str, str] = {}
    tool_calls: list[ToolCall] = []
    permission_denials: list[str] = Field(
        default_factory=list, description="Tools denied by the run policy (not those a person was asked about).")
    decisions: list[PermissionDecision] = Field(default_factory=list, description="Every permission answer given.")
    structured_output: Any = None
    estimated_cost_usd: float = Field(0.0, description="The host's running estimate from token usage.")
    tokens: dict[str, int] = Field(default_factory=dict, description="Model tokens used, by kind (input, output, "
                                   "cache_read, cache_creation).")
    stopped: str = Field("", description="Why the host stopped Claude before it finished (budget), if it did.")
    stderr: str = Field("", description="The last line Claude wrote on stderr (secrets redacted).")
    exit_code: int | None = None
    finished: bool = False

    @property
    def spent_usd(self) -> float:
        """What the run cost: Claude Code's figure when it finished, else the host's estimate."""
        return self.cost_usd if self.finished else self.estimated_cost_usd

    def apply(self, event: Event) -> None:
        if isinstance(event, InitEvent):
            self.session_id, self.model, self.mcp_servers = event.session_id, event.model, dict(event.mcp_servers)
        elif isinstance(event, ToolCallEvent):
            server, tool = split_tool_name(event.name)
            self.tool_calls.append(ToolCall(id=event.id, name=event.name, server=server, tool=tool, input=event.input))
        elif isinstance(event, ToolResultEvent):
            for call in self.tool_calls:
                if call.id == event.tool_use_id:
                    call.ok, call.output = not event.is_error, event.content[:MAX_OUTPUT_KEPT]
        elif isinstance(event, ResultEvent):
            self.finished = True
            self.result, self.subtype, self.is_error = event.result, event.subtype, event.is_error
            self.api_error_status = event.api_error_status
            self.num_turns, self.cost_usd, self.duration_ms = event.num_turns, event.total_cost_usd, event.duration_ms
            asked = {d.tool_use_id for d in self.decisions if d.by != "policy"}
            self.permission_denials = [d.get("tool_name", "?") for d in event.permission_denials
                                       if not d.get("tool_use_id") or d.get("tool_use_id") not in asked]
            self.structured_output = event.structured_output

    def refused_by_people(self) -> list[PermissionDecision]:
        """Calls that needed a person and were not approved (denied, or nobody answered where silence denies)."""
        return [d for d in self.decisions if d.by != "policy" and not d.allowed]

    def successful_calls(self, tool: str) -> list[ToolCall]:
        return [c for c in self.tool_calls if c.tool == tool and c.ok]


def split_tool_name(name: str) -> tuple[str, str]:
    """`mcp__gateway__create_issue` -> ("gateway", "create_issue"); built-in tools have no server."""
    if name.startswith("mcp__"):
        server, _, tool = name[5:].partition("__")
        return server, tool
    return "", name


def describe(event: Event) -> str | None:
    """A readable log line for an event (None for events not worth a line)."""
    if isinstance(event, InitEvent):
        servers = ", ".join(f"{k}: {v}" for k, v in event.mcp_servers.items()) or "none"
        return f"Claude started (model {event.model or '?'}; MCP servers: {servers})"
    if isinstance(event, ToolCallEvent):
        return f"tool call {event.name} {_short(json.dumps(event.input, ensure_ascii=False))}"
    if isinstance(event, ToolResultEvent):
        return f"tool result {'ERROR ' if event.is_error else ''}{_short(event.content)}"
    if isinstance(event, TextEvent):
        return f"Claude: {_short(event.text, 500)}"
    if isinstance(event, PermissionRequest):
        return f"Claude asks to use {event.tool_name} {_short(json.dumps(event.input, ensure_ascii=False))}"
    if isinstance(event, ResultEvent):
        denied = sorted({d.get("tool_name", "?") for d in event.permission_denials})
        return (
            f"Claude finished: {event.subtype}, {event.num_turns} turns, ${event.total_cost_usd:.4f}"
            + (f"; DENIED tools: {', '.join(denied)}" if denied else "")
        )
    return None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
