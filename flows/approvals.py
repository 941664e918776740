"""Answer a paused run's approval from any terminal that reaches its Prefect server: what the run's form in the UI
does, with the same checks.

    python -m flows.approvals list [--json]
    python -m flows.approvals show FLOW_RUN_ID [--json]
    python -m flows.approvals approve FLOW_RUN_ID [--call CALL] [--reason R] [--arguments JSON] [--as WHO]
    python -m flows.approvals deny FLOW_RUN_ID --reason R [--call CALL] [--as WHO]

A paused run publishes the call it waits on (its tool, arguments as the form shows them, secrets redacted, and since
and until when). An answer is bound to that call: `--call` names it (the id and hash `show` and the notifications
print), and an answer for a call that is no longer pending is refused here, and again by the run itself if the run
moved on meanwhile. Who answered is recorded (user@host, or `--as`). It runs on the server PREFECT_API_URL names, or
the kept `make server`; never on a temporary server, which would hold no run.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from agentbox.approvals import PendingApproval
from agentbox.errors import ConfigError, one_line
from flows import cli



class Waiting(BaseModel):
    """A run paused for a person, and the call it waits on."""

    flow_run_id: str
    flow_run: str
    deployment: str = ""
    page: str = Field(description="The run's page in the Prefect UI, where its form is.")
    pending: PendingApproval


class Waitlist(BaseModel):
    runs: list[Waiting]


class Answered(BaseModel):
    """An answer given: to which run and call, what, and by whom."""

    flow_run_id: str
    call: str
    tool: str
    decision: str
    reason: str = ""
    answered_by: str
    arguments: dict[str, Any] | None = Field(None, description="The arguments approved, when they were edited.")


def this_user() -> str:
    """user@host of this process: who answers, unless --as says otherwise."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def parse_run_id(text: str) -> UUID:
    try:
        return UUID(text.strip())
    except ValueError:
        raise ConfigError(f"'{text[:80]}' is not a flow run id.",
                          "Pass the id `python -m flows.approvals list` shows (a UUID).") from None


def parse_arguments(text: str | None) -> dict[str, Any] | None:
    """`--arguments` as a JSON object, or None when not given."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arguments is not valid JSON ({exc.msg} at character {exc.pos}).",
                          'Pass the tool\'s arguments as a JSON object, e.g. \'{"title": "New title"}\'.') from None
    if not isinstance(value, dict):
        raise ConfigError("--arguments must be a JSON object (the tool's arguments by name).",
                          'Pass e.g. \'{"title": "New title"}\'.')
    return value


async def waiting(client: Any, flow_run: Any) -> Waiting | None:
    """The run's pending call, if it is paused for one of this project's approvals."""
    from prefect.input.actions import aread_flow_run_input

    from tasks.approvals import PENDING_KEY, run_page

    if flow_run.state is None or not flow_run.state.is_paused():
        return None
    published = await aread_flow_run_input(PENDING_KEY, flow_run_id=flow_run.id)
    if not published:
        return None
    deployment = (await client.read_deployment(flow_run.deployment_id)).name if flow_run.deployment_id else ""
    return Waiting(flow_run_id=str(flow_run.id), flow_run=flow_run.name, deployment=deployment,
                   page=run_page(flow_run.id), pending=PendingApproval.model_validate(published))


async def list_waiting() -> Waitlist:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=paused, limit=200)
        found = [await waiting(client, run) for run in runs]
    return Waitlist(runs=sorted((w for w in found if w), key=lambda w: w.pending.asked_at))


async def pending_of(client: Any, run_id: UUID) -> tuple[Any, Waiting]:
    """Run `run_id` and the call it waits on; one clear ConfigError when it is unknown, not paused, or not ours."""
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run = await client.read_flow_run(run_id)
    except ObjectNotFound:
        raise ConfigError(f"There is no flow run {run_id} on this Prefect server.",
                          "Check the id (`python -m flows.approvals list`) and PREFECT_API_URL.") from None
    if flow_run.state is None or not flow_run.state.is_paused():
        state = flow_run.state.name if flow_run.state else "without a state"
        raise ConfigError(f"Run {run_id} is not waiting for an answer (it is {state}).",
                          "`python -m flows.approvals list` shows the runs that are.")
    found = await waiting(client, flow_run)
    if found is None:
        raise ConfigError(f"Run {run_id} is paused, but not for an approval of this project's.",
                          "Resume it from its page in the Prefect UI.")
    return flow_run, found


async def show(run_id: UUID) -> Waiting:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (await pending_of(client, run_id))[1]


async def answer(run_id: UUID, approve: bool, reason: str, arguments: dict[str, Any] | None, who: str,
                 call: str | None) -> Answered:
    """Resume the run with an answer to its pending call, as its form would: refused in one line when `call` is not
    the one pending, or when the server refuses the answer."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.input.actions import aread_flow_run_input

    async with get_client() as client:
        flow_run, found = await pending_of(client, run_id)
        pending = found.pending
        if call is not None and call.strip() != pending.call:
            raise ConfigError(f"The call {call.strip()[:120]} is no longer pending on run {run_id}: it waits on "
                              f"{pending.call} ({pending.tool}).",
                              f"See it with `python -m flows.approvals show {run_id}`, then answer that one.")
        keyset = flow_run.state.state_details.run_input_keyset or {}
        schema = await aread_flow_run_input(keyset["schema"], flow_run_id=run_id) if keyset.get("schema") else None
        defaults = {name: field.get("default") for name, field in (schema or {}).get("properties", {}).items()
                    if "default" in field}
        run_input = {**defaults, "decision": "approve" if approve else "deny", "reason": reason,
                     "answered_by": who, "call": pending.call}
        if arguments is not None:
            run_input["arguments"] = arguments
        result = await client.resume_flow_run(run_id, run_input=run_input)
    if result.status != SetStateStatus.ACCEPT:
        why = one_line(getattr(result.details, "reason", "") or result.status.value)
        raise ConfigError(f"The Prefect server refused the answer to run {run_id} ({why}).",
                          f"See the run with `python -m flows.approvals show {run_id}`.")
    return Answered(flow_run_id=str(run_id), call=pending.call, tool=pending.tool,
                    decision="approved" if approve else "denied", reason=reason, answered_by=who,
                    arguments=arguments)


def on_the_runs_server(call: Any) -> Any:
    """Run a Prefect call on the server the runs are on (PREFECT_API_URL, or a kept `make server`), after checking
    that it answers; never on a temporary server."""
    from prefect.settings import PREFECT_API_URL

    choice = cli.chosen_server()
    choice.settle()
    api = choice.kept or PREFECT_API_URL.value()
    if not api:
        raise ConfigError("There is no Prefect server to answer on: PREFECT_API_URL is not set and no kept server "
                          "(`make server`) answers.", "Set PREFECT_API_URL to the server the run is on.")
    import httpx

    try:
        httpx.get(f"{api.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(f"Cannot reach the Prefect server at {api} ({one_line(exc)}).",
                          "Check PREFECT_API_URL and that the server runs.") from None
    return cli.on_prefect(call)


def when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def waiting_lines(found: Waiting, detail: bool) -> list[str]:
    p = found.pending
    server = f" on {p.server}" if p.server else ""
    head = (f"{found.flow_run_id}  {found.flow_run}: waits for {p.tool}{server} since {when(p.asked_at)} "
            f"(until {when(p.waits_until)}, then {p.on_silence}); call {p.call}")
    if not detail:
        return [head]
    arguments = json.dumps(p.arguments, indent=2, ensure_ascii=False, sort_keys=True)
    return [head, *([f"Deployment: {found.deployment}"] if found.deployment else []), f"Page: {found.page}",
            f"Arguments:\n{arguments}", "Answer:",
            f"  {p.answer_command(found.flow_run_id)} [--reason R] [--arguments JSON]",
            f"  {p.answer_command(found.flow_run_id, 'deny')} --reason R"]


def human(result: BaseModel) -> list[str]:
    if isinstance(result, Waitlist):
        return [line for w in result.runs for line in waiting_lines(w, False)] or ["No run waits for an answer."]
    if isinstance(result, Waiting):
        return waiting_lines(result, True)
    edited = " with the edited arguments" if getattr(result, "arguments", None) else ""
    return [f"{result.decision.capitalize()} {result.tool}{edited} (call {result.call}) on run {result.flow_run_id} "
            f"as {result.answered_by}; the run goes on."]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.approvals", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the runs waiting for an answer, and what each waits for")
    show_parser = commands.add_parser("show", help="the call a run waits on, and how to answer it")
    show_parser.add_argument("flow_run_id", metavar="FLOW_RUN_ID")
    for name, what in (("approve", "let the call run (with --arguments: as edited)"), ("deny", "refuse the call")):
        sub = commands.add_parser(name, help=what)
        sub.add_argument("flow_run_id", metavar="FLOW_RUN_ID")
        sub.add_argument("--call", default=None, help="the call this answer is for, as `show` prints it "
                         "(default: the one pending now)")
        sub.add_argument("--reason", required=name == "deny", default="", help="why (told to the agent on a deny)")
        sub.add_argument("--as", dest="who", default=None, metavar="WHO", help="who answers (default: user@host)")
        if name == "approve":
            sub.add_argument("--arguments", default=None, metavar="JSON", help="approve the call with these "
                             "arguments instead (a JSON object)")
    for sub in commands.choices.values():
        sub.add_argument("--json", action="store_true", help="print only the result as JSON on stdout")
        sub.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    return parser


def main() -> int:
    args = parser().parse_args()
    os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"  # a temporary server would hold no run to answer

    def start() -> BaseModel:
        if args.command == "list":
            return on_the_runs_server(list_waiting)
        run_id = parse_run_id(args.flow_run_id)
        if args.command == "show":
            return on_the_runs_server(lambda: show(run_id))
        arguments = parse_arguments(getattr(args, "arguments", None))
        who = (args.who or this_user()).strip()[:200]
        return on_the_runs_server(lambda: answer(run_id, args.command == "approve", args.reason, arguments, who,
                                                 args.call))

    return cli.run(start, args, human)


if __name__ == "__main__":
    cli.exit_now(main())
