"""Serve every deployment of prefect.yaml from one long-running process, with its schedules, parameters and tags:
the simplest always-on setup, no work pool or worker needed.

    python -m deployments.serve [--limit 4] [--prefect-yaml prefect.yaml]

prefect.yaml stays the one place where deployments are described; `prefect deploy --all` turns the same file into
work-pool deployments instead. Trigger runs from the Prefect UI or with
`prefect deployment run 'notion-to-github/notion-to-github'`. Stopping the process pauses its schedules.
"""

from __future__ import annotations

import argparse
import importlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow, serve
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule
from prefect.deployments.runner import RunnerDeployment

from agentbox.errors import ConfigError

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def schedule(spec: dict[str, Any]) -> DeploymentScheduleCreate:
    """One `schedules:` entry of prefect.yaml (cron, interval in seconds, or rrule) as Prefect's schedule."""
    timezone = spec.get("timezone")
    if "cron" in spec:
        kind = CronSchedule(cron=spec["cron"], timezone=timezone, day_or=spec.get("day_or", True))
    elif "interval" in spec:
        extra = {"anchor_date": spec["anchor_date"]} if spec.get("anchor_date") else {}
        kind = IntervalSchedule(interval=timedelta(seconds=float(spec["interval"])), timezone=timezone, **extra)
    elif "rrule" in spec:
        kind = RRuleSchedule(rrule=spec["rrule"], timezone=timezone)
    else:
        raise ConfigError(f"A schedule in prefect.yaml has no cron, interval or rrule: {spec}.", "Fix prefect.yaml.")
    return DeploymentScheduleCreate(schedule=kind, active=spec.get("active", True))


def entrypoint_flow(entrypoint: str) -> Flow:
    """`flows/x.py:fn` imported as the module `flows.x`, so the runner and a worker run the very same flow."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def deployments(prefect_yaml: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """Every deployment of prefect.yaml, ready to serve (work pools do not apply to a served deployment)."""
    try:
        spec = yaml.safe_load(prefect_yaml.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read {prefect_yaml} ({exc}).", "Pass --prefect-yaml with a valid file.") from None
    return [
        entrypoint_flow(d["entrypoint"]).to_deployment(
            name=d["name"],
            description=d.get("description"),
            parameters=d.get("parameters") or {},
            schedules=[schedule(s) for s in d.get("schedules") or []],
            tags=d.get("tags"),
            concurrency_limit=d.get("concurrency_limit"),
        )
        for d in spec.get("deployments") or []
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4, help="flow runs at once in this process")
    parser.add_argument("--prefect-yaml", type=Path, default=PREFECT_YAML, help="deployments to serve")
    args = parser.parse_args(argv)
    serve(*deployments(args.prefect_yaml), limit=args.limit)


if __name__ == "__main__":
    main()
