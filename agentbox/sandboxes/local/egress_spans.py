"""The egress proxy's spans: one per connection decision, exported as OTLP/HTTP protobuf, standard library only.

The egress proxy imports nothing but the standard library (it runs as `python -I -S`), so the few messages of OTLP's
trace schema it sends are encoded here by hand (varints, length-delimited fields, fixed64 times). Spans are batched
and posted from a thread once a second and when the proxy stops. A span's parent is the request's own `traceparent`
(Claude Code puts its span on its model and MCP requests) or, for tunnels, which carry none, the run's.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
import urllib.request
from typing import Any

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2
FLUSH_EVERY = 1.0  # seconds
MAX_QUEUED = 2048  # spans kept while the endpoint cannot be reached; older ones are dropped


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def fixed64(number: int, value: int) -> bytes:
    return varint(number << 3 | 1) + struct.pack("<Q", value)


def enum(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def any_value(value: Any) -> bytes:
    """An OTLP AnyValue: string (1), bool (2), int (3), double (4)."""
    if isinstance(value, bool):
        return enum(2, int(value))
    if isinstance(value, int):
        return enum(3, value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return varint(4 << 3 | 1) + struct.pack("<d", value)
    return field(1, str(value).encode())


def attributes(number: int, values: dict[str, Any]) -> bytes:
    return b"".join(field(number, field(1, k.encode()) + field(2, any_value(v))) for k, v in values.items())


def encode_span(span: dict[str, Any]) -> bytes:
    out = field(1, span["trace_id"]) + field(2, span["span_id"])
    if span.get("parent_id"):
        out += field(4, span["parent_id"])
    out += field(5, span["name"].encode()) + enum(6, SPAN_KIND_CLIENT)
    out += fixed64(7, span["start"]) + fixed64(8, span["end"]) + attributes(9, span["attributes"])
    if span.get("error"):
        out += field(15, field(2, span["error"].encode()) + enum(3, STATUS_ERROR))
    return out


def export_request(resource: dict[str, Any], spans: list[dict[str, Any]]) -> bytes:
    """ExportTraceServiceRequest { ResourceSpans { Resource, ScopeSpans { scope, spans } } }."""
    scope = field(1, field(1, b"agentbox.egress"))
    scope_spans = field(2, scope + b"".join(field(2, encode_span(s)) for s in spans))
    return field(1, field(1, attributes(1, resource)) + scope_spans)


def parse_traceparent(value: str | None) -> tuple[bytes, bytes] | None:
    """(trace id, parent span id) of a W3C traceparent, or None."""
    match = TRACEPARENT.match((value or "").strip().lower())
    if not match or set(match.group(1)) == {"0"}:
        return None
    return bytes.fromhex(match.group(1)), bytes.fromhex(match.group(2))


class EgressSpans:
    """Spans of one egress proxy, from the `telemetry` part of its config (endpoint, headers, traceparent,
    attributes)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.url = config["endpoint"].rstrip("/") + "/v1/traces"
        self.headers = {**config.get("headers", {}), "Content-Type": "application/x-protobuf"}
        self.parent = parse_traceparent(config.get("traceparent"))
        self.resource = {**config.get("attributes", {}), "service.name": "agentbox-egress"}
        self.queue: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="egress-spans", daemon=True)
        self.thread.start()

    def start(self, name: str, values: dict[str, Any], traceparent: str | None = None) -> dict[str, Any]:
        """A span begun now, under the request's traceparent if it carries one, else the run's."""
        trace_id, parent_id = parse_traceparent(traceparent) or self.parent or (os.urandom(16), b"")
        return {"trace_id": trace_id, "span_id": os.urandom(8), "parent_id": parent_id, "name": name,
                "start": time.time_ns(), "attributes": {k: v for k, v in values.items() if v is not None}}

    def end(self, span: dict[str, Any], error: str | None = None, **values: Any) -> None:
        span.update(end=time.time_ns(), error=error)
        span["attributes"].update(values)
        with self.lock:
            self.queue.append(span)
            del self.queue[:-MAX_QUEUED]

    def flush(self) -> None:
        with self.lock:
            spans, self.queue = self.queue, []
        if not spans:
            return
        request = urllib.request.Request(self.url, data=export_request(self.resource, spans), headers=self.headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        except OSError as exc:  # the endpoint is down: these spans are lost, the proxy goes on
            print(f"egress: could not export {len(spans)} span(s): {exc}", flush=True)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=15)
        self.flush()

    def _loop(self) -> None:
        while not self.stopping.wait(FLUSH_EVERY):
            self.flush()
