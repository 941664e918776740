"""The gateway's guard on every tool call: secrets never pass, and every call is written down.

The gateway holds the run's secrets (each server's token, its own bearer token, and the values the sandbox passes in
`GATEWAY_SECRET_VALUES`). A hijacked agent may try to move one out through a tool: a `create_issue` whose body is the
GitHub token, a Notion page holding the model key. So a call whose arguments contain a secret value, or a credential
of a known format (patterns.py: a token someone pasted where the agent reads), is refused with the policy's one
message, before it reaches the server, and either in a server's answer is replaced by `***` before the agent sees
it. Each call becomes one JSON line in the call log (time, tool, argument names and size, outcome, the rule that
matched, duration), never the arguments' values: the run's audit table is built from it. Given which tools write
(the run policy's `writes`), the guard also refuses a second call of a write with the same arguments as one made,
or under way, in this sandbox's life (the run): a write that failed may be tried again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mcp.shared.exceptions import MCPError

from agentbox.gateway.patterns import CredentialPatterns
from agentbox.gateway.upstream import ConnectionLost
from agentbox.journal import fingerprint
from agentbox.policy import BLOCKED
from agentbox.secrets import BLOCK_MIN_CHARS, SecretMatcher
from agentbox.telemetry.spans import annotate

Forward = Callable[[], Awaitable[dict[str, Any]]]


def refusal(text: str) -> dict[str, Any]:
    """A tools/call result that tells the agent it was refused (an error result, as a failing tool gives)."""
    return {"content": [{"type": "text", "text": text}], "isError": True}


@dataclass
class CallGuard:
    """Refuse secrets in a call's arguments, redact them in its result, log every call."""

    secrets: Iterable[str]
    call_log: Path | None = None
    is_write: Callable[[str], bool] | None = None  # which tools write (None: none is tracked)
    patterns: CredentialPatterns | None = None  # credentials of known formats (None: only the run's own values)
    matcher: SecretMatcher = field(init=False)
    writes: set[str] = field(default_factory=set)  # the fingerprints of the writes made or under way

    def __post_init__(self) -> None:
        self.matcher = SecretMatcher(self.secrets, BLOCK_MIN_CHARS)

    async def call(self, tool: str, arguments: dict[str, Any], forward: Forward) -> dict[str, Any]:
        """The result of `forward()` (the call made upstream), unless the call is refused."""
        started, text = time.monotonic(), json.dumps(arguments, ensure_ascii=False)
        entry = {"tool": tool, "arguments": sorted(arguments), "argument_bytes": len(text.encode())}
        if self.matcher.found_in(text):
            self._write(entry, started, "blocked", "a secret of this run in its arguments")
            return refusal(f"{BLOCKED} The arguments of {tool} contain a secret of this run; they were not sent.")
        if found := self.patterns and self.patterns.find(text):
            rules = ", ".join(sorted({credential.rule for credential in found}))
            self._write(entry, started, "blocked", f"a credential in its arguments ({rules})")
            return refusal(f"{BLOCKED} The arguments of {tool} contain a credential ({rules}); they were not sent.")
        mark = fingerprint(tool, arguments) if self.is_write and self.is_write(tool) else None
        if mark in self.writes:
            self._write(entry, started, "blocked", "a second call of a write with the same arguments")
            return refusal(f"{BLOCKED} This exact call of {tool} was already made in this run; it is not made twice.")
        if mark:
            self.writes.add(mark)
        try:
            result = await forward()
        except Exception as exc:
            if isinstance(exc, MCPError) and not isinstance(exc, ConnectionLost):
                self.writes.discard(mark)  # refused, or never sent: not made (a broken connection: perhaps made)
            self._write(entry, started, "error", type(exc).__name__)
            raise
        if result.get("isError"):
            self.writes.discard(mark)
        redacted = self._redact(result)
        self._write(entry, started, "error" if result.get("isError") else "ok", "; ".join(redacted))
        return result

    def _redact(self, result: dict[str, Any]) -> list[str]:
        """Mask every secret and credential in the result's text (and structured content); what was masked."""
        masked: set[str] = set()

        def clean(text: str) -> str:
            if self.matcher.found_in(text):
                masked.add("secret redacted")
                text = self.matcher.redact(text)
            if self.patterns:
                text, rules = self.patterns.redact(text)
                masked.update(f"credential redacted ({rule})" for rule in rules)
            return text

        for block in result.get("content") or ():
            if block.get("type") == "text":
                block["text"] = clean(block.get("text", ""))
            elif block.get("type") == "resource" and isinstance((block.get("resource") or {}).get("text"), str):
                block["resource"]["text"] = clean(block["resource"]["text"])  # a file's contents, say
        if result.get("structuredContent") is not None:
            dumped = json.dumps(result["structuredContent"], ensure_ascii=False)
            if (cleaned := clean(dumped)) != dumped:
                result["structuredContent"] = json.loads(cleaned)
        return sorted(masked)

    def _write(self, entry: dict[str, Any], started: float, outcome: str, detail: str) -> None:
        annotate({"agentbox.gateway.outcome": outcome, "agentbox.gateway.blocked": outcome == "blocked",
                  "agentbox.gateway.detail": detail, "agentbox.gateway.argument_bytes": entry["argument_bytes"],
                  "agentbox.gateway.argument_names": entry["arguments"]})
        if self.call_log is None:
            return
        line = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            **entry,
            "outcome": outcome,
            "detail": detail,
            "seconds": round(time.monotonic() - started, 3),
        }
        with self.call_log.open("a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
