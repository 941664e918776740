"""What the flows' command lines share: common options, output, exit codes and one-line errors."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from contextvars import Token
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from agentbox.approvals import Approver, TerminalApprover, terminal_approver
from agentbox.errors import AgentboxError, ConfigError, RunCancelled, RunTimedOut, one_line
from agentbox.plan import SessionPlan
from agentbox.policy import RunPolicy, parse_policy
from agentbox.sandboxes.registry import backend_names
from flows.prefect_server import ServerChoice, server_choice
from tasks.compat import exit_without_teardown

MAX_PROMPT_FILE_BYTES = 1_000_000  # read no further: the plan refuses prompts far shorter than this anyway


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=sorted(backend_names()), default=None,
                        help="sandbox backend (default: SANDBOX_BACKEND)")
    parser.add_argument("--json", action="store_true", help="print only the result as JSON on stdout")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tools", default=None,
                        help="comma-separated gateway tools the agent may call (default: POLICY_TOOLS, else the "
                        "workflow's); empty: none")
    parser.add_argument("--allow-commands", action="store_true", default=None,
                        help="let the agent run shell commands")
    parser.add_argument("--egress", default=None,
                        help="comma-separated hosts (host, host:port, *.domain) the sandbox may reach besides the "
                        "model API and the gateway (default: POLICY_EGRESS, else none)")
    parser.add_argument("--require-approval", default=None, metavar="TOOLS",
                        help="comma-separated gateway tools (names or patterns) a person must approve before each "
                        "call (default: POLICY_REQUIRE_APPROVAL, else the workflow's); empty: none")
    parser.add_argument("--approve", action="store_true",
                        help="ask on this terminal for each call that needs approval")
    parser.add_argument("--approval-timeout", dest="approval_timeout_seconds", type=int, default=None,
                        metavar="SECONDS", help="how long to wait for approvals in all (default: 3600)")
    parser.add_argument("--on-silence", choices=["deny", "approve"], default=None,
                        help="what no answer in time means (default: deny)")
    parser.add_argument("--budget", dest="budget_usd", type=float, default=None, metavar="USD",
                        help="the most the run may spend on the model (default: POLICY_BUDGET_USD, else no cap)")


POLICY_FLAGS = {"tools": "--tools", "allow_commands": "--allow-commands", "egress": "--egress",
                "require_approval": "--require-approval", "approval_timeout_seconds": "--approval-timeout",
                "on_silence": "--on-silence", "budget_usd": "--budget"}


def policy_from(args: argparse.Namespace) -> RunPolicy | None:
    """The run policy the command line asks for: only what its flags set, over the settings' and workflow's."""
    return parse_policy(POLICY_FLAGS, "See --help.", **{name: getattr(args, name) for name in POLICY_FLAGS})


def approvals_up_front(plan: SessionPlan, args: argparse.Namespace) -> Approver | None:
    """Say on stderr, before the run starts, who will answer its approvals; the terminal's approver with --approve.
    A run that needs a person and can reach none (no --approve, no Prefect server with a UI) is refused here, in one
    line, before anything is created."""
    patterns = ", ".join(plan.policy.require_approval)
    if not patterns:
        print("Approvals: none needed (the run policy lets the agent use its tools without asking).", file=sys.stderr)
        return None
    silence = f"silence after {plan.policy.approval_timeout_seconds} s means {plan.policy.on_silence}"
    if args.approve:
        approver = TerminalApprover()
        print(f"Approvals: calls of {patterns} are asked on this terminal ({silence}).", file=sys.stderr)
        return approver
    where = chosen_server().ui()
    if not where:
        raise ConfigError(
            f"Calls of {patterns} need a person's approval, and this run has nobody to ask (no terminal, no "
            "Prefect server).",
            "Pass --approve to answer here, set PREFECT_API_URL to a Prefect server to answer in its UI, or "
            "--require-approval '' to let the agent call them unasked.",
        )
    print(f"Approvals: calls of {patterns} wait for a person on the run's page at {where} ({silence}).",
          file=sys.stderr)
    return None


def read_text(path: Path, option: str) -> str:
    """A text file named on the command line, as UTF-8; anything else is one ConfigError naming the option."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PROMPT_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"Cannot read {option} {path} ({exc.strerror}).", f"Fix the {option} path.") from None
    if len(data) > MAX_PROMPT_FILE_BYTES:
        raise ConfigError(f"{option} {path} is over {MAX_PROMPT_FILE_BYTES:,} bytes.", "Pass a shorter text file.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{option} {path} is not UTF-8 text (byte {exc.start} is not valid UTF-8).", "Pass a UTF-8 text file."
        ) from None


def build(model: type[BaseModel], **values: object) -> BaseModel:
    """A flow's parameter model from command-line values; a bad value is one ConfigError naming its option."""
    try:
        return model(**values)
    except ValidationError as exc:
        for error in exc.errors():  # a validator's own ConfigError says it best
            if isinstance(cause := (error.get("ctx") or {}).get("error"), ConfigError):
                raise cause from None
        problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Invalid option ({problems}).", "See --help.") from None


def run_flow(flow_call: Callable[[], Coroutine[Any, Any, BaseModel]], timeout_seconds: float | None,
             approver: Approver | None = None) -> BaseModel:
    """Run a flow from the command line. On a temporary server (see prefect_server), which nobody bootstrapped, the
    run gets the sandbox limit here (a real server gets it from deployments.bootstrap).
    Prefect's timeouts become our own errors here, at the boundary, saying which timeout it was. `approver`, when
    given, answers the run's approvals instead of the Prefect UI (the terminal's, with --approve)."""
    from prefect.exceptions import CancelledRun
    from prefect.flow_engine import FlowRunTimeoutError
    from prefect.settings import PREFECT_API_URL
    from prefect.task_engine import TaskRunTimeoutError

    from agentbox.settings import load_settings
    from tasks.sandbox import ensure_sandbox_limit

    async def main() -> BaseModel:
        if approver is not None:
            terminal_approver.set(approver)
        if choice.temporary or not PREFECT_API_URL.value():
            await ensure_sandbox_limit(load_settings())
        try:
            return await flow_call()
        except CancelledRun as exc:  # from the Prefect UI or API, while it waited for a person, say
            raise RunCancelled(one_line(exc, empty="The run was cancelled."), "") from None
        except FlowRunTimeoutError:
            raise RunTimedOut.after(timeout_seconds or 0) from None
        except TaskRunTimeoutError as exc:
            raise RunTimedOut(
                f"A step of the run passed its own timeout ({one_line(exc)}); the sandbox was torn down.",
                "Retry; if it persists, the run's logs say which service was slow.",
            ) from None

    choice = chosen_server()
    with choice.entered():
        return asyncio.run(main())


def exit_now(code: int) -> NoReturn:
    """End a command line once its work is done and written: what Python's exit does, in its order (Prefect drains
    its logs and events; a temporary server stops), without the interpreter's teardown, about half a second after a
    flow run that serves nothing once the process ends (see tasks/compat.py)."""
    exit_without_teardown(code)


def on_prefect(call: Callable[[], Coroutine[Any, Any, BaseModel]]) -> BaseModel:
    """Run a command's Prefect calls (not a session flow) on the run's chosen server."""
    with chosen_server().entered():
        return asyncio.run(call())


def describe_failure(exc: BaseException) -> str:
    """One line saying what failed and what to do."""
    if isinstance(exc, AgentboxError):
        return str(exc)
    return f"Unexpected failure: {type(exc).__name__}: {one_line(exc)}. Run again with --debug for the traceback."


class _WithoutTraceback(logging.Formatter):
    """Wraps a console formatter so log lines keep their text but lose tracebacks (the API log keeps them)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def hide_tracebacks_on_console() -> None:
    named = logging.Logger.manager.loggerDict.values()
    loggers = [logging.getLogger(), *(v for v in named if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler.formatter, _WithoutTraceback):
                handler.setFormatter(_WithoutTraceback(handler.formatter or logging.Formatter()))


def chosen_server() -> ServerChoice:
    """The run's server choice (`run` makes it; a flow run from Python, without `run`, gets one here)."""
    choice = server_choice.get()
    if choice is None:
        choice = ServerChoice()
        server_choice.set(choice)
    return choice


def failure_code(exc: BaseException, args: argparse.Namespace) -> int:
    """Say a failure in one line on stderr (its traceback first with --debug); the exit code it means."""
    if isinstance(exc, KeyboardInterrupt):
        print("error: interrupted; the sandbox was torn down.", file=sys.stderr)
        return 130
    if args.debug:
        traceback.print_exception(exc)
    print(f"error: {describe_failure(exc)}", file=sys.stderr)
    return exc.exit_code if isinstance(exc, AgentboxError) else 1


def print_result(result: BaseModel, args: argparse.Namespace, human: Callable[[Any], list[str]]) -> None:
    print(result.model_dump_json(indent=2) if args.json else "\n".join(human(result)))


def choose_server() -> Token:
    """A command line's first step: Prefect's analytics off unless asked for, and its server chosen (a temporary
    one starts now, alongside the imports)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return server_choice.set(ServerChoice())


def run(start: Callable[[], BaseModel], args: argparse.Namespace, human: Callable[[Any], list[str]]) -> int:
    """Run a command's work (not a flow's: see FlowCommand): result on stdout, one line on stderr when it fails."""
    if not args.debug:
        hide_tracebacks_on_console()
    token = choose_server()
    try:
        result = start()
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line
        return failure_code(exc, args)
    finally:
        server_choice.reset(token)
    print_result(result, args, human)
    return 0


class FlowCommand:
    """A flow's command line (`python -m flows.<flow>`), in two halves around the flow module's own imports.

    `prepare()` runs first thing in the flow's module, before Prefect is imported: it reads the options, chooses the
    Prefect server (a temporary one starts now, alongside the imports), and has `plan` check the input and the whole
    plan and say who answers approvals, so bad input gets its one line at once. `plan` returns how to start the run
    given the flow. `finish(flow)`, at the end of the module, runs it and prints the result (`--json`: the model) or
    one line; both halves end the process with its exit code (1 also when `failed` says the result is a failure)."""

    def __init__(self, parser: Callable[[], argparse.ArgumentParser],
                 plan: Callable[[argparse.Namespace], Callable[[Any], BaseModel]],
                 human: Callable[[Any], list[str]], failed: Callable[[Any], bool] = lambda result: False) -> None:
        self.parser, self.plan, self.human, self.failed = parser, plan, human, failed

    def prepare(self) -> None:
        self.args = self.parser().parse_args()
        choose_server()
        try:
            self.start = self.plan(self.args)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line
            exit_now(failure_code(exc, self.args))

    def finish(self, flow: Any) -> NoReturn:
        if not self.args.debug:
            hide_tracebacks_on_console()
        try:
            result = self.start(flow)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line
            exit_now(failure_code(exc, self.args))
        print_result(result, self.args, self.human)
        exit_now(1 if self.failed(result) else 0)
