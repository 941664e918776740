"""`python -m flows.agent_session`: any catalog MCP servers and any prompt, from the command line.

    python -m flows.agent_session --prompt "..." | --prompt-file FILE --mcp '{...}' | @file [--json]

It reads its options, checks the whole plan and says who answers approvals before Prefect is imported.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentbox.gateway.catalog import read_config_argument
from agentbox.missions.agent_session import SessionRequest
from agentbox.plan import plan_session
from agentbox.sandboxes.registry import AUTO_BACKEND
from agentbox.settings import configured_flow_timeout, load_settings
from flows import cli


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.agent_session",
                                     description="Any catalog MCP servers + any prompt: Claude Code in a fresh "
                                     "sandbox, always torn down.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--prompt-file", type=Path, help="a file holding the prompt (UTF-8 text)")
    parser.add_argument("--mcp", required=True, help="MCP config as JSON or @file; secrets as ${NAME} references")
    parser.add_argument("--allowed-tools", nargs="*", default=None,
                        help="tools Claude may use (default: the gateway's)")
    parser.add_argument("--bypass-permissions", action="store_true", help="let Claude use every tool without asking")
    parser.add_argument("--output-schema", default=None, metavar="SCHEMA",
                        help="a JSON Schema (JSON or @file) the final answer must match; printed as structured output")
    cli.add_policy_arguments(parser)
    cli.add_common_arguments(parser)
    return parser


def plan(args: argparse.Namespace) -> Callable[[Any], Any]:
    prompt = args.prompt if args.prompt is not None else cli.read_text(args.prompt_file, "--prompt-file")
    mcp = read_config_argument(args.mcp, "--mcp")
    schema = read_config_argument(args.output_schema, "--output-schema") if args.output_schema else None
    policy = cli.policy_from(args)
    timeout = configured_flow_timeout()  # what the flow's decorator reads
    plan = plan_session(  # every check, before Prefect starts
        load_settings(), prompt, mcp, backend=args.backend, allowed_tools=args.allowed_tools, policy=policy,
        bypass_permissions=args.bypass_permissions, flow_timeout_seconds=timeout, output_schema=schema,
    )
    request = cli.build(SessionRequest, prompt=prompt, mcp=mcp, allowed_tools=args.allowed_tools,
                        bypass_permissions=args.bypass_permissions, policy=policy, output_schema=schema)
    approver = cli.approvals_up_front(plan, args)
    backend = args.backend or AUTO_BACKEND
    return lambda flow: cli.run_flow(lambda: flow(request, backend), timeout, approver)


def human_lines(result: Any) -> list[str]:
    from flows import report

    return report.session_lines(result)


command = cli.FlowCommand(parser, plan, human_lines)
