"""The supervisor of one local sandbox: runs its gateway and enforces its TTL.

Started by the local backend as `python -m agentbox.sandboxes.supervisor <state dir>`. It forks into the background
(a new session, so `killpg` on its pid takes the gateway too), writes its pid, starts the sandbox's gateway under
bubblewrap and its egress proxy, then waits for SIGTERM or the TTL, whichever comes first, and kills the sandbox:
no sandbox outlives its TTL even if the flow that made it died without a word.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from agentbox.sandboxes.local import EGRESS, kill_state

EGRESS_READY_WITHIN = 10.0


def start_egress(state: Path) -> subprocess.Popen:
    """The sandbox's egress proxy, on the host; returns once its sockets exist (commands need them at once)."""
    with open(state / "egress.log", "ab") as log:
        egress = subprocess.Popen(
            [sys.executable, "-I", "-S", str(EGRESS), str(state / "egress.json")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
        )
    (state / "egress.pid").write_text(str(egress.pid))
    deadline = time.monotonic() + EGRESS_READY_WITHIN
    sockets = [state / "net" / name for name in ("proxy.sock", "model.sock", "gateway.sock")]
    while not all(s.exists() for s in sockets):
        if egress.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the egress proxy did not start: " + (state / "egress.log").read_text()[-500:])
        time.sleep(0.005)
    return egress


def start_gateway(state: Path) -> subprocess.Popen:
    """The sandbox's gateway, under bubblewrap; started first, since it takes the longest (imports, MCP servers)."""
    info = json.loads((state / "sandbox.json").read_text())
    env = json.loads((state / "gateway_env.json").read_text())
    (state / "gateway_env.json").unlink()  # the token now lives only in this process and the gateway
    with open(state / "gateway.log", "ab") as log:
        gateway = subprocess.Popen(
            info["gateway_argv"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/"
        )
    (state / "gateway.pid").write_text(str(gateway.pid))
    return gateway


def supervise(state: Path, gateway: subprocess.Popen, egress: subprocess.Popen) -> None:
    info = json.loads((state / "sandbox.json").read_text())
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    expires = datetime.fromisoformat(info["expires_at"])
    remaining = (expires - datetime.now(timezone.utc)).total_seconds()
    while remaining > 0:
        if signal.sigtimedwait({signal.SIGTERM, signal.SIGINT, signal.SIGHUP}, min(remaining, 3600)):
            break
        gateway.poll()  # reap a gateway that died; the sandbox lives on without it, as on E2B
        remaining = (expires - datetime.now(timezone.utc)).total_seconds()
    for helper in (gateway, egress):
        helper.kill()
        helper.wait()
    kill_state(state)  # commands and state; this process exits right after


def main() -> int:
    state = Path(sys.argv[1]).resolve()
    read_fd, write_fd = os.pipe()
    if os.fork():  # the launcher: wait until the supervisor says it is up, then exit so nobody must reap it
        os.close(write_fd)
        ok = os.read(read_fd, 1) == b"1"
        return 0 if ok else 1
    os.close(read_fd)
    os.setsid()
    (state / "supervisor.pid").write_text(str(os.getpid()))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    gateway = None
    try:
        gateway = start_gateway(state)
        egress = start_egress(state)
    except BaseException as exc:  # noqa: BLE001 - said in the log; the launcher reports the failure
        print(exc, file=sys.stderr, flush=True)
        if gateway is not None:
            gateway.kill()
            gateway.wait()
        os._exit(1)
    os.write(write_fd, b"1")
    os.close(write_fd)
    try:
        supervise(state, gateway, egress)
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
