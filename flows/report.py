"""What the command lines print for a session: the seed's lines, readable on a terminal."""

from __future__ import annotations

import json

from flows.session import REHEARSAL_BANNER, SessionResult


def session_lines(result: SessionResult) -> list[str]:
    """Sandbox created, gateway URL, Claude connected, the tool calls, the agent's answer."""
    lines = [REHEARSAL_BANNER] if result.rehearsal else []
    lines += [
        f"Sandbox created: {result.sandbox_id} ({result.backend})",
        f"MCP gateway: {result.gateway_url} ({result.tools} tools)",
        "Claude connected to the gateway",
        f"Tool calls: {', '.join(c.tool + ('' if c.ok else ' (failed)') for c in result.run.tool_calls) or 'none'}",
        f"Turns: {result.run.num_turns}, cost: {result.cost()}, steps: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in result.steps.items()),
        "",
    ]
    if result.run.structured_output is not None:  # Claude Code's result is then that JSON, on one line
        lines += ["Agent answer (structured):", json.dumps(result.run.structured_output, indent=2, ensure_ascii=False)]
    else:
        lines += ["Agent answer:", result.run.result]
    return lines
