"""Prepare a Prefect server for this project, once per server (idempotent): the process work pool the deployments
run on, and the global concurrency limit every session holds a slot of.

    python -m deployments.bootstrap [--pool agentbox] [--sandboxes 5] [--notify URL ...] [--notify-success]

`--sandboxes` is how many sandboxes may run at once across all workers: keep it at or under your E2B plan's
concurrent-sandbox limit. Sessions refuse to start when the limit is missing (it is never silently "unlimited").
`--notify` (repeatable; else NOTIFY_URLS) points the server's notifications at Slack, Microsoft Teams or any webhook
(see deployments/notify.py): a run waiting for approval, failing, or spending a daily budget; `--notify ''` removes
them. Without either, the notifications already set up stay as they are.
"""

from __future__ import annotations

import argparse
import sys

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker
from pydantic import BaseModel

from agentbox.errors import ConfigError
from agentbox.notifications import notify_kind
from agentbox.settings import load_settings
from flows import cli
from deployments.notify import NotifySetup, configure_notifications
from tasks.sandbox import DEFAULT_SANDBOX_SLOTS as DEFAULT_SANDBOXES

WORK_POOL = "agentbox"


class Bootstrap(BaseModel):
    work_pool: str
    work_pool_created: bool
    concurrency_limit: str
    sandboxes: int
    notifications: NotifySetup | None = None


async def bootstrap(pool: str = WORK_POOL, sandboxes: int = DEFAULT_SANDBOXES, notify: list[str] | None = None,
                    notify_success: bool = False) -> Bootstrap:
    """Create the work pool if it is missing, create or resize the sandbox limit, and (when `notify` is given, even
    empty) set up the server's notifications."""
    for url in notify or []:
        if url.strip():
            notify_kind(url)  # a bad URL is refused before anything changes
    if sandboxes < 1:
        raise ConfigError(
            f"--sandboxes must be at least 1, not {sandboxes}.",
            "Pass the number of sandboxes allowed at once.",
        )
    limit = load_settings().sandbox_concurrency_limit
    if not limit:
        raise ConfigError(
            "SANDBOX_CONCURRENCY_LIMIT is empty, so there is no limit to create.",
            "Unset it to use the default.",
        )
    async with get_client() as client:
        try:
            existing = await client.read_work_pool(pool)
            if existing.type != "process":
                raise ConfigError(
                    f"Work pool '{pool}' exists with type '{existing.type}', not 'process'.",
                    "Pick another --pool.",
                )
            created = False
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
            created = True
        await client.upsert_global_concurrency_limit_by_name(limit, sandboxes)
        notifications = None if notify is None else await configure_notifications(client, notify, notify_success)
    return Bootstrap(work_pool=pool, work_pool_created=created, concurrency_limit=limit, sandboxes=sandboxes,
                     notifications=notifications)


def human(result: Bootstrap) -> list[str]:
    return [
        f"Work pool '{result.work_pool}' (process): {'created' if result.work_pool_created else 'already there'}",
        f"Concurrency limit '{result.concurrency_limit}': {result.sandboxes} sandboxes at once",
        *notification_lines(result.notifications),
        f"Next: prefect deploy --all, then on each machine: prefect worker start --pool {result.work_pool}",
    ]


def notification_lines(setup: NotifySetup | None) -> list[str]:
    if setup is None:
        return []
    if not setup.destinations:
        return ["Notifications: none (removed)"]
    return [f"Notifications: {len(setup.automations)} automations sending to {', '.join(setup.destinations)} "
            f"({len(setup.blocks)} block(s))"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.bootstrap", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=WORK_POOL, help="process work pool name (prefect.yaml uses 'agentbox')")
    parser.add_argument("--sandboxes", type=int, default=DEFAULT_SANDBOXES, help="sandboxes allowed at once")
    parser.add_argument("--json", action="store_true", help="print only the result as JSON on stdout")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    parser.add_argument("--notify", action="append", default=None, metavar="URL",
                        help="notify this Slack/Teams incoming webhook or http(s) webhook of runs waiting for approval "
                        "or failing (repeat for more; default: NOTIFY_URLS); --notify '' removes the notifications")
    parser.add_argument("--notify-success", action="store_true", default=None,
                        help="notify of runs that succeed too (default: NOTIFY_SUCCESS)")
    args = parser.parse_args(argv)

    def start() -> Bootstrap:
        settings = load_settings()
        notify = args.notify
        if notify is None and settings.notify_urls is not None:
            notify = settings.notify_urls.get_secret_value().split(",")
        success = settings.notify_success if args.notify_success is None else args.notify_success
        return cli.on_prefect(lambda: bootstrap(args.pool, args.sandboxes, notify, success))

    return cli.run(start, args, human=human)


if __name__ == "__main__":
    sys.exit(main())
