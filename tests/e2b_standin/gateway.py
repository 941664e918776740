"""E2B's `mcp-gateway` command, played by this project's gateway.

After a create with `mcp`, the SDK runs `mcp-gateway --config '<json>'` (as root, `bash -l -c`, with
GATEWAY_ACCESS_TOKEN in the command's env) and expects it to exit 0 once the gateway serves on port 50005; a non-zero
exit makes `AsyncSandbox.create` kill the sandbox and raise `SandboxException("Failed to start MCP gateway: <stderr>")`.
Here the command starts `python -m agentbox.gateway` in the background, under the sandbox's bubblewrap, listening on
the sandbox's own loopback address, keeps the token where E2B does (/etc/mcp-gateway/.token, read by
`get_mcp_token()` after `connect()`), waits until the port opens, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import time

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from tests.e2b_standin.jail import GATEWAY_DIR, reap
from tests.e2b_standin.state import MCP_PORT, Sandbox, State

READY_WITHIN = 50.0  # under the SDK's 60 s default command timeout


def gateway_command(cmd: str, args: list[str]) -> list[str] | None:
    """The argv of `mcp-gateway ...` when that is what the SDK asked to run (`/bin/bash -l -c '<line>'`)."""
    if cmd != "/bin/bash" or len(args) != 3 or args[:2] != ["-l", "-c"]:
        return None
    with contextlib.suppress(ValueError):
        argv = shlex.split(args[2])
        if argv and argv[0] == "mcp-gateway":
            return argv
    return None


async def stop_gateway(state: State, sbx: Sandbox) -> None:
    """Kill the sandbox's gateway and wait until all of it is gone: what ran inside bwrap dies a moment after
    bwrap itself, and until then the old gateway still holds port 50005 (and would pass the readiness check)."""
    gw, sbx.gateway = sbx.gateway, None
    if gw is None:
        return
    if gw.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(gw.pid, signal.SIGKILL)
    await reap(sbx.dir / "gateway")  # only the gateway's bwrap names <state>/gateway
    deadline = time.monotonic() + 10
    while listening(sbx.domain) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # a process killed with its namespace may hold the socket a moment longer


def listening(host: str) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, MCP_PORT)) == 0


async def run_mcp_gateway(state: State, sbx: Sandbox, argv: list[str], envs: dict[str, str]) -> tuple[int, bytes]:
    """Play `mcp-gateway --config '<json>'`: (exit code, stderr)."""
    try:
        config = argv[argv.index("--config") + 1]
        json.loads(config)
    except (ValueError, IndexError):
        return 2, b"mcp-gateway: --config '<json>' is required\n"
    token = envs.get("GATEWAY_ACCESS_TOKEN", "")
    if not token:
        return 2, b"mcp-gateway: GATEWAY_ACCESS_TOKEN is not set\n"
    if fault := state.take_fault("gateway_error", metadata=sbx.metadata):
        return int(fault.params.get("exit_code", 1)), (fault.params["message"].rstrip("\n") + "\n").encode()

    await stop_gateway(state, sbx)  # run again (an idempotent create replayed): restart with the new token
    token_file = sbx.dir / "mcp-gateway" / ".token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    command = [sys.executable, "-m", "agentbox.gateway", "--config", config, "--host", sbx.domain,
               "--port", str(MCP_PORT)]
    catalog = state.catalog_file or os.environ.get("LOCAL_MCP_CATALOG")
    if catalog:
        shutil.copyfile(catalog, sbx.dir / "gateway" / "catalog.json")
        command += ["--catalog", f"{GATEWAY_DIR}/catalog.json"]
    env = state.jail.env("root", sbx.envs, envs)
    log_path = sbx.dir / "gateway.log"
    with open(log_path, "ab") as log:
        sbx.gateway = gateway = await state.jail.spawn(
            state.jail.gateway_argv(sbx.dir, command), env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
        )
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if not sbx.alive:  # killed meanwhile; the gateway may have started after kill() looked
            sbx.gateway = gateway
            await stop_gateway(state, sbx)
            raise ConnectError(Code.UNAVAILABLE, f"the connection to sandbox {sbx.id} ended before the stream completed")
        if gateway.returncode is not None:
            tail = log_path.read_bytes()[-2000:]
            return 1, b"mcp-gateway: the gateway exited: " + tail
        if listening(sbx.domain):  # the address is this sandbox's alone, and the old gateway is gone: it is ours
            return 0, b""
        await asyncio.sleep(0.05)
    await stop_gateway(state, sbx)
    return 1, f"mcp-gateway: the gateway did not open port {MCP_PORT} within {READY_WITHIN:g} s\n".encode()
