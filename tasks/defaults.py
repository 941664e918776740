"""What every task of a session shares, declared once: never cached, retried only when a retry can help.

Each task acts on the world (a sandbox, the agent), so a cached result would be a lie: `NO_CACHE`. Our errors say
whether they are retryable (a 401 or a bad config is not); anything else, an unforeseen failure, is retried. Each task
still declares its own retries and timeout on its decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import State, Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.cache_policies import NO_CACHE
from prefect.states import aget_state_exception

from agentbox.errors import AgentboxError


async def retry_if_retryable(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect awaits an async retry condition: the failure is read without blocking the event loop."""
    try:
        exc = await aget_state_exception(state)
    except Exception:  # noqa: BLE001 - no exception to look at: let Prefect retry
        return True
    return exc.retryable if isinstance(exc, AgentboxError) else True


def session_task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """`@task` with the session's shared defaults; `options` (retries, timeout_seconds, ...) add to them."""
    return task(name=name, cache_policy=NO_CACHE, retry_condition_fn=retry_if_retryable, **options)
