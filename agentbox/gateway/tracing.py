"""The gateway's spans, when its run is traced: one per MCP request (the MCP SDK's own server spans), in the run's
trace, with what the gateway decided about each tool call.

The sandbox hands the gateway its telemetry in GATEWAY_TELEMETRY (GATEWAY_* variables never reach its MCP servers).
A request's span joins, in this order: the `traceparent` in its `_meta` (an MCP client that propagates), the
`traceparent` header (Claude Code puts its tool span there), or the run's (the task that created the sandbox), which
is also the parent of what the gateway does as it starts (its MCP servers' start, its warm-up).
Arguments are described by size and key names only, never by value.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from opentelemetry import context, propagate
from pydantic import SecretStr

from agentbox.telemetry.config import Telemetry, key_values
from agentbox.telemetry.sdk import install_providers

TELEMETRY_ENV = "GATEWAY_TELEMETRY"
EXPORT_DELAY_MS = 250  # a sandbox's gateway is killed, not stopped: its spans leave within a quarter second


@dataclass
class GatewayTracing:
    """A traced gateway's: the endpoint's header values (secrets to keep out of tool calls), and the thread that
    installs its tracer provider while its MCP servers start (the SDK's imports and setup, off the critical path)."""

    secrets: list[str]
    installing: threading.Thread

    def wait_installed(self) -> None:
        self.installing.join()


def start_tracing() -> GatewayTracing | None:
    """When the gateway's run is traced: make the run's span the current one (every task the gateway starts from
    here inherits it) and install the tracer provider in a thread, joined before the gateway serves (what it does
    while it starts is traced once the provider is in: most of it). None when the run is not traced."""
    raw = os.environ.pop(TELEMETRY_ENV, None)
    if not raw:
        return None
    config = json.loads(raw)
    headers = config.get("headers") or {}
    telemetry = Telemetry(endpoint=config["endpoint"], headers=SecretStr(key_values(headers)) if headers else None,
                          metrics=False, attributes=config.get("attributes") or {})
    installing = threading.Thread(target=install_providers, args=(telemetry, "agentbox-gateway"),
                                  kwargs={"export_delay_ms": EXPORT_DELAY_MS}, name="tracing-setup", daemon=True)
    installing.start()
    if config.get("traceparent"):
        context.attach(propagate.extract({"traceparent": config["traceparent"]}))
    return GatewayTracing(list(headers.values()), installing)


class JoinRequestTrace:
    """Server middleware, outside the MCP SDK's span middleware: when a request's `_meta` carries no trace context,
    its span's parent is the request's `traceparent` header, if it has one (else the run's, the current one)."""

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        request = ctx.request
        header = request.headers.get("traceparent") if request is not None else None
        if not header or (ctx.meta and ctx.meta.get("traceparent")):
            return await call_next(ctx)
        token = context.attach(propagate.extract({"traceparent": header}))
        try:
            return await call_next(ctx)
        finally:
            context.detach(token)

