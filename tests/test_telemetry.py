"""Tracing's parts on their own: the settings that turn it on, the egress proxy's hand-encoded spans (read back with
OpenTelemetry's own protobuf classes, sent through the real proxy to a recorder), the gateway's spans of a blocked
call, and the token counts the orchestrator's metrics report."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agentbox.errors import ConfigError
from agentbox.sandboxes.local.egress import Egress
from agentbox.sandboxes.local.egress_spans import export_request, parse_traceparent
from agentbox.settings import load_settings
from agentbox.spend import Spend
from agentbox.telemetry.config import claude_code_env, key_values, parse_key_values, telemetry_of
from tests.test_gateway_probe import TOKEN, Gateway, poll
from tests.tracestore import OtlpRecorder, attributes

RUN_PARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
CLAUDE_PARENT = "00-" + "ef" * 16 + "-" + "12" * 8 + "-01"


@pytest.fixture
def recorder():
    with OtlpRecorder() as recorder:
        yield recorder


def test_tracing_is_off_unless_an_endpoint_is_set_and_on_with_the_standard_variables(monkeypatch):
    assert telemetry_of(load_settings()) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://api.honeycomb.io")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=hc-SECRET-key,x-honeycomb-dataset=runs")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=a%2Cb")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    settings = load_settings()
    telemetry = telemetry_of(settings)
    assert telemetry.signal_url("traces") == "https://api.honeycomb.io/v1/traces"
    assert telemetry.header_pairs() == {"x-honeycomb-team": "hc-SECRET-key", "x-honeycomb-dataset": "runs"}
    assert telemetry.attributes == {"deployment.environment": "prod", "team": "a,b"}
    assert telemetry.logs is False and telemetry.metrics is True
    assert "hc-SECRET-key" not in repr(settings) + repr(telemetry) + telemetry.model_dump_json()
    assert "x-honeycomb-team=hc-SECRET-key,x-honeycomb-dataset=runs" in settings.secret_values()  # redacted
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry_of(load_settings()) is None


def test_a_protocol_the_proxy_cannot_carry_is_named_in_one_line(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in message and "OTEL_METRICS_EXPORTER" in message
    assert "\n" not in message and "'http/protobuf' or 'http/json'" in message


def test_claude_code_gets_its_variables_without_prompts_or_tool_details():
    telemetry = telemetry_of(load_settings(otel_exporter_otlp_endpoint="http://collector:4318",
                                           otel_exporter_otlp_headers="k=SECRET"))
    joined = telemetry.joining(RUN_PARENT, **{"prefect.flow_run.id": "run-1", "agentbox.sandbox.id": "sb=1,2"})
    inside = claude_code_env(joined, "http://127.0.0.1:4318", with_headers=False)
    assert inside["TRACEPARENT"] == RUN_PARENT and inside["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert parse_key_values(inside["OTEL_RESOURCE_ATTRIBUTES"]) == {"prefect.flow_run.id": "run-1",
                                                                     "agentbox.sandbox.id": "sb=1,2"}
    assert "SECRET" not in json.dumps(inside)
    assert not {"OTEL_LOG_USER_PROMPTS", "OTEL_LOG_TOOL_DETAILS"} & set(inside)
    assert claude_code_env(joined, joined.endpoint, with_headers=True)["OTEL_EXPORTER_OTLP_HEADERS"] == "k=SECRET"
    assert parse_key_values(key_values({"a=b": "c,d%"})) == {"a=b": "c,d%"}


def test_the_egress_spans_encoding_is_otlp_as_opentelemetry_reads_it():
    trace_id, parent = parse_traceparent(RUN_PARENT)
    span = {"trace_id": trace_id, "span_id": bytes(range(8)), "parent_id": parent, "name": "egress blocked x.test",
            "start": 1_700_000_000_000_000_000, "end": 1_700_000_000_500_000_000, "error": "not an allowed host",
            "attributes": {"agentbox.egress.host": "x.test", "agentbox.egress.port": 443, "ratio": 0.5, "ok": False,
                           "negative": -3}}
    request = ExportTraceServiceRequest.FromString(export_request({"service.name": "agentbox-egress"}, [span]))
    [resource_spans] = request.resource_spans
    assert attributes(resource_spans.resource.attributes) == {"service.name": "agentbox-egress"}
    [decoded] = resource_spans.scope_spans[0].spans
    assert decoded.trace_id.hex() == "ab" * 16 and decoded.parent_span_id.hex() == "cd" * 8
    assert decoded.span_id == bytes(range(8)) and decoded.name == "egress blocked x.test"
    assert decoded.start_time_unix_nano == 1_700_000_000_000_000_000 and decoded.kind == 3  # CLIENT
    assert attributes(decoded.attributes) == span["attributes"]
    assert decoded.status.code == 2 and decoded.status.message == "not an allowed host"
    assert parse_traceparent("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None
    assert parse_traceparent("not a traceparent") is None


def test_the_egress_proxy_exports_a_span_per_decision_under_the_requests_own_parent(recorder):
    async def scenario(directory: str) -> None:
        async def answer(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        upstream = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = upstream.sockets[0].getsockname()[1]
        telemetry = {"endpoint": recorder.endpoint, "headers": {"x-otlp-key": "SECRET-otlp"},
                     "traceparent": RUN_PARENT, "attributes": {"agentbox.sandbox.id": "sb-1"}}
        egress = Egress({"directory": directory, "proxy": "proxy.sock", "allow": [], "telemetry": telemetry,
                         "services": {"model API": {"socket": "model.sock", "upstream": f"http://127.0.0.1:{port}",
                                                    "headers": {"x-api-key": "sk-real"}, "inside": "127.0.0.1:8788"},
                                      "telemetry": {"socket": "telemetry.sock", "upstream": recorder.endpoint,
                                                    "headers": telemetry["headers"], "inside": "127.0.0.1:4318"}}})
        servers = await egress.start()
        try:
            for sock, request in (
                ("model.sock", f"POST /v1/messages HTTP/1.1\r\nHost: x\r\ntraceparent: {CLAUDE_PARENT}\r\n"
                               "Content-Length: 5\r\n\r\nhello"),
                ("proxy.sock", "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"),
                ("telemetry.sock", "POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 2\r\n\r\n{}"),
            ):
                reader, writer = await asyncio.open_unix_connection(str(Path(directory, sock)))
                writer.write(request.encode())
                await writer.drain()
                await asyncio.wait_for(reader.read(), 10)
                writer.close()
        finally:
            for server in servers:
                server.close()
            await asyncio.to_thread(egress.spans.stop)  # as the proxy does when it stops
            upstream.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(directory))
    spans = {s["name"]: s for s in recorder.spans()}
    assert set(spans) == {"egress allowed model API", "egress blocked evil.example"}  # none for telemetry's own
    model, blocked = spans["egress allowed model API"], spans["egress blocked evil.example"]
    assert (model["trace_id"], model["parent_span_id"]) == ("ef" * 16, "12" * 8)  # Claude Code's span
    assert (blocked["trace_id"], blocked["parent_span_id"]) == ("ab" * 16, "cd" * 8)  # the run's
    assert model["attributes"]["agentbox.egress.bytes_sent"] == 5
    assert model["attributes"]["agentbox.egress.bytes_received"] > 2
    assert blocked["status"] == "STATUS_CODE_ERROR" and blocked["attributes"]["agentbox.egress.port"] == 443
    assert model["resource"] == {"agentbox.sandbox.id": "sb-1", "service.name": "agentbox-egress"}
    assert [r.headers.get("x-otlp-key") for r in recorder.recorded()] == ["SECRET-otlp"] * 2  # its log, its spans
    assert b"SECRET-otlp" not in recorder.raw() and b"sk-real" not in recorder.raw()


def test_the_gateway_joins_claude_codes_span_and_refuses_the_endpoints_key_in_a_call(recorder, tmp_path):
    key = "otlp-key-SECRET-0123456789"
    gateway = Gateway("traced", tmp_path, tmp_path / "pycache", {"echo": {}}, env={"GATEWAY_TELEMETRY": json.dumps({
        "endpoint": recorder.endpoint, "headers": {"x-otlp-key": key}, "traceparent": RUN_PARENT,
        "attributes": {"agentbox.sandbox.id": "sb-2"}})})
    try:
        gateway.wait_ready({"echo": ["echo"]})
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream",
                   "traceparent": CLAUDE_PARENT}
        with httpx.Client(headers=headers, timeout=30) as client:
            start = client.post(gateway.url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            client.headers["mcp-session-id"] = start.headers["mcp-session-id"]
            client.post(gateway.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
            answers = [client.post(gateway.url, json={"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {
                "name": "echo", "arguments": {"text": text}}}).text for n, text in ((2, "hello"), (3, f"k={key}"))]
        assert "Blocked by policy" in answers[1] and key not in answers[1]

        def calls() -> list[dict]:
            return [s for s in recorder.spans() if s["name"] == "tools/call echo"]

        assert poll(lambda: len(calls()) == 2, 10), recorder.spans()  # exported within a quarter second
    finally:
        gateway.stop()
    ok, refused = sorted(calls(), key=lambda s: s["attributes"]["agentbox.gateway.outcome"] == "blocked")
    assert (ok["trace_id"], ok["parent_span_id"]) == ("ef" * 16, "12" * 8)  # the header's span
    assert ok["attributes"]["agentbox.gateway.outcome"] == "ok" and ok["attributes"]["agentbox.mcp.server"] == "echo"
    assert refused["attributes"]["agentbox.gateway.blocked"] is True
    assert refused["attributes"]["agentbox.gateway.argument_names"] == ["text"]
    starting = [s for s in recorder.spans() if s["name"].startswith("MCP send initialize")]
    assert starting and all(s["trace_id"] == "ab" * 16 for s in starting)  # its start is the run's
    assert {s["resource"].get("agentbox.sandbox.id") for s in recorder.spans()} == {"sb-2"}
    assert key.encode() not in recorder.raw()


def test_tokens_are_counted_once_per_message_by_kind():
    spend = Spend()
    spend.add("m1", "claude-sonnet-4", {"input_tokens": 100, "output_tokens": 1})
    spend.add("m1", "claude-sonnet-4", {"input_tokens": 100, "output_tokens": 40, "cache_read_input_tokens": 7})
    spend.add("m2", "claude-sonnet-4", {"input_tokens": 50, "output_tokens": 5, "cache_creation_input_tokens": 3})
    assert spend.tokens() == {"input": 150, "output": 45, "cache_read": 7, "cache_creation": 3}
