"""What the orchestrator adds to its traces and metrics, through the OpenTelemetry API alone: with tracing off there
is no provider, and each call here is a no-op on a non-recording span or meter."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Span

from agentbox.telemetry.config import SANDBOX_ATTRIBUTE, Telemetry, run_attributes, telemetry_of
from agentbox.telemetry.sdk import install_providers

if TYPE_CHECKING:
    from agentbox.settings import Settings

METER_NAME = "agentbox"


def start_telemetry(settings: Settings) -> Telemetry | None:
    """Install this process's providers when the settings turn tracing on (once; Prefect's run spans then go to
    the endpoint too). The run's telemetry, or None when tracing is off."""
    telemetry = telemetry_of(settings)
    if telemetry is not None:
        install_providers(telemetry, telemetry.service_name)
    return telemetry


@contextmanager
def step_span(name: str, attributes: Mapping[str, str | int | float | bool] | None = None) -> Iterator[Span]:
    """A span of our own under the current one, for a step that is not a task of its own (the wait for a sandbox
    slot, a wait for a person's approval); untraced, a non-recording span that costs microseconds."""
    with trace.get_tracer(METER_NAME).start_as_current_span(name, attributes=dict(attributes or {})) as span:
        yield span


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span (a task's), for the processes that join the run's trace."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def annotate(attributes: Mapping[str, str | int | float | bool]) -> None:
    """Put attributes on the current span (a task's), when it is recorded."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(dict(attributes))


def record_usage(cost_usd: float, tokens: Mapping[str, int], attributes: Mapping[str, str | bool]) -> None:
    """The run's cost and tokens as metrics (counters by flow and deployment, tokens by type) and as attributes of
    the current span, so they exist even where Claude Code's own export is off."""
    annotate({"agentbox.cost_usd": round(cost_usd, 6),
              **{f"agentbox.tokens.{kind}": count for kind, count in tokens.items()}})
    cost, token_count = usage_counters()
    cost.add(cost_usd, dict(attributes))
    for kind, count in tokens.items():
        token_count.add(count, {**attributes, "agentbox.token.type": kind})


@functools.cache
def usage_counters() -> tuple[metrics.Counter, metrics.Counter]:
    """The run's cost and tokens counters, made once per process (a worker records many runs)."""
    meter = metrics.get_meter(METER_NAME)
    return (meter.create_counter("agentbox.run.cost", unit="USD", description="What runs spent on the model"),
            meter.create_counter("agentbox.run.tokens", unit="{token}", description="Model tokens runs used"))


def task_telemetry(settings: Settings, metadata: Mapping[str, str], sandbox_id: str | None = None) -> Telemetry | None:
    """The run's telemetry under the current span (a task's), with the run's attributes (and its sandbox's id, once
    there is one); None when tracing is off."""
    telemetry = telemetry_of(settings)
    attributes = {**run_attributes(dict(metadata)), **({SANDBOX_ATTRIBUTE: sandbox_id} if sandbox_id else {})}
    return telemetry and telemetry.joining(current_traceparent(), **attributes)


def annotate_run(metadata: Mapping[str, str], sandbox_id: str | None = None) -> None:
    """Put the run's attributes (flow run, flow, deployment, session) and its sandbox's id on the current span."""
    if trace.get_current_span().is_recording():
        annotate({**run_attributes(dict(metadata)), **({SANDBOX_ATTRIBUTE: sandbox_id} if sandbox_id else {})})


def usage_attributes(metadata: Mapping[str, str], rehearsal: bool) -> dict[str, str | bool]:
    """The attributes of the run's metrics: its flow and deployment (not the run's id: one series per run would
    swamp a metrics store), and whether it was a rehearsal (whose spend is the stand-in's, not money)."""
    attributes = run_attributes(dict(metadata))
    kept: dict[str, str | bool] = {k: v for k, v in attributes.items()
                                   if k in ("prefect.flow.name", "prefect.deployment.name")}
    return {**kept, "agentbox.rehearsal": rehearsal}
