"""The journal of a run's writes: every call of a tool that writes (the run policy's `writes`), kept outside the
sandbox as it happens, so that nothing the agent did is done twice.

A write is journaled as called before Claude Code is allowed to make it (writes always go through the permission
host, never Claude's allow-list), and its outcome when its result streams back. Saving is awaited before the answer:
if the run dies at any moment after, a later attempt of the same run finds the write, done or perhaps done. Within a
run, a second call of a write with the same arguments as one done or perhaps done is refused. Nothing here knows
Prefect: `save` is given (tasks/agent_runs.py keeps the journal in the run's result storage).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentbox.secrets import redact_value

Save = Callable[[list[dict[str, Any]]], Awaitable[None]]


def fingerprint(tool: str, arguments: dict[str, Any]) -> str:
    """The identity of a call: its tool and its arguments, key order aside."""
    return hashlib.sha256(json.dumps([tool, arguments], sort_keys=True, default=str).encode()).hexdigest()[:32]


class JournalEntry(BaseModel):
    """One write: what was called, when, and how it ended (`called`: not known, the run stopped before its result)."""

    id: str = Field(description="Claude's tool_use id.")
    tool: str = Field(description="The gateway's name for the tool, e.g. create_issue.")
    arguments: dict[str, Any] = Field(description="As called (secrets redacted).")
    fingerprint: str
    state: Literal["called", "ok", "failed"] = "called"
    attempt: int = Field(1, description="Which attempt of the flow run made the call.")
    called_at: datetime
    result: str = Field("", description="The start of the tool's answer (secrets redacted).")

    def summary(self) -> str:
        """The write in one line, for a person: the tool, its arguments and what came of it."""
        shown = json.dumps(self.arguments, sort_keys=True)
        outcome = {"ok": "done", "failed": "failed", "called": "outcome unknown (the run stopped before its result)"}
        return f"{self.tool} {shown[:200]}: {outcome[self.state]}"


class Journal:
    """The writes of one run, across its attempts (`entries` holds the earlier attempts' on creation)."""

    def __init__(self, entries: list[JournalEntry] | None = None, *, save: Save | None = None, attempt: int = 1,
                 secrets: list[str] | None = None) -> None:
        self.entries = list(entries or [])
        self.save, self.attempt, self.secrets = save, attempt, secrets or []
        self._saving = asyncio.Lock()

    def done_or_perhaps(self) -> list[JournalEntry]:
        """The writes that happened, or may have: not those that failed."""
        return [e for e in self.entries if e.state != "failed"]

    def repeats(self, tool: str, arguments: dict[str, Any]) -> JournalEntry | None:
        """The earlier write this call would repeat (same tool and arguments, done or perhaps done), if any."""
        mark = fingerprint(tool, arguments)
        return next((e for e in self.done_or_perhaps() if e.fingerprint == mark), None)

    async def called(self, tool_use_id: str, tool: str, arguments: dict[str, Any]) -> None:
        """Journal a write about to be made, and wait until it is saved (raises what saving raised)."""
        if not any(e.id == tool_use_id for e in self.entries):
            self.entries.append(JournalEntry(
                id=tool_use_id, tool=tool, arguments=redact_value(arguments, self.secrets),
                fingerprint=fingerprint(tool, arguments), attempt=self.attempt, called_at=datetime.now(timezone.utc)))
        await self._save()

    async def finished(self, tool_use_id: str, ok: bool, result: str) -> None:
        """Journal a write's outcome (nothing when the call was not a journaled write)."""
        entry = next((e for e in self.entries if e.id == tool_use_id), None)
        if entry is None or entry.state != "called":
            return
        entry.state, entry.result = ("ok" if ok else "failed"), result[:500]
        await self._save()

    async def _save(self) -> None:
        if self.save is None:
            return
        async with self._saving:  # in order: a later state never overwritten by an earlier one
            await self.save([e.model_dump(mode="json") for e in self.entries])
