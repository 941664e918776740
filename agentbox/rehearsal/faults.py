"""Faults the stand-ins can inject, as rates with a seed: how a run copes when the clouds fail.

Each stand-in holds one `FaultInjector` (on `app.state.faults`, replaceable while it serves). A `Fault` says what
happens to a request (an HTTP error in the service's own shape, a slow first byte, an answer cut mid-way), to which
requests (`match`: text the request must contain, e.g. a repository or a session's prompt), how often (`rate`) and how
many times at most (`count`). Whether a fault hits a request is decided by the seed, the request's own key and how
often that key was seen, never by the order in which concurrent sessions arrive: the same seed hits the same
sessions in every run. What fired is kept in `fired`, so a test or a benchmark can say which request got which fault.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Message, Receive, Scope, Send

FaultKind = Literal["error", "slow", "cut"]


class Fault(BaseModel):
    """One fault a stand-in injects: `error` answers `status` (429s and 503s with `retry_after`), `slow` waits
    `delay_seconds` before the first byte, `cut` breaks the answer off half-way (streams) or drops the connection."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind = "error"
    status: int = Field(503, ge=400, le=599)
    message: str = "injected by the stand-in"
    retry_after: float | None = Field(None, ge=0, description="Seconds, sent as Retry-After (and rate-limit headers).")
    should_retry: bool | None = Field(None, description="Sent as the service's should-retry header when set.")
    delay_seconds: float = Field(0.0, ge=0, le=600)
    rate: float = Field(1.0, ge=0, le=1, description="Chance that a matching request is hit.")
    count: int | None = Field(None, ge=0, description="Hits at most this many requests (None: no limit).")
    match: str | None = Field(None, description="Only requests whose text contains this.")


class FaultInjector:
    """The armed faults of one stand-in, and the seeded dice that decide which requests they hit (thread-safe:
    stand-ins serve from threads of their own)."""

    def __init__(self, faults: Iterable[Fault | dict[str, Any]] = (), seed: int = 0) -> None:
        self.seed = seed
        self.faults = [Fault.model_validate(f) for f in faults]
        self.fired: list[dict[str, Any]] = []  # {"fault": index, "kind", "status", "target"} in firing order
        self._left = [f.count for f in self.faults]
        self._seen: Counter[tuple[int, str]] = Counter()
        self._lock = threading.Lock()

    def draw(self, text: str, key: str | None = None) -> Fault | None:
        """The fault that hits this request, if any. `text` is what `match` looks in; `key` names the request for the
        dice (the same request retried gets a new throw); it defaults to `text`."""
        if not self.faults:
            return None
        key = key or hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            for index, fault in enumerate(self.faults):
                if (fault.match and fault.match not in text) or self._left[index] == 0:
                    continue
                throw = self._seen[index, key]
                self._seen[index, key] += 1
                if fault.rate < 1 and random.Random(f"{self.seed}/{index}/{key}/{throw}").random() >= fault.rate:
                    continue
                if self._left[index] is not None:
                    self._left[index] -= 1
                self.fired.append({"fault": index, "kind": fault.kind, "status": fault.status,
                                   "target": text[:200]})
                return fault
        return None


def with_faults(app: Any, error_answer: ErrorAnswer) -> Any:
    """`app` (a Starlette app) with `FaultMiddleware` in front and no fault armed: set `app.state.faults`."""
    app.state.faults = FaultInjector()
    app.add_middleware(FaultMiddleware, state=app.state, error_answer=error_answer)
    return app


def retry_headers(fault: Fault, should_retry_header: str | None = None) -> dict[str, str]:
    """Retry-After (and the service's should-retry header) for an error fault."""
    headers = {}
    if fault.retry_after is not None:
        headers["retry-after"] = f"{fault.retry_after:g}"
    if should_retry_header and fault.should_retry is not None:
        headers[should_retry_header] = "true" if fault.should_retry else "false"
    return headers


ErrorAnswer = Callable[[Fault], tuple[dict[str, Any], dict[str, str]]]  # fault -> (JSON body, extra headers)


class FaultMiddleware:
    """ASGI middleware that lets a stand-in's `FaultInjector` (read from `state.faults`, the app's state, on every
    request, so it can be swapped while serving) hit requests before the app answers them. A request's text is its
    method, path, query and body; `error_answer` gives an error in the service's own shape."""

    def __init__(self, app: Any, state: Any, error_answer: ErrorAnswer) -> None:
        self.app = app
        self.state = state
        self.error_answer = error_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        injector: FaultInjector | None = getattr(self.state, "faults", None)
        if scope["type"] != "http" or injector is None or not injector.faults:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        query = scope.get("query_string", b"").decode()
        text = f"{scope['method']} {scope['path']}{'?' + query if query else ''} {body.decode(errors='replace')}"
        fault = injector.draw(text)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        if fault is None:
            return await self.app(scope, replay, send)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_seconds)
            return await self.app(scope, replay, send)
        if fault.kind == "cut":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"object": "li', "more_body": True})
            raise ConnectionResetError("cut by an injected fault")  # uvicorn drops the connection mid-answer
        payload, headers = self.error_answer(fault)
        raw = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": fault.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                                *((k.encode(), v.encode()) for k, v in headers.items())]})
        await send({"type": "http.response.body", "body": raw})
