"""`python -m flows.notion_to_github`: the mission's command line.

    python -m flows.notion_to_github --repo OWNER/NAME [--title T] [--body B] [--rehearsal] [--approve] [--json]

It reads its options, checks the whole plan and says who answers approvals before Prefect is imported (about a
second of imports): bad input gets its one-line error at once, and a good run says so within half a second. The
batch's command line shares its options and its checks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from agentbox.missions.notion_to_github import DEFAULT_BODY, DEFAULT_TITLE, MCP, OUTPUT_SCHEMA, POLICY, IssueRequest
from agentbox.plan import SessionPlan, StandIns, plan_session, rehearsal_backend
from agentbox.policy import RunPolicy
from agentbox.sandboxes.registry import AUTO_BACKEND
from agentbox.settings import Settings, configured_flow_timeout, load_settings
from flows import cli


def human_lines(outcome: Any) -> list[str]:
    from flows import report

    return [
        *report.session_lines(outcome.session),
        "",
        f"Issue: {outcome.issue_url}",
        f"Notion databases: {', '.join(outcome.notion_databases) or 'none'}",
        *([report.REHEARSAL_BANNER] if outcome.rehearsal else []),
    ]


def rehearsal_up_front(args: argparse.Namespace, module: str) -> StandIns | None:
    """For a command line's --rehearsal: its backend checked, a private network entered when port 80 needs one, and
    placeholder stand-ins to check the plan with (each run's stage starts inside the flow run); None otherwise."""
    if not args.rehearsal:
        return None
    from agentbox.rehearsal.netns import enter_private_network_if_needed
    from agentbox.rehearsal.stage import rehearsal_stand_ins

    rehearsal_backend(args.backend)
    enter_private_network_if_needed(module, sys.argv[1:], cli.chosen_server().drop_temporary)
    return rehearsal_stand_ins()


def plan_up_front(settings: Settings, args: argparse.Namespace, issue: IssueRequest, stand_ins: StandIns | None,
                  policy: RunPolicy | None, flow_timeout: float | None) -> SessionPlan:
    """A command line's session plan, with every check, before Prefect starts."""
    return plan_session(
        settings, issue.prompt(), MCP, workflow="notion-to-github",
        backend="local" if args.rehearsal else args.backend, stand_ins=stand_ins, policy=policy,
        default_policy=POLICY, flow_timeout_seconds=flow_timeout, output_schema=OUTPUT_SCHEMA,
    )


def mission_parser(prog: str, description: str, **repo: Any) -> argparse.ArgumentParser:
    """The mission's options, shared by its single run and its batch (`repo`: how each takes --repo)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--repo", required=True, **repo)
    parser.add_argument("--title", default=DEFAULT_TITLE)
    parser.add_argument("--body", default=DEFAULT_BODY)
    parser.add_argument("--rehearsal", action="store_true",
                        help="run against local stand-ins; nothing leaves the machine")
    cli.add_policy_arguments(parser)
    cli.add_common_arguments(parser)
    return parser


def parser() -> argparse.ArgumentParser:
    return mission_parser("python -m flows.notion_to_github", __doc__.splitlines()[0],
                          help="GitHub repository as OWNER/NAME")


def plan(args: argparse.Namespace) -> Callable[[Any], Any]:
    issue = cli.build(IssueRequest, repo=args.repo, title=args.title, body=args.body)
    policy = cli.policy_from(args)
    stand_ins = rehearsal_up_front(args, "flows.notion_to_github")
    timeout = configured_flow_timeout()  # what the flow's decorator reads
    approver = cli.approvals_up_front(plan_up_front(load_settings(), args, issue, stand_ins, policy, timeout), args)
    backend = args.backend or AUTO_BACKEND
    return lambda flow: cli.run_flow(lambda: flow(issue, args.rehearsal, backend, policy), timeout, approver)


command = cli.FlowCommand(parser, plan, human_lines)
