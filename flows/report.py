"""How a session is shown: its markdown artifact in the Prefect UI (outcome, steps, tool calls, approvals, the
gateway's calls, the network) and its lines on a terminal."""

from __future__ import annotations

import json
import time

from prefect.artifacts import acreate_markdown_artifact

from agentbox.errors import one_line
from flows.results import SessionResult

REHEARSAL_BANNER = "REHEARSAL: local stand-ins of Anthropic, Notion and GitHub; nothing left this machine."


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


def session_markdown(title: str, result: SessionResult, extra: list[str] = ()) -> str:
    lines = [f"# {title}", ""]
    lines += [f"**{REHEARSAL_BANNER}**", ""] if result.rehearsal else []
    failure = result.failure
    outcome = f"FAILED ({failure.reason}): {failure.message}" if failure else "succeeded"
    lines += [f"**Outcome:** {outcome}", "", *extra]
    lines += [
        f"- Sandbox: `{result.sandbox_id or '-'}` on `{result.backend}`",
        f"- Gateway tools: {result.tools}",
        f"- Turns: {result.run.num_turns}, cost: {result.cost()}",
        *(f"- {line}" for line in result.policy),
        f"- Policy violations: {result.violations}",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in result.steps.items()),
        "",
        "| tool call | outcome |",
        "|---|---|",
        *(f"| `{c.name}` | {'ok' if c.ok else 'failed'} |" for c in result.run.tool_calls),
        "",
        *approvals_table(result),
        *audit_table(result),
        *egress_table(result),
        "## Answer",
        "",
        result.run.result or "_none_",
    ]
    return "\n".join(lines)


def approvals_table(result: SessionResult) -> list[str]:
    """Every call put to a person (or refused by the policy when asked), with its answer, as a markdown table."""
    shown = [d for d in result.run.decisions if d.by != "policy" or not d.allowed]
    if not shown:
        return []
    answers = {"person": "{via}", "silence": "nobody, in time", "error": "nobody could be asked", "policy": "policy"}
    rows = [
        f"| {d.asked_at:%H:%M:%S} | `{d.tool}` | `{cell(json.dumps(d.arguments, ensure_ascii=False))}` "
        f"| {'approved' if d.allowed else 'denied'}{' (edited)' if d.edited else ''} | "
        f"{answers[d.by].format(via=d.via or 'a person')} | {cell(d.answered_by) or '-'} | {d.waited_seconds:.0f} | "
        f"{cell(d.reason) or '-'} |"
        for d in shown
    ]
    header = ["## Approvals", "",
              "| asked (UTC) | tool | arguments | answer | by | answered by | waited (s) | reason |",
              "|---|---|---|---|---|---|---|---|"]
    return [*header, *rows, ""]


def cell(text: str, limit: int = 120) -> str:
    """Text for one cell of a markdown table: one line, short, no column breaks."""
    return one_line(text, limit=limit, empty="").replace("|", "\\|")


def audit_table(result: SessionResult) -> list[str]:
    """The gateway's call log as a markdown table (argument names and sizes only)."""
    if result.audit is None:
        return [f"_The {result.backend} gateway keeps no call log this run can read._", ""]
    rows = [
        f"| {c.time} | `{c.tool}` | {', '.join(c.arguments) or '-'} | {c.argument_bytes} | {c.outcome} | "
        f"{c.detail or '-'} | {c.seconds:.2f} | `{c.tool_use_id or '-'}` |"
        for c in result.audit
    ]
    header = ["## Gateway calls", "", "| time | tool | arguments | bytes | outcome | detail | seconds | tool use |",
              "|---|---|---|---|---|---|---|---|"]
    return [*header, *rows, ""]


def egress_table(result: SessionResult) -> list[str]:
    """The sandbox's connections out of the ordinary (any to a host the policy names, every block and error; not
    the many requests to the model API and the gateway) as a markdown table."""
    if result.egress is None:
        return [f"_The {result.backend} sandbox keeps no egress log this run can read._", ""]
    shown = [e for e in result.egress if e.kind == "egress" or e.decision != "allowed"]
    rows = [
        f"| {time.strftime('%H:%M:%S', time.gmtime(e.time))} | {e.method or '-'} | "
        f"`{e.service or f'{e.host}:{e.port}'}` | {e.decision} | {e.detail or '-'} |"
        for e in shown
    ]
    header = ["## Network", "", f"{len(result.egress) - len(shown)} connection(s) to the model API and the gateway.",
              "", "| time (UTC) | method | to | decision | detail |", "|---|---|---|---|---|"]
    return [*header, *rows, ""]


async def session_artifact(key: str, result: SessionResult, extra: list[str] = (), description: str = ""
                           ) -> None:
    title = key.replace("-", " ").capitalize()
    await acreate_markdown_artifact(key=key, markdown=session_markdown(title, result, extra),
                                    description=description or f"{title} run summary")
