"""What people are told about an unattended run, and where: the messages themselves (subject and body, plain text,
secrets already redacted by whoever gives them their parts) and the kinds of places a notification URL names.

The messages are composed here, where they can be tested, and travel in our runs' events (tasks/events.py); the
server's automations only send them on, adding the link to the run's page from its own UI URL.
"""

from __future__ import annotations

import json
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from agentbox.approvals import PendingApproval
from agentbox.errors import InvalidValue

NotifyKind = Literal["slack", "teams", "webhook"]
MAX_ARGUMENTS_SHOWN = 2000  # characters of a call's arguments in a message


class Notice(BaseModel):
    """One message: its subject and its body (plain text)."""

    subject: str
    body: str


def run_label(run_name: str, deployment: str) -> str:
    return f"{run_name} (deployment {deployment})" if deployment else run_name


def approval_notice(run_name: str, deployment: str, flow_run_id: object, pending: PendingApproval,
                    reminder_left: float | None = None) -> Notice:
    """A run paused for a person: which call, with which arguments, until when and what silence means, and the
    command that answers it. `reminder_left`: seconds left, when this is the reminder."""
    arguments = json.dumps(pending.arguments, indent=2, ensure_ascii=False, sort_keys=True)
    if len(arguments) > MAX_ARGUMENTS_SHOWN:
        arguments = arguments[:MAX_ARGUMENTS_SHOWN - 1] + "…"
    server = f" ({pending.server})" if pending.server else ""
    when = f"{pending.waits_until:%Y-%m-%d %H:%M:%S} UTC"
    if reminder_left is None:
        subject = f"Approval needed: {pending.tool} in {run_name}"
        wait = f"It waits until {when}; silence then means {pending.on_silence}."
    else:
        subject = f"Reminder, approval still needed: {pending.tool} in {run_name}"
        wait = f"It still waits: {reminder_left / 60:.0f} min left (until {when}); silence then means " \
               f"{pending.on_silence}."
    body = "\n".join([
        f"The agent of {run_label(run_name, deployment)} wants to call {pending.tool}{server} with:",
        arguments,
        wait,
        f"Call: {pending.call}",
        f"Answer from any terminal with the project and PREFECT_API_URL: {pending.answer_command(flow_run_id)}",
        f"(deny with: {pending.answer_command(flow_run_id, 'deny')} --reason R)",
    ])
    return Notice(subject=subject, body=body)


def failure_notice(run_name: str, deployment: str, reason: str, message: str, blocked: list[str] = ()) -> Notice:
    """A run that failed: its reason from the fixed set, its one-line message, and what a layer blocked."""
    lines = [f"{run_label(run_name, deployment)} failed ({reason}): {message}"]
    if blocked:
        lines += ["Blocked by the run policy:", *(f"- {item}" for item in blocked)]
    return Notice(subject=f"Run failed ({reason}): {run_name}", body="\n".join(lines))


def budget_notice(group: str, spent: float, budget: float) -> Notice:
    """Today's runs of a deployment spent its daily budget: said once per day and deployment."""
    return Notice(subject=f"Daily budget reached: {group}",
                  body=f"The runs of {group} spent ${spent:.4f} today (UTC) of their ${budget:g} daily budget; "
                       "further runs are refused until tomorrow (UTC), or until DAILY_BUDGET_USD is raised.")


def success_notice(run_name: str, deployment: str, summary: str) -> Notice:
    return Notice(subject=f"Run completed: {run_name}", body=f"{run_label(run_name, deployment)} completed. {summary}")


def notify_kind(url: str) -> NotifyKind:
    """Which kind of place an http(s) URL is (Slack's or Microsoft Teams' incoming webhooks, else any webhook); an
    InvalidValue for anything that is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        start = url.strip().split("//")[0][:12]  # only its start: a webhook URL holds its token further on
        raise InvalidValue(f"A --notify value is not an http(s) URL (it starts with '{start}').",
                           "Pass a Slack or Microsoft Teams incoming-webhook URL, or any http(s) webhook URL.")
    host = parts.hostname.lower()
    if host == "hooks.slack.com":
        return "slack"
    if host.endswith((".webhook.office.com", "outlook.office.com", ".logic.azure.com")):
        return "teams"
    return "webhook"
