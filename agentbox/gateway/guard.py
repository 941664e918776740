"""The gateway's guard on every tool call: secrets never pass, and every call is written down.

The gateway holds the run's secrets (each server's token, its own bearer token, and the values the sandbox passes in
`GATEWAY_SECRET_VALUES`). A hijacked agent may try to move one out through a tool: a `create_issue` whose body is the
GitHub token, a Notion page holding the model key. So a call whose arguments contain a secret value is refused with
the policy's one message, before it reaches the server, and a secret in a server's answer is replaced by `***`
before the agent sees it. Each call becomes one JSON line in the call log (time, tool, argument names and size,
outcome, duration), never the arguments' values: the run's audit table is built from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastmcp.exceptions import ToolError
from fastmcp.server.middleware import Middleware, MiddlewareContext
from mcp.types import TextContent

from agentbox.policy import BLOCKED
from agentbox.settings import secret_fields

MIN_SECRET_CHARS = 8  # shorter values (a port, "true") would match everywhere and prove nothing


def config_secrets(config: dict[str, Any]) -> list[str]:
    """The values of a gateway config's fields whose names say they are secrets."""
    return [value for _, _, value in secret_fields(config)]


@dataclass
class CallGuard(Middleware):
    """fastmcp middleware: refuse secrets in arguments, redact them in results, log every call."""

    secrets: Iterable[str]
    call_log: Path | None = None
    _values: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self._values = sorted({s for s in self.secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)

    async def on_call_tool(self, context: MiddlewareContext, call_next) -> Any:  # noqa: ANN001 - fastmcp's type
        tool, arguments = context.message.name, context.message.arguments or {}
        started, text = time.monotonic(), json.dumps(arguments, ensure_ascii=False)
        entry = {"tool": tool, "arguments": sorted(arguments), "argument_bytes": len(text.encode())}
        if any(value in text for value in self._values):
            self._write(entry, started, "blocked", "a secret of this run in its arguments")
            raise ToolError(f"{BLOCKED} The arguments of {tool} contain a secret of this run; they were not sent.")
        try:
            result = await call_next(context)
        except Exception as exc:
            self._write(entry, started, "error", type(exc).__name__)
            raise
        redacted = self._redact(result)
        self._write(entry, started, "error" if result.is_error else "ok", "secret redacted" if redacted else "")
        return result

    def _redact(self, result: Any) -> bool:
        """Replace every secret in the result's text (and structured content); whether there was one."""
        found = False
        for block in result.content:
            if isinstance(block, TextContent) and any(v in block.text for v in self._values):
                found, block.text = True, self.redact_text(block.text)
        if result.structured_content is not None:
            dumped = json.dumps(result.structured_content, ensure_ascii=False)
            if any(v in dumped for v in self._values):
                found, result.structured_content = True, json.loads(self.redact_text(dumped))
        return found

    def redact_text(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, "***")
        return text

    def _write(self, entry: dict[str, Any], started: float, outcome: str, detail: str) -> None:
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
