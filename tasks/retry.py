"""Retry conditions shared by the tasks: retry only what a retry can fix."""

from __future__ import annotations

from agentbox.errors import AgentboxError


def retry_if_retryable(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's callback signature
    """Our errors say whether they are retryable (a 401 or a bad config is not); anything else is retried."""
    try:
        exc = state.result(raise_on_failure=False, _sync=True)  # also called from async tasks
    except Exception:  # noqa: BLE001 - no result to look at: let Prefect retry
        return True
    if isinstance(exc, AgentboxError):
        return exc.retryable
    return True
