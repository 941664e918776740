"""Writing a sandbox's state before its processes start: its directories, and the files its supervisor, gateway,
egress proxy and commands read."""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agentbox.host import free_port
from agentbox.sandboxes.base import Network
from agentbox.sandboxes.local.bwrap import base_env, bwrap_argv, needed_paths, write_identity_files
from agentbox.sandboxes.local.network import egress_config, inside_env, sandbox_routes
from agentbox.sandboxes.local.owners import prepare_private_dirs, write_private
from agentbox.policy import WRITES_BY_VERB
from agentbox.sandboxes.local.state import SandboxState
from agentbox.secrets import looks_secret
from agentbox.telemetry.config import SANDBOX_ATTRIBUTE, Telemetry

GATEWAY_DIR = "/run/agentbox"  # the gateway's config, read-only
AUDIT_DIR = "/run/agentbox-audit"  # the gateway's call log, writable by the gateway only


def make_state(state: SandboxState) -> None:
    """Make a new sandbox's state directory, with its private directories and its identity files (its processes
    come later)."""
    state.make_dirs()
    prepare_private_dirs(state)
    write_identity_files(state)


def gateway_argv(state: SandboxState, *options: str) -> list[str]:
    """The sandbox's gateway under bubblewrap: its config read-only, its call log the only place it writes."""
    return bwrap_argv(state, needed_paths(), ["--tmpfs", "/run", "--ro-bind", str(state.gateway), GATEWAY_DIR,
                                              "--bind", str(state.audit), AUDIT_DIR, "--",
                                              sys.executable, "-m", "agentbox.gateway", *options])


def prepare_sandbox(
    state: SandboxState,
    mcp_config: dict,
    envs: dict[str, str],
    ttl_seconds: int,
    metadata: dict[str, str],
    tools: list[str] | None,
    network: Network,
    catalog_file: Path | None,
    lease_seconds: int | None = None,
    writes: list[str] | None = None,
    secret_patterns: bool = True,
    telemetry: Telemetry | None = None,
) -> dict:
    """Write what the supervisor and later commands need, secrets only in files only the owner can read; the
    sandbox's info (as its `info_file` holds it)."""
    port = free_port()
    token = secrets.token_urlsafe(24)
    write_private(state.mcp_config, json.dumps(mcp_config))
    write_private(state.token_file, token)
    write_private(state.env_file, json.dumps(inside_env(envs)))
    traced = telemetry.for_process(**{SANDBOX_ATTRIBUTE: state.id}) if telemetry else None
    write_private(state.egress_config_file, json.dumps(egress_config(state, envs, network, port, token, traced)))
    gateway_args = ["--config", f"@{GATEWAY_DIR}/{state.MCP_CONFIG}", "--host", "127.0.0.1", "--port", str(port)]
    if catalog_file:
        shutil.copyfile(catalog_file, state.catalog)
        gateway_args += ["--catalog", f"{GATEWAY_DIR}/{state.CATALOG}"]
    if tools is not None:
        gateway_args += ["--tools", ",".join(tools)]
    gateway_args += ["--writes", WRITES_BY_VERB if writes is None else ",".join(writes)]
    if not secret_patterns:
        gateway_args.append("--no-secret-patterns")
    created = datetime.now(timezone.utc)
    info = {
        "id": state.id,
        "metadata": {k: str(v) for k, v in metadata.items()},
        "created_at": created.isoformat(),
        "expires_at": (created + timedelta(seconds=ttl_seconds)).isoformat(),
        "gateway_port": port,
        "gateway_args": gateway_args,
        "routes": sandbox_routes(port, telemetry=traced is not None),
        "telemetry": traced is not None,
        "gateway_argv": gateway_argv(state, *gateway_args),
    }
    if lease_seconds:  # before the info: a supervisor that finds the info finds the lease
        state.write_lease(created + timedelta(seconds=min(lease_seconds, ttl_seconds)))
    write_private(state.info_file, json.dumps(info))
    gateway_env = {
        **base_env(),
        "GATEWAY_ACCESS_TOKEN": token,
        "GATEWAY_CALL_LOG": f"{AUDIT_DIR}/{state.CALL_LOG}",
        "GATEWAY_SECRET_VALUES": json.dumps([v for k, v in envs.items() if looks_secret(k)]),
        **({"GATEWAY_TELEMETRY": json.dumps(traced)} if traced else {}),  # GATEWAY_*: its MCP servers never see it
    }
    write_private(state.gateway_env_file, json.dumps(gateway_env))
    return info
