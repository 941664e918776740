"""Any catalog MCP servers + any prompt: Claude Code in a fresh sandbox, always torn down.

    python -m flows.agent_session --prompt "..." \\
        --mcp '{"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}}'

From Python or the Prefect API: `agent_session(SessionRequest(prompt=..., mcp=...))`, parameters
`{"request": {"prompt": "...", "mcp": {...}}}`. Secrets in the MCP config are `${NAME}` references, resolved inside the
create task, so Prefect stores only names.
"""

# No `from __future__ import annotations`: a runner loads this file by path, and Prefect must resolve the
# parameter models' annotations to validate a deployment run's parameters.

import argparse
from pathlib import Path
from typing import Any

from prefect import State
from prefect.states import Cancelled
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentbox.errors import RunCancelled
from agentbox.gateway.catalog import read_config_argument
from agentbox.plan import MAX_PROMPT_CHARS, output_schema_problem, plan_session
from agentbox.policy import RunPolicy
from agentbox.settings import load_settings
from flows import cli, report
from flows.session import (
    AUTO_BACKEND,
    BackendChoice,
    SessionResult,
    backend_named,
    plan_this_run,
    reported,
    run_session,
    session_flow,
)

EXAMPLE_MCP = {"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}}


class SessionRequest(BaseModel):
    """What to run and with which tools: the form the Prefect UI shows for a run. No secrets: `${NAME}` references."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What Claude Code should do.")
    mcp: dict[str, dict[str, str]] = Field(
        description="MCP servers the gateway serves: catalog key -> its settings, secrets as ${NAME} references "
        "to the worker's environment.",
        examples=[EXAMPLE_MCP],
    )
    policy: RunPolicy | None = Field(
        None, description="What the agent may do, over the POLICY_* settings (default: every tool of the servers, "
        "no commands, no approvals, no budget); fields left None keep the settings'."
    )
    allowed_tools: list[str] | None = Field(
        None, description="Claude Code's own --allowedTools, as is (default: the policy's)."
    )
    bypass_permissions: bool = Field(False, description="Let Claude use every tool without asking.")
    output_schema: dict[str, Any] | None = Field(
        None, description="A JSON Schema the agent's final answer must match (Claude Code's --json-schema); the "
        "result's run.structured_output then holds it, checked. Python callers may pass a pydantic model class.",
        examples=[{"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}],
    )

    @field_validator("output_schema", mode="before")
    @classmethod
    def _schema_of_a_model(cls, value: Any) -> Any:
        """A pydantic model class stands for its JSON Schema."""
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value.model_json_schema()
        return value

    @field_validator("output_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None and (problem := output_schema_problem(schema)):
            raise ValueError(problem)
        return schema


def run_name() -> str:
    """`agent-session notion+githubOfficial`: the run list says which servers each session had."""
    request = flow_run.parameters.get("request")
    mcp = request.mcp if isinstance(request, SessionRequest) else (request or {}).get("mcp") or {}
    return f"agent-session {'+'.join(mcp) or 'no servers'}"


@session_flow("agent-session", run_name)
async def agent_session(request: SessionRequest, backend: BackendChoice = AUTO_BACKEND) -> SessionResult | State:
    """Run a prompt with Claude Code in a sandbox whose gateway serves the requested MCP servers.

    Args:
        request: The prompt, the MCP servers and Claude's permissions.
        backend: Where the sandbox runs. auto: SANDBOX_BACKEND, else e2b when E2B_API_KEY is set, else local (a
            bubblewrap sandbox on the worker).
    """
    settings = load_settings()
    backend = backend_named(backend)
    result = SessionResult(backend=backend or settings.backend)
    try:
        async with reported("agent-session", result, settings):
            plan = plan_this_run(settings, request.prompt, request.mcp, backend=backend, policy=request.policy,
                                 allowed_tools=request.allowed_tools, bypass_permissions=request.bypass_permissions,
                                 output_schema=request.output_schema)
            await run_session(plan, result)
    except RunCancelled as exc:  # cancelled while it waited for a person: the run ends Cancelled, not Failed
        return Cancelled(message=str(exc))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.agent_session", description=__doc__.splitlines()[0])
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
    args = parser.parse_args(argv)

    def start() -> SessionResult:
        prompt = args.prompt if args.prompt is not None else cli.read_text(args.prompt_file, "--prompt-file")
        mcp = read_config_argument(args.mcp, "--mcp")
        schema = read_config_argument(args.output_schema, "--output-schema") if args.output_schema else None
        policy = cli.policy_from(args)
        plan = plan_session(  # every check, before Prefect starts
            load_settings(), prompt, mcp, backend=args.backend, allowed_tools=args.allowed_tools, policy=policy,
            bypass_permissions=args.bypass_permissions, flow_timeout_seconds=agent_session.timeout_seconds,
            output_schema=schema,
        )
        request = cli.build(SessionRequest, prompt=prompt, mcp=mcp, allowed_tools=args.allowed_tools,
                            bypass_permissions=args.bypass_permissions, policy=policy, output_schema=schema)
        approver = cli.approvals_up_front(plan, args)
        return cli.run_flow(lambda: agent_session(request, args.backend or AUTO_BACKEND), agent_session.timeout_seconds,
                            approver)

    return cli.run(start, args, human=report.session_lines)


if __name__ == "__main__":
    cli.exit_now(main())
