"""A real OpenTelemetry trace store for the tests (Arize Phoenix, started here) and an OTLP recorder in front of it.

`TraceStore.start(directory)` runs `phoenix serve` in a network namespace of its own and reads traces back through
its REST API (`spans`, `trace_ids`) and its UI (`trace_url`, `screenshot`). Phoenix takes OTLP/HTTP traces in protobuf
only, and no metrics or logs. `OtlpRecorder` is what the code under test exports to: it keeps every OTLP/HTTP request
(traces, metrics, logs; protobuf or JSON; gzip or not), forwards the traces to the store, and decodes what it got
(`spans`, `metrics`, `log_records`, `raw`). Phoenix keeps only the project name (`openinference.project.name`) of a
span's resource and drops the other resource attributes: check those with `OtlpRecorder.spans()`.

Starting Phoenix takes 10-15 s and ~500 MB, so a session fixture wraps `running_trace_store`:

    @pytest.fixture(scope="session")
    def tracing(tmp_path_factory):
        with running_trace_store(tmp_path_factory.mktemp("tracing")) as tracing:
            yield tracing            # tracing.store, tracing.recorder; tracing.env("my-service") for a process
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agentbox.host import free_port

PHOENIX = Path(sys.executable).parent / "phoenix"
RELAY = Path(__file__).with_name("relay.py")
BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"
INNER_PORT = 6006  # Phoenix's HTTP port inside its namespace (its gRPC port there is its default, 4317)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As in tests/test_ui.py: as root and offline, no sandbox of Chromium's own and none of its background traffic.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
START_TIMEOUT = 90.0
MAX_BODY = 64 * 1024 * 1024
FORWARD_ATTEMPTS = 5  # a trace store that answers 5xx or cannot be reached is tried again, half a second apart


def _client(timeout: float = 10.0) -> httpx.Client:
    return httpx.Client(timeout=timeout, trust_env=False)  # loopback only: no proxy from the environment


def _log_tail(log: Path, chars: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError as error:
        return f"(no log: {error})"


# --- the trace store ------------------------------------------------------------------------------------------------


class TraceStore:
    """A running `phoenix serve`, in a network namespace of its own, reached at 127.0.0.1:`port` through a relay.

    Phoenix's gRPC port listens on all interfaces, with no setting to change that; in its own namespace (bubblewrap's
    --unshare-net) that is only the namespace's loopback. tests/relay.py carries its HTTP port out through a unix
    socket: nothing of Phoenix listens outside loopback.
    """

    def __init__(self, processes: list[subprocess.Popen], port: int, directory: Path, log: Path) -> None:
        self.processes = processes  # the relay here, then bwrap with Phoenix (and the relay there) inside
        self.port = port
        self.directory = directory
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.otlp_endpoint = self.url  # OTEL_EXPORTER_OTLP_ENDPOINT: exporters append /v1/traces
        self._project_ids: dict[str, str] = {}

    @classmethod
    def start(cls, directory: Path | str, timeout: float = START_TIMEOUT) -> TraceStore:
        """Start Phoenix with its database and log (`phoenix.log`) in `directory`; returned once /healthz answers."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        port, socket_path = free_port(), directory / "phoenix-http.sock"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OTEL_"))}
        env.update(PHOENIX_WORKING_DIR=str(directory / "phoenix"), PHOENIX_HOST="127.0.0.1",
                   PHOENIX_PORT=str(INNER_PORT), PHOENIX_TELEMETRY_ENABLED="false")
        log = directory / "phoenix.log"
        relay = [sys.executable, "-I", str(RELAY)]
        inside = [BWRAP, "--dev-bind", "/", "/", "--unshare-net", "--die-with-parent", "--",
                  *relay, f"{socket_path}=127.0.0.1:{INNER_PORT}", "--", str(PHOENIX), "serve"]
        processes = []
        with log.open("ab") as out:
            for command in ([*relay, f"127.0.0.1:{port}={socket_path}"], inside):
                processes.append(subprocess.Popen(command, cwd=directory, env=env, stdin=subprocess.DEVNULL,
                                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        store = cls(processes, port, directory, log)
        try:
            store._wait_healthy(timeout)
        except BaseException:
            store.stop()
            raise
        return store

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with _client(timeout=2) as client:
            while True:
                if (exited := next((p for p in self.processes if p.poll() is not None), None)) is not None:
                    what = "phoenix serve" if exited is self.processes[-1] else "the relay to Phoenix"
                    raise RuntimeError(f"{what} exited ({exited.returncode}) before answering; "
                                       f"{self.log}:\n{_log_tail(self.log)}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"phoenix serve did not answer /healthz within {timeout:.0f} s; "
                                       f"{self.log}:\n{_log_tail(self.log)}")
                time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM each process group (Phoenix's first), SIGKILL it after 15 s, and SIGKILL whatever of it is left."""
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(15)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # the leader or any child it left behind
            process.wait()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading back ---

    def _get(self, client: httpx.Client, path: str, **params: Any) -> httpx.Response:
        return client.get(f"{self.url}{path}", params={k: v for k, v in params.items() if v is not None})

    def _pages(self, client: httpx.Client, path: str, **params: Any) -> list[dict] | None:
        """Every item of a paginated v1 list; None when Phoenix answers 404 (the project does not exist yet)."""
        items: list[dict] = []
        cursor = None
        while True:
            response = self._get(client, path, cursor=cursor, **params)
            if response.status_code == 404:
                return None
            response.raise_for_status()
            body = response.json()
            items.extend(body["data"])
            cursor = body.get("next_cursor")
            if not cursor:
                return items

    def projects(self) -> dict[str, str]:
        """Project name → project id (a GlobalID such as "UHJvamVjdDox"), of the projects that exist now."""
        with _client() as client:
            projects = self._pages(client, "/v1/projects") or []
        self._project_ids.update({p["name"]: p["id"] for p in projects})
        return {p["name"]: p["id"] for p in projects}

    def project_id(self, project: str = "default", timeout: float = 30) -> str:
        if project not in self._project_ids:
            deadline = time.monotonic() + timeout
            while project not in self.projects():
                if time.monotonic() > deadline:
                    raise AssertionError(f"no project {project!r} in Phoenix after {timeout} s: {self.projects()}")
                time.sleep(0.2)
        return self._project_ids[project]

    def spans(self, trace_id: str, project: str = "default", expect: int | Callable[[list[dict]], bool] | None = None,
              timeout: float = 30) -> list[dict]:
        """All spans of a trace (32 hex digits), oldest first, as Phoenix's REST API gives them.

        Phoenix stores spans in the background after it answers the export, so this polls (for at most `timeout`
        seconds) until the project exists and: `expect` spans or more (an int), `expect(spans)` is true (a callable),
        or at least one span (None; `expect=0` returns as soon as the project exists). It fails with what it saw.
        """
        def enough(spans: list[dict]) -> bool:
            if expect is None:
                return len(spans) >= 1
            if callable(expect):
                return bool(expect(spans))
            return len(spans) >= expect

        path = f"/v1/projects/{quote(project, safe='')}/spans"
        deadline = time.monotonic() + timeout
        spans: list[dict] | None = None
        with _client() as client:
            while True:
                spans = self._pages(client, path, trace_id=trace_id, limit=1000)
                if spans is not None:
                    spans.sort(key=lambda s: (s["start_time"], s["name"]))
                    if enough(spans):
                        return spans
                if time.monotonic() > deadline:
                    seen = "no such project" if spans is None else f"{len(spans)} spans: {[s['name'] for s in spans]}"
                    raise AssertionError(f"trace {trace_id} in project {project!r} after {timeout} s: {seen} "
                                         f"(expected {expect!r})")
                time.sleep(0.2)

    def trace_ids(self, project: str = "default") -> list[str]:
        """The trace ids of a project, newest first; [] when the project does not exist."""
        with _client() as client:
            traces = self._pages(client, f"/v1/projects/{quote(project, safe='')}/traces", limit=1000) or []
        return [t["trace_id"] for t in traces]

    def trace_url(self, trace_id: str, project: str = "default") -> str:
        """The UI page of a trace (the project must exist already)."""
        return f"{self.url}/projects/{self.project_id(project)}/traces/{trace_id}"

    def screenshot(self, trace_id: str, path: Path | str, project: str = "default", timeout: float = 60,
                   select: str | None = None, showing: tuple[str, ...] = ()) -> Path:
        """A PNG (1400x900) of the trace's UI page in headless Chromium, taken once its root spans' names show; with
        `select`, after clicking the span of that name (its details then show), and once every text of `showing`
        is visible."""
        from playwright.sync_api import sync_playwright

        spans = self.spans(trace_id, project, timeout=timeout)
        roots = [s["name"] for s in spans if not s["parent_id"]] or [spans[0]["name"]]  # deep ones may be off-screen
        url = self.trace_url(trace_id, project)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(timeout * 1000)
                page.goto(url)
                for name in dict.fromkeys(roots):
                    page.get_by_text(name, exact=True).filter(visible=True).first.wait_for(state="visible")
                if select:
                    span = page.get_by_text(select, exact=True).first
                    span.scroll_into_view_if_needed()
                    span.click()
                for text in showing:
                    page.get_by_text(text, exact=True).filter(visible=True).first.wait_for(state="visible")
                with contextlib.suppress(Exception):  # the page is shown; a late request is no reason to fail
                    page.wait_for_load_state("networkidle", timeout=5000)
                page.screenshot(path=str(path))
            finally:
                browser.close()
        return path


# --- the OTLP recorder ----------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One OTLP/HTTP request as received: its path, headers (lowercase names) and body (decompressed)."""

    path: str
    headers: dict[str, str]
    body: bytes
    content_type: str
    forwarded: int | str | None = None  # Phoenix's status code, or the error forwarding met, for /v1/traces


REQUESTS = {"/v1/traces": ExportTraceServiceRequest, "/v1/metrics": ExportMetricsServiceRequest,
            "/v1/logs": ExportLogsServiceRequest}
_HEX_IDS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def _hex_ids_to_base64(value: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex where protobuf's JSON mapping expects base64: convert them."""
    if isinstance(value, dict):
        return {k: (base64.b64encode(bytes.fromhex(v)).decode() if k in _HEX_IDS and isinstance(v, str)
                    else _hex_ids_to_base64(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_hex_ids_to_base64(v) for v in value]
    return value


def decode_request(path: str, body: bytes, content_type: str) -> Any:
    """The Export*ServiceRequest of a recorded body (protobuf or OTLP/JSON)."""
    message = REQUESTS[path]()
    if content_type == JSON:
        json_format.Parse(json.dumps(_hex_ids_to_base64(json.loads(body or b"{}"))), message,
                          ignore_unknown_fields=True)
    else:
        message.ParseFromString(body)
    return message


def any_value(value: Any) -> Any:
    """An OTLP AnyValue as a plain Python value (str, int, float, bool, bytes, list, dict, or None)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in key_values}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stalls mid-request does not hold a thread for longer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(405, b"POST OTLP here\n")

    def do_POST(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():  # Claude Code's exporter (Node)
            body = self._read_chunks()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length <= MAX_BODY else None
        if body is None:
            self.close_connection = True
            return self._answer(413, b"too large\n")
        self._answer(*self.server.recorder.receive(self.path.split("?", 1)[0], dict(self.headers.items()), body))


    def _read_chunks(self) -> bytes | None:
        """A chunked request body, or None past MAX_BODY."""
        body = b""
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            body += self.rfile.read(size)
            self.rfile.readline()
            if len(body) > MAX_BODY:
                return None
        while self.rfile.readline().strip():  # trailers, up to the empty line
            pass
        return body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    recorder: OtlpRecorder

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (an exporter at its process's exit) is no error of the recorder's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class OtlpRecorder:
    """An OTLP/HTTP receiver on 127.0.0.1 that records every request and forwards traces to `store` (if any)."""

    store: TraceStore | None = None
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.recorder = self
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"  # OTEL_EXPORTER_OTLP_ENDPOINT
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"otlp-recorder-{self.port}", daemon=True)
        self._thread.start()
        self._outbox: queue.Queue = queue.Queue()
        self._released = threading.Event()
        self._released.set()
        self._forwarder = threading.Thread(target=self._forwarding, name=f"otlp-forwarder-{self.port}", daemon=True)
        self._forwarder.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        self._released.set()
        self._outbox.put(None)
        self._forwarder.join(10)

    def __enter__(self) -> OtlpRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def receive(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        """Record one OTLP/HTTP request (forwarding traces to the store); the status, body and content type to
        answer with."""
        if path not in REQUESTS:
            return 404, b"only /v1/traces, /v1/metrics and /v1/logs\n", "text/plain"
        headers = {k.lower(): v for k, v in headers.items()}
        content_type = (headers.get("content-type") or PROTOBUF).split(";", 1)[0].strip().lower()
        if content_type not in (PROTOBUF, JSON):
            return 415, f"unsupported content type {content_type}\n".encode(), "text/plain"
        encoding = (headers.get("content-encoding") or "identity").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding != "identity":
                return 415, f"unsupported content encoding {encoding}\n".encode(), "text/plain"
            message = decode_request(path, body, content_type)
        except Exception as error:  # noqa: BLE001 - a bad body is the client's error, answered as such
            return 400, f"undecodable {path} body: {error}\n".encode(), "text/plain"
        record = Recorded(path, headers, body, content_type)
        with self._lock:
            self.requests.append(record)
        if path == "/v1/traces" and self.store is not None:
            self._outbox.put((record, message))  # answered at once, forwarded in order: as a collector does
        if content_type == JSON:
            return 200, b"{}", JSON
        return 200, b"", PROTOBUF  # an empty Export*ServiceResponse serialises to no bytes

    def hold(self) -> None:
        """Keep what comes from now on, forwarding nothing until `release` (a benchmark keeps the store's work out
        of the run it times, as a store on another machine would)."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def _forwarding(self) -> None:
        """Forward what `receive` queued until the None that `stop` queues."""
        while (item := self._outbox.get()) is not None:
            self._released.wait()
            for _ in range(FORWARD_ATTEMPTS):
                if self._forward(*item):
                    break
                time.sleep(0.5)

    def _forward(self, record: Recorded, message: ExportTraceServiceRequest) -> bool:
        """Send a traces body on to the store (in protobuf: Phoenix takes nothing else); whether it took it (the
        outcome is kept in `record.forwarded`)."""
        assert self.store is not None
        body = record.body if record.content_type == PROTOBUF else message.SerializeToString()
        try:
            with _client() as client:
                response = client.post(f"{self.store.url}/v1/traces", content=body,
                                       headers={"Content-Type": PROTOBUF})
        except httpx.HTTPError as error:
            record.forwarded = f"{type(error).__name__}: {error}"
            return False
        record.forwarded = response.status_code
        return response.status_code == 200

    def clear(self) -> None:
        """Forget what was recorded so far (for a recorder a whole session shares)."""
        with self._lock:
            self.requests.clear()

    def recorded(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def _items(self, path: str, resources: str, scopes: str, items: str) -> Iterator[tuple[dict, str, Any]]:
        """(resource attributes, scope name, item) for every item (span, metric, log record) received on `path`,
        through OTLP's nesting: request → `resources` → `scopes` → `items`."""
        for record in self.recorded(path):
            for resource_block in getattr(decode_request(path, record.body, record.content_type), resources):
                resource = attributes(resource_block.resource.attributes)
                for scope_block in getattr(resource_block, scopes):
                    for item in getattr(scope_block, items):
                        yield resource, scope_block.scope.name, item

    def raw(self) -> bytes:
        """Every body received, decompressed, concatenated: scan it for what must never be exported."""
        return b"".join(r.body for r in self.recorded())

    def headers_seen(self) -> list[dict[str, str]]:
        """The headers of every request, in order (names in lowercase)."""
        return [dict(r.headers) for r in self.recorded()]

    def spans(self) -> list[dict]:
        """Every span received: name, trace_id, span_id, parent_span_id (hex; "" for a root), kind, status
        (code name), attributes, resource (attributes), scope (name)."""
        return [{"name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                 "parent_span_id": span.parent_span_id.hex(), "kind": Span.SpanKind.Name(span.kind),
                 "status": Status.StatusCode.Name(span.status.code), "attributes": attributes(span.attributes),
                 "resource": resource, "scope": scope}
                for resource, scope, span in self._items("/v1/traces", "resource_spans", "scope_spans", "spans")]

    def metrics(self) -> list[dict]:
        """Every data point received: name, unit, kind (sum, gauge, histogram, ...), value (the number, or the sum of
        a histogram or summary), attributes, resource (attributes), scope (name)."""
        points = []
        for resource, scope, metric in self._items("/v1/metrics", "resource_metrics", "scope_metrics", "metrics"):
            kind = metric.WhichOneof("data")
            if kind is None:
                continue
            for point in getattr(metric, kind).data_points:
                if kind in ("sum", "gauge"):
                    value = getattr(point, point.WhichOneof("value") or "as_int")
                else:
                    value = point.sum
                points.append({"name": metric.name, "unit": metric.unit, "kind": kind, "value": value,
                               "attributes": attributes(point.attributes), "resource": resource, "scope": scope})
        return points

    def log_records(self) -> list[dict]:
        """Every log record received: body, severity (text), attributes, resource (attributes), trace_id, span_id
        (hex, "" when none), scope (name)."""
        return [{"body": any_value(record.body), "severity": record.severity_text,
                 "attributes": attributes(record.attributes), "resource": resource, "trace_id": record.trace_id.hex(),
                 "span_id": record.span_id.hex(), "scope": scope}
                for resource, scope, record in self._items("/v1/logs", "resource_logs", "scope_logs", "log_records")]


# --- both, for a fixture ----------------------------------------------------------------------------------------------


def otel_env(endpoint: str, service: str | None = None) -> dict[str, str]:
    """The standard OpenTelemetry variables that point a process's OTLP/HTTP exporters at `endpoint`, exporting
    often (metrics every second, span and log batches after 200 ms)."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
    }
    if service is not None:
        env["OTEL_SERVICE_NAME"] = service
    return env


class Tracing(NamedTuple):
    store: TraceStore
    recorder: OtlpRecorder

    @property
    def endpoint(self) -> str:
        return self.recorder.endpoint

    def env(self, service: str | None = None) -> dict[str, str]:
        return otel_env(self.recorder.endpoint, service)


@contextlib.contextmanager
def running_trace_store(directory: Path | str, timeout: float = START_TIMEOUT) -> Iterator[Tracing]:
    """A Phoenix (logging to `directory`/phoenix.log) and a recorder forwarding to it, stopped on exit."""
    with TraceStore.start(directory, timeout) as store, OtlpRecorder(store) as recorder:
        yield Tracing(store, recorder)
