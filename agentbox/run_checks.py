"""The checks of a finished Claude Code run: pure functions of what it did (`AgentRun`) and its plan.

A run is judged after it is recorded (its artifact, its spend), so these raise rather than stop anything: the first
thing that went wrong, as one of our errors, in the order a user should hear it (spend, refused approvals, Claude's
own failures, missing or denied tools, the typed answer).
"""

from __future__ import annotations

import jsonschema

from agentbox.claude import GATEWAY_NAME, STRUCTURED_OUTPUT_TOOL, AgentRun, split_tool_name
from agentbox.errors import ApprovalDenied, BudgetExceeded, ClaudeError, ModelApiError, one_line
from agentbox.plan import SessionPlan


def check_run(run: AgentRun, plan: SessionPlan) -> None:
    """Raise what went wrong with a recorded run, if anything did: spend, refused approvals, Claude's own errors,
    missing tools, denied tools, no valid structured output."""
    options, budget = plan.claude, plan.policy.budget_usd
    if run.stopped == "budget" or run.subtype == "error_max_budget_usd":
        raise BudgetExceeded(
            f"The run spent ${run.spent_usd:.4f} of its ${budget or 0:g} budget and was stopped.",
            "Raise the policy's budget_usd (--budget, POLICY_BUDGET_USD) or simplify the prompt.",
        )
    if refused := run.refused_by_people():
        first = refused[0]
        _, tool = split_tool_name(first.tool)
        who = first.answered_by or "a person"
        why = {"person": f"{who} denied it on the {first.via or 'UI'}", "silence": "nobody answered in time",
               "error": "nobody could be asked"}[first.by]
        raise ApprovalDenied(
            f"{tool} was not approved: {why}{' (' + first.reason + ')' if first.reason else ''}.",
            "Run it again to ask again; see the run's artifact for every decision.",
        )
    if run.subtype == "error_max_turns":
        raise ClaudeError(
            f"Claude Code hit the turn limit ({options.max_turns}) before finishing.", "Raise CLAUDE_MAX_TURNS."
        )
    if not run.finished:
        raise ClaudeError(
            f"Claude Code exited with code {run.exit_code} without a result: {run.stderr or 'no output'}.",
            "See the run's logs.",
        )
    if run.api_error_status or run.result.startswith("API Error"):
        raise ModelApiError(
            f"The model API failed the run ({run.api_error_status or 'no status'}): {one_line(run.result)}.",
            "Claude Code retried it already; run again later, or check ANTHROPIC_BASE_URL and the API's status.",
        )
    if run.is_error or run.exit_code:
        raise ClaudeError(
            f"Claude Code reported an error ({run.subtype}): {one_line(run.result)}.", "See the run's logs."
        )
    if GATEWAY_NAME not in run.mcp_servers or run.mcp_servers[GATEWAY_NAME] != "connected":
        raise ClaudeError("Claude Code ran without the gateway's tools.", "Check the gateway.")
    if run.permission_denials:
        denied = ", ".join(sorted(set(run.permission_denials)))
        raise ClaudeError(
            f"Claude Code was denied tools: {denied}.",
            "Allow them with --allowed-tools if they are wanted.",
        )
    if options.json_schema is not None:
        check_structured_output(run, options.json_schema)


def check_structured_output(run: AgentRun, schema: dict) -> None:
    """Raise unless the run's answer is there and matches the requested JSON Schema (Claude Code checks it too;
    this does not rely on that)."""
    output = run.structured_output
    if output is None:
        attempts = [c for c in run.tool_calls if c.name == STRUCTURED_OUTPUT_TOOL]
        why = (f"its last of {len(attempts)} attempt(s) was refused: {one_line(attempts[-1].output, limit=200)}"
               if attempts else "the agent never gave one")
        raise ClaudeError(f"Claude Code gave no valid structured output ({why}).",
                          "See the run's logs; the model must finish with JSON matching the output schema.")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(output))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise ClaudeError(f"Claude Code's structured output does not match the schema at {where}: "
                          f"{one_line(error.message, limit=200)}.", "See the run's logs.")
