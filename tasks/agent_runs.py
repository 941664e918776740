"""Nothing done twice: a session whose agent run completed is recorded, so a retry of its flow run reuses it; and
the journal of the agent's writes (agentbox/journal.py) is kept next to it, so a retry after a run that stopped
half-way knows what was done.

Prefect retries a failed flow run (a deployment's `retries`) by running the flow again from the start. Without a
record, a session that failed after its agent had opened the issue (while its sandbox was torn down, or in a check
after the run) would run the agent again and open a second one. The record is the session's result (what the agent
did, its audit, no secret) as JSON in the run's result storage, keyed by the flow run and the session (Prefect's
result store itself was not reliable here: its `aexists` said no to a record it had just written); later attempts of
the same flow run find it, and when the agent did anything through the gateway they skip the sandbox and the agent and
judge the recorded run again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

from prefect import get_run_logger
from prefect.results import aget_default_result_storage, get_result_store
from prefect.runtime import flow_run

from agentbox.errors import one_line
from agentbox.journal import Journal, JournalEntry
from agentbox.plan import SessionPlan
from agentbox.sandboxes.base import SESSION_LABEL_KEY


def record_key(plan: SessionPlan, kind: str = "agent-run") -> str | None:
    """The key of a record of `kind` (agent-run, journal): this flow run and this session of it (None outside a
    flow run)."""
    if not flow_run.id:
        return None
    session = plan.metadata.get(SESSION_LABEL_KEY, "")
    return f"agentbox-{kind}-" + hashlib.sha256(f"{flow_run.id}/{session}".encode()).hexdigest()[:40]


async def load_journal(plan: SessionPlan, secrets: list[str] | None = None) -> Journal:
    """The session's journal of writes (agentbox/journal.py), with the entries of this flow run's earlier attempts,
    saved to the run's result storage at each change. A journal that cannot be read for another reason than its
    absence fails the session: better than doing a write twice."""
    key = record_key(plan, "journal")
    entries: list[JournalEntry] = []
    if key is not None:
        try:
            content = await storage_call("read_path", key)
        except (ValueError, OSError):  # none yet (the file systems say it with one or the other)
            content = b"[]"
        entries = [JournalEntry.model_validate(e) for e in json.loads(content)]

    async def save(records: list[dict[str, Any]]) -> None:
        await storage_call("write_path", key, json.dumps(records).encode())

    return Journal(entries, save=save if key else None, attempt=flow_run.run_count or 1, secrets=secrets)


async def record_agent_run(plan: SessionPlan, session: dict[str, Any]) -> None:
    """Keep the session's result (as JSON) once its agent run completed. A failure to keep it is logged: the run
    itself went well, and only a retry would miss the record."""
    if (key := record_key(plan)) is None:
        return
    try:
        await storage_call("write_path", key, json.dumps(session).encode())
    except Exception as exc:  # noqa: BLE001 - said, never raised over the session's outcome
        get_run_logger().warning("Could not record the completed agent run (%s); a retry would run it again.",
                                 one_line(exc))


async def completed_agent_run(plan: SessionPlan) -> dict[str, Any] | None:
    """The session's result recorded by an earlier attempt of this flow run, if its agent run completed (looked up
    on every attempt: the run count Prefect's context shows is not always the attempt's). A record that cannot be
    read for another reason than its absence fails the session: better than doing its work twice."""
    if (key := record_key(plan)) is None:
        return None
    try:
        content = await storage_call("read_path", key)
    except (ValueError, OSError):  # no such record (the file systems say it with one or the other)
        return None
    return json.loads(content)


async def storage_call(name: str, *args: Any) -> Any:
    """A method of the run's result storage (the local file system unless PREFECT_DEFAULT_RESULT_STORAGE_BLOCK names
    a shared one), awaited whichever way the block offers it."""
    store = get_result_store()
    storage = store.result_storage or await aget_default_result_storage()
    method = getattr(storage, f"a{name}", None) or getattr(storage, name)
    result = method(*args)
    return await result if inspect.isawaitable(result) else result
