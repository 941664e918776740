"""Where a run's telemetry goes, resolved once from the standard OTEL_* settings and handed to every layer.

Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT is set (and OTEL_SDK_DISABLED is not true); everything is exported
over OTLP/HTTP to that one endpoint, whose headers (an API key, often) are a secret. A `Telemetry` also carries the
run's trace context (`traceparent`, W3C) and the attributes every layer's spans carry, so the gateway's, the egress
proxy's and Claude Code's spans join the flow run's trace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from agentbox.settings import Settings

# The sandbox's metadata labels (flows/planning.py) as the attributes every layer's telemetry carries.
METADATA_ATTRIBUTES = {
    "prefect_flow_run_id": "prefect.flow_run.id",
    "prefect_flow": "prefect.flow.name",
    "prefect_deployment": "prefect.deployment.name",
    "agentbox_session": "agentbox.session",
}
SANDBOX_ATTRIBUTE = "agentbox.sandbox.id"


class Telemetry(BaseModel, frozen=True):
    """One run's telemetry: the OTLP/HTTP endpoint (base URL: /v1/traces, /v1/metrics, /v1/logs are appended),
    its headers (secret), which signals besides traces go there, the trace context to join, and the attributes
    (flow run, flow, deployment, sandbox) every layer puts on what it exports."""

    endpoint: str
    headers: SecretStr | None = None
    protocol: str = "http/protobuf"
    metrics: bool = True
    logs: bool = True
    service_name: str = "agentbox"
    traceparent: str | None = None
    attributes: dict[str, str] = {}

    def header_pairs(self) -> dict[str, str]:
        """OTEL_EXPORTER_OTLP_HEADERS (`key=value,...`, values percent-encoded) as a dict."""
        return parse_key_values(self.headers.get_secret_value() if self.headers else "")

    def signal_url(self, signal: str) -> str:
        return f"{self.endpoint.rstrip('/')}/v1/{signal}"

    def for_process(self, **attributes: str) -> dict[str, Any]:
        """What a process of the sandbox (the gateway, the egress proxy) needs to export its spans, as plain JSON:
        headers included (so it travels only in files and environments only that process reads)."""
        return {"endpoint": self.endpoint, "headers": self.header_pairs(), "traceparent": self.traceparent,
                "attributes": {**self.attributes, **attributes}}

    def joining(self, traceparent: str | None, **attributes: str) -> Telemetry:
        """This telemetry under another parent span, with more attributes."""
        return self.model_copy(update={"traceparent": traceparent or self.traceparent,
                                       "attributes": {**self.attributes, **attributes}})


def telemetry_of(settings: Settings) -> Telemetry | None:
    """The telemetry the settings ask for, or None when tracing is off."""
    if settings.otel_sdk_disabled or not (settings.otel_exporter_otlp_endpoint or "").strip():
        return None
    return Telemetry(
        endpoint=settings.otel_exporter_otlp_endpoint.strip(),
        headers=settings.otel_exporter_otlp_headers,
        protocol=settings.otel_exporter_otlp_protocol,
        metrics=settings.otel_metrics_exporter == "otlp",
        logs=settings.otel_logs_exporter == "otlp",
        service_name=settings.otel_service_name,
        attributes=parse_key_values(settings.otel_resource_attributes or ""),
    )


def run_attributes(metadata: dict[str, str]) -> dict[str, str]:
    """A sandbox's metadata labels as telemetry attributes (flow run id, flow, deployment, session)."""
    return {name: metadata[label] for label, name in METADATA_ATTRIBUTES.items() if metadata.get(label)}


def parse_key_values(text: str) -> dict[str, str]:
    """`key=value,key2=value2` (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS; values percent-encoded)."""
    pairs = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def key_values(pairs: dict[str, str]) -> str:
    """The inverse of `parse_key_values`, for a child process's OTEL_RESOURCE_ATTRIBUTES."""
    return ",".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs.items())


def claude_code_env(telemetry: Telemetry, endpoint: str, with_headers: bool) -> dict[str, str]:
    """Claude Code's variables to export its traces, metrics and events to `endpoint` (the run's endpoint, or a
    proxy to it), under the run's trace context and attributes. Prompts and tool arguments stay out
    (OTEL_LOG_USER_PROMPTS and OTEL_LOG_TOOL_DETAILS are left unset, so off)."""
    env = {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "CLAUDE_CODE_ENHANCED_TELEMETRY_BETA": "1",  # its spans (interaction, model request, tool), not only metrics
        "CLAUDE_CODE_PROPAGATE_TRACEPARENT": "1",  # its MCP and model requests carry its span: the gateway joins it
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp" if telemetry.metrics else "none",
        "OTEL_LOGS_EXPORTER": "otlp" if telemetry.logs else "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": telemetry.protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "claude-code",
        "OTEL_RESOURCE_ATTRIBUTES": key_values(telemetry.attributes),
    }
    if telemetry.traceparent:
        env["TRACEPARENT"] = telemetry.traceparent
    if with_headers and telemetry.headers:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = telemetry.headers.get_secret_value()
    return env
