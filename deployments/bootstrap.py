"""Prepare a Prefect server for this project, once per server (idempotent): the process work pool the deployments
run on, and the global concurrency limit every session holds a slot of.

    python -m deployments.bootstrap [--pool agentbox] [--sandboxes 5]

`--sandboxes` is how many sandboxes may run at once across all workers: keep it at or under your E2B plan's
concurrent-sandbox limit. Sessions refuse to start when the limit is missing (it is never silently "unlimited").
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
from agentbox.settings import load_settings
from flows import cli
from tasks.sandbox import DEFAULT_SANDBOX_SLOTS as DEFAULT_SANDBOXES

WORK_POOL = "agentbox"


class Bootstrap(BaseModel):
    work_pool: str
    work_pool_created: bool
    concurrency_limit: str
    sandboxes: int


async def bootstrap(pool: str = WORK_POOL, sandboxes: int = DEFAULT_SANDBOXES) -> Bootstrap:
    """Create the work pool if it is missing, and create or resize the sandbox limit."""
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
    return Bootstrap(work_pool=pool, work_pool_created=created, concurrency_limit=limit, sandboxes=sandboxes)


def human(result: Bootstrap) -> list[str]:
    return [
        f"Work pool '{result.work_pool}' (process): {'created' if result.work_pool_created else 'already there'}",
        f"Concurrency limit '{result.concurrency_limit}': {result.sandboxes} sandboxes at once",
        f"Next: prefect deploy --all, then on each machine: prefect worker start --pool {result.work_pool}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.bootstrap", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=WORK_POOL, help="process work pool name (prefect.yaml uses 'agentbox')")
    parser.add_argument("--sandboxes", type=int, default=DEFAULT_SANDBOXES, help="sandboxes allowed at once")
    parser.add_argument("--json", action="store_true", help="print only the result as JSON on stdout")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    args = parser.parse_args(argv)
    return cli.run(lambda: cli.on_prefect(lambda: bootstrap(args.pool, args.sandboxes)), args, human=human)


if __name__ == "__main__":
    sys.exit(main())
