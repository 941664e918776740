"""OpenTelemetry for a run: one trace per flow run across the orchestrator, the gateway, the egress proxy and
Claude Code, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (see config.py; the SDK is imported only when it is on)."""

from agentbox.telemetry.config import Telemetry, run_attributes, telemetry_of

__all__ = ["Telemetry", "run_attributes", "telemetry_of"]
