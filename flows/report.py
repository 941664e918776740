"""Human-readable summaries of a run: the CLI's lines and the Prefect UI's markdown artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.artifacts import acreate_markdown_artifact

if TYPE_CHECKING:
    from flows.agent_session import SessionResult

REHEARSAL_BANNER = "REHEARSAL: local stand-ins of Anthropic, Notion and GitHub; nothing left this machine."


def session_lines(result: SessionResult) -> list[str]:
    """What the seed prints: sandbox created, gateway URL, Claude connected, the agent's answer."""
    lines = [REHEARSAL_BANNER] if result.rehearsal else []
    lines += [
        f"Sandbox created: {result.sandbox_id} ({result.backend})",
        f"MCP gateway: {result.gateway_url} ({result.tools} tools)",
        "Claude connected to the gateway",
        f"Tool calls: {', '.join(c.tool + ('' if c.ok else ' (failed)') for c in result.run.tool_calls) or 'none'}",
        f"Turns: {result.run.num_turns}, cost: {_cost(result)}, steps: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in result.steps.items()),
        "",
        "Agent answer:",
        result.run.result,
    ]
    return lines


def _cost(result: SessionResult) -> str:
    if result.rehearsal:
        return "nothing (a rehearsal: Claude Code's figure comes from the stand-in's token counts)"
    return f"${result.run.cost_usd:.4f}"


def session_markdown(title: str, result: SessionResult, error: str = "", extra: list[str] = ()) -> str:
    lines = [f"# {title}", ""]
    lines += [f"**{REHEARSAL_BANNER}**", ""] if result.rehearsal else []
    lines += [f"**Outcome:** {'FAILED: ' + error if error else 'succeeded'}", "", *extra]
    lines += [
        f"- Sandbox: `{result.sandbox_id or '-'}` on `{result.backend}`",
        f"- Gateway tools: {result.tools}",
        f"- Turns: {result.run.num_turns}, cost: {_cost(result)}",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in result.steps.items()),
        "",
        "| tool call | outcome |",
        "|---|---|",
        *(f"| `{c.name}` | {'ok' if c.ok else 'failed'} |" for c in result.run.tool_calls),
        "",
        "## Answer",
        "",
        result.run.result or "_none_",
    ]
    return "\n".join(lines)


async def session_artifact(key: str, result: SessionResult, error: str = "", extra: list[str] = ()) -> None:
    title = key.replace("-", " ").capitalize()
    await acreate_markdown_artifact(
        key=key, markdown=session_markdown(title, result, error, extra), description=f"{title} run summary"
    )
