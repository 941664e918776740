"""Approval in the Prefect UI: the flow run pauses with a typed form on its page, and a person's answer resumes it.

Prefect's own `pause_flow_run` fails the run when nobody answers in time; a run whose policy says silence approves
(or denies and goes on to fail with that reason) must decide for itself. So this proposes the Paused state itself
(with the form's schema, as `pause_flow_run` does), watches the run every second, and when its own deadline passes
sets the run Running again and reports silence. A run cancelled while it waits raises RunCancelled, so the session
tears its sandbox down as on any failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import pydantic
from prefect import get_run_logger
from prefect.client.orchestration import PrefectClient, get_client
from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run
from prefect.exceptions import Abort, Pause
from prefect.input import RunInput, keyset_from_paused_state
from prefect.input.actions import acreate_flow_run_input, adelete_flow_run_input, aread_flow_run_input
from prefect.settings import PREFECT_UI_URL
from prefect.states import Paused, Running

from agentbox.approvals import Answer, ApprovalRequest, Approver, PendingApproval, terminal_approver
from agentbox.errors import ApprovalDenied, RunCancelled, one_line
from agentbox.notifications import approval_notice
from agentbox.plan import SessionPlan
from tasks.compat import propose_flow_run_state
from tasks.events import APPROVAL_REMINDER, APPROVAL_REQUESTED, emit_run_event

PENDING_KEY = "agentbox-pending-approval"  # the run input that publishes the call a paused run waits on
PAUSE_MARGIN_SECONDS = 60  # the server fails a run resumed past its pause timeout: ours ends first
POLL_SECONDS = 1.0
# A run shows one form at a time: the sessions of a batch that need a person queue for the run's page.
_ONE_FORM_PER_RUN: dict[uuid.UUID, asyncio.Lock] = {}


def approval_form(request: ApprovalRequest) -> type[RunInput]:
    """The form the run's page shows: the decision (a choice), a reason, the arguments (prefilled, editable)."""
    form = pydantic.create_model(
        "ApproveToolCall",
        __base__=RunInput,
        decision=(Literal["approve", "deny"], pydantic.Field(
            title="Decision", description=f"Approve: {request.tool} runs with the arguments below. Deny: it does "
            "not run, the agent is told why, and the run fails naming your reason.")),
        reason=(str, pydantic.Field("", title="Reason", max_length=2000,
                                    description="Why (kept in the run's log and artifact; told to the agent).")),
        arguments=(dict[str, Any], pydantic.Field(
            default=request.arguments, title="Arguments",
            description="What the tool is called with. Edit them to approve a changed call.")),
        answered_by=(str, pydantic.Field("", title="Answered by", max_length=200,
                                         description="Who you are (kept in the run's log and artifact).")),
        call=(str, pydantic.Field(request.call, title="Call", max_length=300,
                                  description="The call this answer is for: leave it as it is.")),
    )
    server = f" of the MCP server `{request.server}`" if request.server else ""
    return form.with_initial_data(description=(
        f"## Approve `{request.tool}`?\n\nThe agent wants to call `{request.tool}`{server} with these arguments:\n\n"
        f"```json\n{request.arguments_json()}\n```\n\nNothing runs until you answer."))


def pause_key(request: ApprovalRequest) -> str:
    """The pause's key, from Claude's id for the call (input keys take only letters, digits and dashes)."""
    return "approval-" + (re.sub(r"[^a-z0-9-]+", "-", request.tool_use_id.lower()) or uuid.uuid4().hex)


def run_page(flow_run_id: uuid.UUID) -> str:
    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else f"flow run {flow_run_id}"


class PrefectUIApprover:
    """Asks on the flow run's page in the Prefect UI (or through the API: `resume_flow_run(id, run_input=...)`)."""

    via = "prefect-ui"

    async def ask(self, request: ApprovalRequest, timeout: float) -> Answer | None:
        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            raise ApprovalDenied("An approval can only be asked inside a flow run.", "Run the session as a flow.")
        flow_run_id = context.flow_run.id
        async with _ONE_FORM_PER_RUN.setdefault(flow_run_id, asyncio.Lock()):
            return await self._ask(request, timeout, flow_run_id)

    async def _ask(self, request: ApprovalRequest, timeout: float, flow_run_id: uuid.UUID) -> Answer | None:
        """Pause for `request` until it gets an answer that names it (one for another call is refused: the run
        pauses again for the time left), silence, or the run's end."""
        deadline = time.monotonic() + timeout
        for attempt in itertools.count():
            answer = await self._pause_and_wait(request, deadline - time.monotonic(), flow_run_id, attempt)
            if answer is None or answer.call in ("", request.call):
                return answer
            get_run_logger().warning("Refused an answer for the call %s: %s waits for an answer to %s.",
                                     answer.call[:300], request.tool, request.call)
            if time.monotonic() >= deadline:
                return None

    async def _pause_and_wait(self, request: ApprovalRequest, timeout: float, flow_run_id: uuid.UUID, attempt: int
                              ) -> Answer | None:
        form = approval_form(request)
        key = pause_key(request) + (f"-{attempt}" if attempt else "")
        paused = Paused(timeout_seconds=int(timeout) + PAUSE_MARGIN_SECONDS, reschedule=False, pause_key=key)
        keyset = keyset_from_paused_state(paused)
        paused.state_details.run_input_keyset = keyset
        logger = get_run_logger()
        async with get_client() as client:
            try:
                state = await propose_flow_run_state(client, paused, flow_run_id)
            except (Abort, Pause) as exc:  # Prefect refused the pause: the run is over or going
                raise RunCancelled(f"The run could not pause for approval ({one_line(exc)}).",
                                   "See the run's state history.") from None
            if not state.is_paused():
                raise ApprovalDenied(f"The run could not pause for approval (it is {state.type.value}).",
                                     "See the run's state history.")
            try:
                await form.asave(keyset, flow_run_id=flow_run_id)
                pending = PendingApproval.of(request, timeout)
                await acreate_flow_run_input(PENDING_KEY, pending.model_dump(mode="json"), flow_run_id=flow_run_id)
                logger.warning("Waiting up to %d s for a person to approve %s: %s (or `%s`)", timeout, request.tool,
                               run_page(flow_run_id), pending.answer_command(flow_run_id))
                announce(pending)

                def remind(left: float) -> None:
                    announce(pending, reminder_left=left)

                return await self._wait(client, form, keyset, flow_run_id, timeout, remind)
            finally:  # however the wait ends (Claude gone, the run's budget or timeout), a paused run goes on
                await asyncio.shield(resume_if_paused(client, flow_run_id))

    async def _wait(self, client: PrefectClient, form: type[RunInput], keyset: dict[str, str],
                    flow_run_id: uuid.UUID, timeout: float, remind: Callable[[float], None]) -> Answer | None:
        """Watch the paused run until a person resumes it (their answer), `timeout` passes (None: silence) or it
        is cancelled (RunCancelled); `remind` is called once, with the seconds left, when half the wait is gone."""
        deadline = time.monotonic() + timeout
        reminded = False
        while True:
            if not reminded and deadline - time.monotonic() <= timeout / 2:
                reminded = True
                remind(deadline - time.monotonic())
            current = (await client.read_flow_run(flow_run_id)).state
            if current is None or current.is_cancelling() or current.is_cancelled():
                raise RunCancelled("The run was cancelled while it waited for approval; its sandbox was torn "
                                   "down.", "Start it again when wanted.")
            if current.is_final():
                raise RunCancelled(f"The run ended ({current.type.value}) while it waited for approval.",
                                   "See the run's state history.")
            if current.is_running():
                return await self._answer(form, keyset, flow_run_id)
            if time.monotonic() >= deadline:  # nobody answered: the run goes on, and silence decides
                with contextlib.suppress(Pause):  # refused, still paused: look again
                    if (await propose_flow_run_state(client, Running(), flow_run_id)).is_running():
                        return await self._answer(form, keyset, flow_run_id)
            await asyncio.sleep(POLL_SECONDS)

    async def _answer(self, form: type[RunInput], keyset: dict[str, str], flow_run_id: uuid.UUID) -> Answer | None:
        """The form's answer once the run is Running again; None if it was resumed without one (silence)."""
        value = await aread_flow_run_input(keyset["response"], flow_run_id=flow_run_id)
        if not value:
            return None
        answer = form(**value)
        return Answer(approve=answer.decision == "approve", reason=answer.reason, arguments=answer.arguments,
                      via=self.via, answered_by=answer.answered_by.strip(), call=answer.call)


def announce(pending: PendingApproval, reminder_left: float | None = None) -> None:
    """Tell whoever the server's automations notify (deployments/notify.py) that the run waits for `pending`, or
    still waits (`reminder_left`: the seconds left); said once per call, and once as its reminder, however often
    this runs."""
    notice = approval_notice(str(flow_run.name), str(deployment.name or ""), flow_run.id, pending, reminder_left)
    event = APPROVAL_REQUESTED if reminder_left is None else APPROVAL_REMINDER
    emit_run_event(event, notice, f"{flow_run.id}/{pending.call}", call=pending.call, tool=pending.tool,
                   command=pending.answer_command(flow_run.id))


async def resume_if_paused(client: PrefectClient, flow_run_id: uuid.UUID) -> None:
    """Set a run that is still Paused Running again (its later tasks would wait for it otherwise), and take its
    pending call down."""
    with contextlib.suppress(Exception):
        await adelete_flow_run_input(PENDING_KEY, flow_run_id=flow_run_id)
    try:
        current = (await client.read_flow_run(flow_run_id)).state
        if current is not None and current.is_paused():
            await propose_flow_run_state(client, Running(), flow_run_id)
    except (Exception, Abort, Pause) as exc:  # noqa: BLE001 - said, never raised over why the wait ended
        get_run_logger().warning("Could not set the run Running again after its approval wait (%s).",
                                 one_line(exc))


def current_approver(plan: SessionPlan) -> Approver | None:
    """Who answers this run's approvals: the terminal its command line offers (`--approve`), else the Prefect UI;
    nobody when the policy needs no approval."""
    if not plan.policy.require_approval:
        return None
    return terminal_approver.get() or PrefectUIApprover()
