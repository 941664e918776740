"""Claude Code's registration against its sandbox's gateway, through the sandbox port: nothing here knows Prefect.

`claude mcp add` registers the gateway for every directory of the sandbox's user, and `claude mcp get` says whether
Claude Code can connect to it; both run as one sandbox command. The token reaches `claude mcp add` through an
environment variable (see agentbox/claude.py), and only `claude mcp get`'s status line, secrets redacted, is kept.
"""

from __future__ import annotations

from agentbox.claude import TOKEN_ENV, mcp_get_command, mcp_get_status, register_command
from agentbox.errors import ClaudeError, one_line
from agentbox.sandboxes import SandboxBackend, SandboxHandle
from agentbox.secrets import redact


async def register_claude_with_gateway(sandboxes: SandboxBackend, handle: SandboxHandle, *, timeout: float,
                                       secrets: list[str]) -> str:
    """Run `claude mcp add --transport http --scope user ...` then `claude mcp get` in the sandbox (`timeout`
    seconds each) and return the status line `claude mcp get` printed once it says Connected.

    A registration already there (a retry whose first `mcp get` failed) is the same gateway, URL and token, so
    `claude mcp get` alone decides then. Raises ClaudeError naming the `claude mcp` command that failed, or the
    status when Claude Code cannot connect; `secrets` (the gateway's token among them) never appear in either."""
    inside_token = await sandboxes.claude_gateway_token(handle)
    got = await sandboxes.run(handle, register_command(handle.internal_gateway_url), envs={TOKEN_ENV: inside_token},
                              timeout=2 * timeout)
    output = got.stderr + got.stdout
    if got.exit_code != 0 and "Status:" not in output:  # one of the two failed before `mcp get` said anything
        if "already exists" not in output:
            failed = "get" if "Added " in got.stdout else "add"  # `mcp add` says "Added HTTP MCP server ..."
            why = redact(one_line(got.stderr or got.stdout, last=True, empty="no output"), secrets)
            raise ClaudeError(
                f"`claude mcp {failed}` failed with exit code {got.exit_code}: {why}.",
                "Check the Claude Code install in the sandbox.",
            )
        got = await sandboxes.run(handle, mcp_get_command(), timeout=timeout)
    connected, status = mcp_get_status(redact(got.stdout + "\n" + got.stderr, secrets))
    if not connected:
        raise ClaudeError(
            f"Claude Code cannot connect to the MCP gateway ({status}).", "Check the gateway log in the sandbox."
        )
    return status
