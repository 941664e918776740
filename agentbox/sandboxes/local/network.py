"""A sandbox's network: none of its own, and one way out, its egress proxy.

Commands have no network of their own: each runs in a fresh network namespace with only a loopback interface, where
`jailnet` listens on three ports (the gateway's, the model API's, an HTTP proxy's) and relays them over unix sockets
to the sandbox's egress proxy on the host (`egress`). That proxy adds the gateway token and the model key on the way
out (inside there are only placeholders) and lets the forward proxy reach only the hosts the run policy allows. The
gateway itself runs in the host's network (it must reach the MCP servers' APIs) on a loopback port.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from agentbox.claude import MODEL_KEY_ENV, MODEL_URL_ENV
from agentbox.sandboxes.base import Network
from agentbox.sandboxes.local.state import SandboxState

NET_DIR = "/run/agentbox-net"  # the egress proxy's sockets, bound into every command's sandbox
PROXY_INSIDE = "127.0.0.1:3128"  # HTTP(S)_PROXY inside
MODEL_INSIDE = "127.0.0.1:8788"  # ANTHROPIC_BASE_URL inside
TELEMETRY_INSIDE = "127.0.0.1:4318"  # Claude Code's OTEL_EXPORTER_OTLP_ENDPOINT inside (OTLP/HTTP's usual port)
PLACEHOLDER = "agentbox-placeholder-the-egress-proxy-adds-the-real-one"
JAILNET = Path(__file__).with_name("jailnet.py")
EGRESS = Path(__file__).with_name("egress.py")
EGRESS_READY_WITHIN = 10.0  # seconds from the egress proxy's start (or a spare's wake-up) to its sockets


def route(inside: str, socket: str) -> str:
    """`jailnet`'s route from the loopback address `inside` to the egress proxy's socket named `socket`."""
    return f"{inside}={NET_DIR}/{socket}"


def sandbox_routes(gateway_port: int, telemetry: bool = False) -> list[str]:
    """A sandbox's ways out: its forward proxy, the model API, its gateway (on the host's `gateway_port`) and, with
    tracing on, the telemetry endpoint."""
    routes = [route(PROXY_INSIDE, SandboxState.PROXY_SOCKET), route(MODEL_INSIDE, SandboxState.MODEL_SOCKET),
              route(f"127.0.0.1:{gateway_port}", SandboxState.GATEWAY_SOCKET)]
    return routes + ([route(TELEMETRY_INSIDE, SandboxState.TELEMETRY_SOCKET)] if telemetry else [])


def offline(state: SandboxState, routes: list[str], command: list[str]) -> list[str]:
    """bwrap's last arguments (options, `--` and the command) that run `command` in a network namespace of its own,
    whose only ways out are `routes` to the sandbox's egress proxy sockets (see `jailnet`)."""
    return ["--unshare-net", "--ro-bind", str(state.net), NET_DIR, "--",
            sys.executable, "-I", "-S", str(JAILNET), *routes, "--", *command]


def inside_env(envs: dict[str, str]) -> dict[str, str]:
    """The commands' environment: the model reached through the egress proxy, with a placeholder key; every other
    program's HTTP(S) through its forward proxy."""
    proxy = f"http://{PROXY_INSIDE}"
    inside = {**envs, MODEL_URL_ENV: f"http://{MODEL_INSIDE}"}
    if MODEL_KEY_ENV in envs:
        inside[MODEL_KEY_ENV] = PLACEHOLDER
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        inside[name] = proxy
    return inside


def egress_config(state: SandboxState, envs: dict[str, str], network: Network, port: int,
                  token: str, telemetry: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the sandbox's egress proxy serves (its sockets in the state's `net`): the forward proxy to the hosts
    `network` allows, and the model API and the gateway (on `port`) with their credentials added. With
    `telemetry` (tracing on: `Telemetry.for_process`), the telemetry endpoint too, with its headers added (Claude
    Code's export), and the proxy's own spans."""
    model_headers = {"x-api-key": envs[MODEL_KEY_ENV]} if MODEL_KEY_ENV in envs else {}
    config = {
        "directory": str(state.net),
        "proxy": SandboxState.PROXY_SOCKET,
        "allow": network.allow,
        "resolve": network.resolve,
        "log": str(state.egress_audit),
        "services": {
            "model API": {"socket": SandboxState.MODEL_SOCKET,
                          "upstream": envs.get(MODEL_URL_ENV) or network.model_url,
                          "headers": model_headers, "inside": MODEL_INSIDE},
            "gateway": {"socket": SandboxState.GATEWAY_SOCKET, "upstream": f"http://127.0.0.1:{port}",
                        "headers": {"Authorization": f"Bearer {token}"}, "inside": f"127.0.0.1:{port}"},
        },
    }
    if telemetry:
        config["telemetry"] = telemetry
        config["services"]["telemetry"] = {"socket": SandboxState.TELEMETRY_SOCKET, "upstream": telemetry["endpoint"],
                                           "headers": telemetry["headers"], "inside": TELEMETRY_INSIDE}
    return config


def egress_ready(state: SandboxState) -> bool:
    """Whether the sandbox's egress proxy has made its sockets (its commands need them)."""
    return all(socket.exists() for socket in state.sockets)
