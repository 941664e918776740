"""Flows the tests run: the real session, against rehearsal stand-ins driven by a script of the test's choosing."""

from __future__ import annotations

from typing import Any

from prefect import flow

from agentbox.claude import ClaudeOptions
from agentbox.rehearsal.model import ModelScript
from agentbox.rehearsal.stage import rehearsal_stage
from flows.agent_session import SessionResult, run_session

NOTION = {"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}}


@flow(name="rehearsed-session")
async def rehearsed_session(script: list[dict], prompt: str = "hello") -> SessionResult:
    """run_session itself, against stand-ins driven by `script`."""
    result, _ = await _session(script, prompt)
    return result


@flow(name="rehearsed-session-with-model-requests")
async def rehearsed_session_with_model_requests(script: list[dict], prompt: str) -> tuple[SessionResult, list[Any]]:
    """The same, also returning every request body the model stand-in received."""
    return await _session(script, prompt)


async def _session(script: list[dict], prompt: str) -> tuple[SessionResult, list[Any]]:
    result = SessionResult(backend="local", rehearsal=True)
    with rehearsal_stage(ModelScript(script)) as stage:
        await run_session(prompt, NOTION, ClaudeOptions(max_turns=3), result, stage.stand_ins)
        return result, stage.model_requests
