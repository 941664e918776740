"""The OpenTelemetry SDK's providers, installed once per process when tracing is on, never imported when it is off.

Spans are batched and exported over OTLP/HTTP (protobuf) in a background thread, and flushed when the process
exits; Prefect's run spans, the MCP SDK's request spans and our own attributes all go through the global providers.
"""

from __future__ import annotations

import logging
from typing import Any

from agentbox.telemetry.config import Telemetry

log = logging.getLogger(__name__)
_installed: dict[str, Any] = {}


def install_providers(telemetry: Telemetry, service_name: str, export_delay_ms: int | None = None) -> bool:
    """Install the global tracer provider (and meter provider, when metrics are exported) for this process, its
    spans exported every `export_delay_ms` (default: the SDK's, OTEL_BSP_SCHEDULE_DELAY); False when it already has
    them."""
    if _installed:
        return False
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({**telemetry.attributes, "service.name": service_name})
    headers = telemetry.header_pairs()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=telemetry.signal_url("traces"), headers=headers),
                           schedule_delay_millis=export_delay_ms))
    trace.set_tracer_provider(tracer_provider)
    _installed["traces"] = tracer_provider
    if telemetry.metrics:
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=telemetry.signal_url("metrics"), headers=headers))
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        metrics.set_meter_provider(meter_provider)
        _installed["metrics"] = meter_provider
    log.debug("telemetry: exporting to %s as %s", telemetry.endpoint, service_name)
    return True
