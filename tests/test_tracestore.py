"""The tests' trace store (tests/tracestore.py) works: the real OpenTelemetry SDK's OTLP/HTTP exporters send spans and
metrics to the recorder, which keeps them and forwards the spans to a real Phoenix, which gives them back and shows
them in its UI."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.tracestore import running_trace_store


@pytest.fixture(scope="module")
def tracing(tmp_path_factory):
    started = time.monotonic()
    with running_trace_store(tmp_path_factory.mktemp("tracing")) as tracing:
        print(f"trace store up in {time.monotonic() - started:.1f} s")
        yield tracing


def send_trace(endpoint: str, project: str) -> str:
    """A parent span and its child, sent gzipped through the SDK's OTLP/HTTP exporter; the trace id."""
    resource = Resource.create({"openinference.project.name": project, "service.name": "tracestore-test",
                                "prefect.flow_run.id": "run-1"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", compression=Compression.Gzip)))
    tracer = provider.get_tracer("tests.test_tracestore")
    with tracer.start_as_current_span("flow run", attributes={"flow.name": "demo", "attempt": 1}) as parent:
        with tracer.start_as_current_span("tool call", attributes={"tool.name": "create_issue", "ok": True}):
            pass
    provider.shutdown()
    return format(parent.get_span_context().trace_id, "032x")


def test_spans_reach_the_store_and_the_recorder(tracing):
    trace_id = send_trace(tracing.endpoint, "t")

    spans = {s["name"]: s for s in tracing.store.spans(trace_id, "t", expect=2)}
    assert spans.keys() == {"flow run", "tool call"}
    parent, child = spans["flow run"], spans["tool call"]
    assert parent["context"]["trace_id"] == child["context"]["trace_id"] == trace_id
    assert parent["parent_id"] is None and child["parent_id"] == parent["context"]["span_id"]
    assert parent["attributes"] == {"flow.name": "demo", "attempt": 1}
    assert child["attributes"] == {"tool.name": "create_issue", "ok": True}
    assert child["status_code"] == "UNSET"
    assert trace_id in tracing.store.trace_ids("t")

    # Phoenix keeps no resource attributes; the recorder has them.
    recorded = {s["name"]: s for s in tracing.recorder.spans() if s["trace_id"] == trace_id}
    assert recorded["tool call"]["parent_span_id"] == recorded["flow run"]["span_id"]
    assert recorded["flow run"]["resource"]["prefect.flow_run.id"] == "run-1"
    assert any(h.get("content-encoding") == "gzip" for h in tracing.recorder.headers_seen())
    assert b"create_issue" in tracing.recorder.raw()


def test_otlp_json_is_recorded_and_forwarded(tracing):
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "openinference.project.name", "value": {"stringValue": "json"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": span_id, "name": "from json", "kind": 2,
            "startTimeUnixNano": str(time.time_ns() - 1_000_000), "endTimeUnixNano": str(time.time_ns()),
            "attributes": [{"key": "n", "value": {"intValue": "7"}}, {"key": "l", "value": {"arrayValue": {
                "values": [{"stringValue": "a"}, {"boolValue": True}]}}}],
        }]}],
    }]}
    response = httpx.post(f"{tracing.endpoint}/v1/traces", content=gzip.compress(json.dumps(body).encode()),
                          headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}, trust_env=False)
    assert response.status_code == 200 and response.json() == {}

    [span] = [s for s in tracing.recorder.spans() if s["trace_id"] == trace_id]
    assert span["span_id"] == span_id and span["kind"] == "SPAN_KIND_SERVER"
    assert span["attributes"] == {"n": 7, "l": ["a", True]}
    [stored] = tracing.store.spans(trace_id, "json")
    assert stored["name"] == "from json" and stored["context"]["span_id"] == span_id


def test_metrics_are_recorded(tracing):
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{tracing.endpoint}/v1/metrics"),
                                           export_interval_millis=60_000)
    provider = MeterProvider(resource=Resource.create({"service.name": "metrics-test"}), metric_readers=[reader])
    counter = provider.get_meter("tests.test_tracestore").create_counter("tool.calls", unit="1")
    counter.add(2, {"tool": "create_issue"})
    counter.add(3, {"tool": "create_issue"})
    provider.force_flush()
    provider.shutdown()

    points = [p for p in tracing.recorder.metrics() if p["resource"].get("service.name") == "metrics-test"]
    assert points, tracing.recorder.recorded("/v1/metrics")
    point = points[-1]
    assert {k: point[k] for k in ("name", "unit", "kind", "value", "attributes", "scope")} == {
        "name": "tool.calls", "unit": "1", "kind": "sum", "value": 5, "attributes": {"tool": "create_issue"},
        "scope": "tests.test_tracestore"}


def test_screenshot_of_a_trace(tracing, tmp_path):
    trace_id = send_trace(tracing.endpoint, "shots")
    tracing.store.spans(trace_id, "shots", expect=2)
    path = tracing.store.screenshot(trace_id, tmp_path / "trace.png", "shots")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 20_000


def host_listeners(session_ids: set[int]) -> set[tuple[str, int]]:
    """The TCP sockets listening in this network namespace that processes of these sessions hold, as (address, port)."""
    inodes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.getsid(int(pid)) in session_ids:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if (target := os.readlink(f"/proc/{pid}/fd/{fd}")).startswith("socket:["):
                            inodes.add(target[8:-1])
    listening = set()
    for table, family in (("/proc/self/net/tcp", socket.AF_INET), ("/proc/self/net/tcp6", socket.AF_INET6)):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].split(":")
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
                listening.add((socket.inet_ntop(family, raw), int(port, 16)))
    return listening


def test_nothing_of_the_store_listens_beyond_loopback(tracing):
    """Phoenix's gRPC port listens on every interface: it must do so only in the store's own network namespace."""
    assert host_listeners({p.pid for p in tracing.store.processes}) == {("127.0.0.1", tracing.store.port)}
