"""Notifications through Prefect's own machinery: a notification block per URL, and automations on our runs' events
(tasks/events.py) that send each event's message to every block, with the link to the run's page from the server's
own UI URL. Server-side, so they work for served runs, workers on any machine and command lines on a server.

Set up by `python -m deployments.bootstrap --notify URL ...` (or NOTIFY_URLS): idempotent, and each setup replaces
the previous one whole (its blocks and automations are found by their names); `--notify ''` removes them.
"""

from __future__ import annotations

import hashlib

from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock, MicrosoftTeamsWebhook, SlackWebhook
from prefect.client.orchestration import PrefectClient
from pydantic import BaseModel, SecretStr

from agentbox.notifications import NotifyKind, notify_kind
from tasks.events import APPROVAL_REMINDER, APPROVAL_REQUESTED, BUDGET_REACHED, RUN_COMPLETED, RUN_FAILED

BLOCK_PREFIX = "agentbox-notify-"
AUTOMATION_PREFIX = "agentbox: "
SUBJECT = "{{ event.payload.subject }}"
BODY = "{{ event.payload.body }}\n\nThe run's page: {{ flow_run|ui_url or '(set PREFECT_UI_URL on the server)' }}"
WHAT = {  # event -> the automation's name, after the prefix
    APPROVAL_REQUESTED: "a run waits for approval",
    APPROVAL_REMINDER: "a run still waits for approval",
    RUN_FAILED: "a run failed",
    BUDGET_REACHED: "a daily budget is spent",
    RUN_COMPLETED: "a run completed",
}


class NotifySetup(BaseModel):
    """What notifications a server sends, and where (the URLs are not repeated: they hold their tokens)."""

    destinations: list[NotifyKind]
    blocks: list[str]
    automations: list[str]


def block_for(url: str) -> CustomWebhookNotificationBlock | MicrosoftTeamsWebhook | SlackWebhook:
    """Slack's block for a Slack incoming webhook, Teams' for a Teams one, else a webhook with a JSON body
    `{"subject": ..., "body": ...}`."""
    kind = notify_kind(url)
    if kind == "slack":
        return SlackWebhook(url=SecretStr(url))
    if kind == "teams":
        return MicrosoftTeamsWebhook(url=SecretStr(url))
    return CustomWebhookNotificationBlock(name="agentbox", url=url,
                                          json_data={"subject": "{{subject}}", "body": "{{body}}"})


def block_name(url: str) -> str:
    return BLOCK_PREFIX + hashlib.sha256(url.strip().encode()).hexdigest()[:12]


async def configure_notifications(client: PrefectClient, urls: list[str], success: bool = False) -> NotifySetup:
    """Make the server notify `urls` (none: notify nobody) of our runs' events: every URL is checked before
    anything changes; then the blocks and automations of an earlier setup that are not wanted any more go."""
    urls = list(dict.fromkeys(u.strip() for u in urls if u.strip()))
    blocks = {block_name(url): block_for(url) for url in urls}  # raises for a bad URL, before any change
    for automation in await client.read_automations():
        if automation.name.startswith(AUTOMATION_PREFIX):
            await client.delete_automation(automation.id)
    for document in await client.read_block_documents(include_secrets=False):
        if (document.name or "").startswith(BLOCK_PREFIX) and document.name not in blocks:
            await client.delete_block_document(document.id)
    ids = [await block.asave(name, overwrite=True, client=client) for name, block in blocks.items()]
    created = []
    if ids:
        for event, what in WHAT.items():
            if event == RUN_COMPLETED and not success:
                continue
            automation = AutomationCore(
                name=AUTOMATION_PREFIX + what,
                description=f"Sends the message of each `{event}` event to this project's notification blocks.",
                trigger=EventTrigger(expect={event}, match={"prefect.resource.id": "prefect.flow-run.*"},
                                     posture=Posture.Reactive, threshold=1, within=0),
                actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)
                         for block_id in ids],
            )
            await client.create_automation(automation)
            created.append(automation.name)
    return NotifySetup(destinations=[notify_kind(url) for url in urls], blocks=list(blocks), automations=created)
