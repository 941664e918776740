"""`python -m flows.reap_sandboxes`: the janitor, run once from the command line.

    python -m flows.reap_sandboxes [--max-age-minutes 120] [--dry-run] [--json]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from flows import cli


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.reap_sandboxes",
                                     description="Kill this app's sandboxes that no live flow run needs any more.")
    parser.add_argument("--max-age-minutes", type=float, default=120)
    parser.add_argument("--dry-run", action="store_true", help="say what would be killed, kill nothing")
    parser.add_argument("--json", action="store_true", help="print only the report as JSON on stdout")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    return parser


def plan(args: argparse.Namespace) -> Callable[[Any], Any]:
    return lambda flow: cli.run_flow(lambda: flow(args.max_age_minutes, args.dry_run), None)


def human_lines(report: Any) -> list[str]:
    verb = "Would reap" if report.dry_run else "Reaped"
    lines = [f"{verb} {v.sandbox_id} ({v.backend}): {v.reason}" for v in report.reaped]
    return [*lines, f"{verb} {len(report.reaped)}, kept {len(report.kept)}."]


command = cli.FlowCommand(parser, plan, human_lines)
