"""E2B's control plane (REST, `E2B_API_URL`): create, list, get, connect, set_timeout, kill.

Only what the SDK's generated client needs, in its shapes: camelCase bodies, errors as `{"code": int, "message":
str}` (the SDK parses every documented error status with both keys required), the `Idempotency-Key` header, list
paging with the `x-next-token` header. Injected `api_error` faults answer before the API key is checked; the SDK
retries 429/502/503/504 by itself unless the answer carries `Should-Retry: false`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from datetime import timedelta

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.e2b_standin.state import ENVD_VERSION, RecordedRequest, Sandbox, State, now

SECRET_HEADERS = {"x-api-key", "authorization", "x-access-token"}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers)


def iso(dt) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def sandbox_body(sbx: Sandbox) -> dict:
    """The `Sandbox` model: answer to create (201) and connect (200; 201 would mean "resumed from pause")."""
    return {
        "templateID": sbx.template,
        "sandboxID": sbx.id,
        "clientID": "e2b-standin",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": sbx.envd_token,
        "trafficAccessToken": None,
        "domain": sbx.domain,
    }


def listed_body(sbx: Sandbox) -> dict:
    return {
        "templateID": sbx.template,
        "alias": sbx.template,
        "sandboxID": sbx.id,
        "clientID": "e2b-standin",
        "startedAt": iso(sbx.created_at),
        "endAt": iso(sbx.end_at),
        "cpuCount": 2,
        "memoryMB": 512,
        "diskSizeMB": 1024,
        "state": "running",
        "envdVersion": ENVD_VERSION,
        "metadata": sbx.metadata,
    }


def detail_body(sbx: Sandbox) -> dict:
    return {
        **listed_body(sbx),
        "envdAccessToken": sbx.envd_token,
        "domain": sbx.domain,
        "allowInternetAccess": sbx.allow_internet_access,
        "lifecycle": {
            "onTimeout": "pause" if sbx.lifecycle.get("autoPause") else "kill",
            "autoResume": bool((sbx.lifecycle.get("autoResume") or {}).get("enabled", False)),
        },
    }


def page_token(sbx: Sandbox) -> str:
    return base64.urlsafe_b64encode(f"{sbx.created_at.timestamp():.6f}|{sbx.id}".encode()).decode()


def after_token(token: str) -> tuple[float, str]:
    ts, sid = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
    return float(ts), sid


def metadata_query(raw: str | None) -> dict[str, str]:
    """The SDK sends `metadata=urlencode({quote(k): quote(v)})`: decode the query, then each side once more."""
    if not raw:
        return {}
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in urllib.parse.parse_qsl(raw)}


def target_metadata(state: State, path: str, body: object) -> dict[str, str] | None:  # body: parsed JSON
    """The metadata of the sandbox a request is about: the create body's, or the named sandbox's."""
    if path == "/v2/sandboxes" and isinstance(body, dict):
        return body.get("metadata")
    parts = path.strip("/").split("/")
    sandbox_id = parts[parts.index("sandboxes") + 1] if "sandboxes" in parts[:-1] else None
    known = state.sandboxes.get(sandbox_id or "")
    return known.metadata if known else None


def path_matches(pattern: str, path: str) -> bool:
    """A fault's path: exact, or a prefix when it ends with "/" ("/sandboxes/" hits every sandbox)."""
    return path.startswith(pattern) if pattern.endswith("/") else path == pattern


class ControlPlane:
    def __init__(self, state: State) -> None:
        self.state = state

    def _find(self, request: Request) -> Sandbox | None:
        return self.state.live(request.path_params["sandbox_id"])

    @staticmethod
    def _not_found(request: Request) -> JSONResponse:
        sid = request.path_params["sandbox_id"]
        return error(404, f'sandbox "{sid}" doesn\'t exist or you don\'t have access to it')

    async def create(self, request: Request) -> Response:
        body = await request.json()
        key = request.headers.get("idempotency-key")
        if key and (known := self.state.live(self.state.idempotency.get(key))):
            return JSONResponse(sandbox_body(known), status_code=201)  # a replay: the same sandbox
        if "templateID" not in body:
            return error(400, "templateID is required")
        return JSONResponse(sandbox_body(self.state.create(body, key)), status_code=201)

    async def list(self, request: Request) -> Response:
        q = request.query_params
        wanted = metadata_query(q.get("metadata"))
        states = set((q.get("state") or "running,paused").split(","))
        limit = min(int(q.get("limit") or self.state.page_size), self.state.page_size)  # pages of page_size at most
        items = sorted((s for s in self.state.sandboxes.values() if s.alive), key=lambda s: (s.created_at, s.id))
        items = [s for s in items if "running" in states and all(s.metadata.get(k) == v for k, v in wanted.items())]
        if q.get("template"):
            items = [s for s in items if s.template == q["template"]]
        if token := q.get("nextToken"):
            try:
                after = after_token(token)
            except ValueError:
                return error(400, "invalid nextToken")
            items = [s for s in items if (s.created_at.timestamp(), s.id) > after]
        page, rest = items[:limit], items[limit:]
        headers = {"x-next-token": page_token(page[-1])} if rest else {}
        return JSONResponse([listed_body(s) for s in page], headers=headers)

    async def get(self, request: Request) -> Response:
        sbx = self._find(request)
        return JSONResponse(detail_body(sbx)) if sbx else self._not_found(request)

    async def delete(self, request: Request) -> Response:
        sbx = self._find(request)
        if not sbx:
            return self._not_found(request)
        await self.state.kill(sbx, "killed")
        return Response(status_code=204)

    async def set_timeout(self, request: Request) -> Response:
        sbx = self._find(request)
        if not sbx:
            return self._not_found(request)
        body = await request.json()
        sbx.end_at = now() + timedelta(seconds=int(body["timeout"]))
        self.state.schedule_ttl(sbx)
        return Response(status_code=204)

    async def connect(self, request: Request) -> Response:
        sbx = self._find(request)
        if not sbx:
            return self._not_found(request)
        body = json.loads(await request.body() or b"{}")
        if "timeout" in body:  # connecting only ever extends a running sandbox's life
            new_end = now() + timedelta(seconds=int(body["timeout"]))
            if new_end > sbx.end_at:
                sbx.end_at = new_end
                self.state.schedule_ttl(sbx)
        return JSONResponse(sandbox_body(sbx), status_code=200)

    def app(self):
        routes = Starlette(routes=[
            Route("/v2/sandboxes", self.create, methods=["POST"]),
            Route("/v2/sandboxes", self.list, methods=["GET"]),
            Route("/sandboxes/{sandbox_id}", self.get, methods=["GET"]),
            Route("/sandboxes/{sandbox_id}", self.delete, methods=["DELETE"]),
            Route("/sandboxes/{sandbox_id}/timeout", self.set_timeout, methods=["POST"]),
            Route("/v2/sandboxes/{sandbox_id}/connect", self.connect, methods=["POST"]),
        ])
        state = self.state

        async def asgi(scope, receive, send):
            """Log the request, answer an injected fault or a wrong API key, else route."""
            if scope["type"] != "http":
                return
            raw = b""
            while True:
                message = await receive()
                raw += message.get("body", b"")
                if not message.get("more_body"):
                    break
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": raw, "more_body": False}
                return await receive()

            status = 0

            async def send_status(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            request = Request(scope)
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            try:
                metadata = target_metadata(state, scope["path"], body)
                fault = next((f for f in state.faults if f.kind in ("api_error", "create_error", "slow_create")
                              and f.params["method"] == scope["method"] and path_matches(f.params["path"], scope["path"])
                              and f.concerns(metadata) and f.take()), None)
                if fault is not None and fault.kind == "slow_create":
                    await asyncio.sleep(fault.params["delay_seconds"])
                    fault = None
                if fault is not None:
                    headers = {}
                    if fault.params.get("should_retry") is not None:
                        headers["Should-Retry"] = "true" if fault.params["should_retry"] else "false"
                    if fault.params.get("retry_after") is not None:
                        headers["Retry-After"] = f"{fault.params['retry_after']:g}"
                    answer = error(fault.params["status"], fault.params["message"], headers)
                elif request.headers.get("x-api-key") != state.api_key:
                    answer = error(401, "Invalid API key")
                else:
                    answer = routes
                await answer(scope, replay, send_status)
            finally:
                state.requests.append(RecordedRequest(
                    method=scope["method"], path=scope["path"],
                    query=dict(urllib.parse.parse_qsl(scope["query_string"].decode())),
                    headers={k: ("<redacted>" if k in SECRET_HEADERS else v) for k, v in request.headers.items()},
                    json=body, status=status,
                ))

        return asgi
