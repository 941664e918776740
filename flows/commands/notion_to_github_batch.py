"""`python -m flows.notion_to_github_batch`: one issue per repository, from one flow run.

    python -m flows.notion_to_github_batch --repo OWNER/A --repo OWNER/B [--title T] [--rehearsal] [--json]

It checks every session's plan before Prefect is imported, with the single run's options and checks. It exits 1 when
any session failed or was cancelled.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from agentbox.missions.notion_to_github import IssueRequest
from agentbox.sandboxes.registry import AUTO_BACKEND
from agentbox.settings import configured_flow_timeout, load_settings
from flows import cli
from flows.commands.notion_to_github import mission_parser, plan_up_front, rehearsal_up_front


def parser() -> argparse.ArgumentParser:
    return mission_parser("python -m flows.notion_to_github_batch", __doc__.splitlines()[0], action="append",
                          help="GitHub repository as OWNER/NAME (repeat)")


def plan(args: argparse.Namespace) -> Callable[[Any], Any]:
    issues = [cli.build(IssueRequest, repo=repo, title=args.title, body=args.body) for repo in args.repo]
    policy = cli.policy_from(args)
    stand_ins = rehearsal_up_front(args, "flows.notion_to_github_batch")
    settings = load_settings()
    timeout = configured_flow_timeout()  # what the flow's decorator reads
    plans = [plan_up_front(settings, args, issue, stand_ins, policy, timeout)
             for issue in issues]  # every check, for every session, before Prefect starts
    approver = cli.approvals_up_front(plans[-1], args)
    backend = args.backend or AUTO_BACKEND

    def start(flow: Any) -> BaseModel:
        async def batch() -> BaseModel:
            state = await flow(issues, args.rehearsal, backend, policy, return_state=True)
            return await state.aresult(raise_on_failure=False)

        result = cli.run_flow(batch, timeout, approver)
        if isinstance(result, BaseException):  # the run itself failed, before or around its sessions
            raise result
        if not isinstance(result, BaseModel):
            raise RuntimeError(str(result))
        return result

    return start


def human_lines(batch: Any) -> list[str]:
    lines = [f"{r.session:>3} {r.repo}: {r.outcome}" + (f" ({r.reason}): {r.message}" if r.reason else "")
             + (f" {r.issue_url}" if r.issue_url else "") for r in batch.sessions]
    return [*lines, f"{batch.completed} completed, {batch.failed} failed, {batch.cancelled} cancelled in "
            f"{batch.wall_seconds:.1f} s."]


command = cli.FlowCommand(parser, plan, human_lines, failed=lambda batch: bool(batch.failed or batch.cancelled))
