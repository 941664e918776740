"""Any catalog MCP servers + any prompt: Claude Code in a fresh sandbox, always torn down.

    python -m flows.agent_session --prompt "..." \\
        --mcp '{"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}}'

From Python or the Prefect API: `agent_session(SessionRequest(prompt=..., mcp=...))`, parameters
`{"request": {"prompt": "...", "mcp": {...}}}`. Secrets in the MCP config are `${NAME}` references, resolved inside the
create task, so Prefect stores only names.
"""

# No `from __future__ import annotations`: a runner loads this file by path, and Prefect must resolve the
# parameter models' annotations to validate a deployment run's parameters.

if __name__ == "__main__":  # the command line checks its input and plans before Prefect is imported
    from flows.commands.agent_session import command

    command.prepare()

from prefect import State
from prefect.runtime import flow_run

from agentbox.missions.agent_session import EXAMPLE_MCP, SessionRequest
from agentbox.sandboxes.registry import AUTO_BACKEND, backend_named
from agentbox.settings import load_settings
from flows.planning import BackendChoice, plan_this_run
from flows.results import SessionResult
from flows.session import reported, run_session, session_flow

__all__ = ["EXAMPLE_MCP", "SessionRequest", "agent_session"]  # the request's model and example, with the flow


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
    async with reported("agent-session", result, settings):
        plan = plan_this_run(settings, request.prompt, request.mcp, backend=backend, policy=request.policy,
                             allowed_tools=request.allowed_tools, bypass_permissions=request.bypass_permissions,
                             output_schema=request.output_schema)
        await run_session(plan, result)
    return result


if __name__ == "__main__":
    command.finish(agent_session)
