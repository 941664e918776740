"""The supervisor of one local sandbox: runs its gateway and enforces its TTL.

Started by the local backend as `python -m agentbox.sandboxes.supervisor <state dir>`. It forks into the background
(a new session, so `killpg` on its pid takes the gateway too), writes its pid, starts the sandbox's gateway under
bubblewrap and its egress proxy, then waits for SIGTERM or the TTL, whichever comes first, and kills the sandbox:
no sandbox outlives its TTL even if the flow that made it died without a word.

With `--spare` it supervises a warm spare instead (LOCAL_WARM_GATEWAY): the gateway starts at once with no options
and imports; a create that claims the spare signals SIGUSR1, and the supervisor hands the gateway its options, starts
the egress proxy and goes on as above. A spare nobody claims within SPARE_TTL_SECONDS, or one stopped, removes
itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from agentbox.sandboxes.local import (
    EGRESS,
    EGRESS_READY_WITHIN,
    SPARE_MARKER,
    SPARE_TTL_SECONDS,
    egress_ready,
    kill_state,
)


def _unblocked() -> None:
    """A child's signal mask, emptied: a spare's supervisor blocks the signals it waits for, and children inherit
    the mask (a gateway or egress proxy that ignored SIGTERM would only stop at the kill that follows)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def start_egress(state: Path) -> subprocess.Popen:
    """The sandbox's egress proxy, on the host; returns once its sockets exist (commands need them at once)."""
    with open(state / "egress.log", "ab") as log:
        egress = subprocess.Popen(
            [sys.executable, "-I", "-S", str(EGRESS), str(state / "egress.json")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", preexec_fn=_unblocked,
        )
    (state / "egress.pid").write_text(str(egress.pid))
    deadline = time.monotonic() + EGRESS_READY_WITHIN
    while not egress_ready(state):
        if egress.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the egress proxy did not start: " + (state / "egress.log").read_text()[-500:])
        time.sleep(0.005)
    return egress


def take_gateway_env(state: Path) -> dict[str, str]:
    """The gateway's environment, token included; its file goes at once, so the token then lives only in this
    process and the gateway."""
    env = json.loads((state / "gateway_env.json").read_text())
    (state / "gateway_env.json").unlink()
    return env


def spawn_gateway(state: Path, argv: list[str], env: dict[str, str], stdin: int) -> subprocess.Popen:
    with open(state / "gateway.log", "ab") as log:
        gateway = subprocess.Popen(argv, env=env, stdin=stdin, stdout=log, stderr=log, cwd="/",
                                   preexec_fn=_unblocked)
    (state / "gateway.pid").write_text(str(gateway.pid))
    return gateway


def start_gateway(state: Path) -> subprocess.Popen:
    """The sandbox's gateway, under bubblewrap; started first, since it takes the longest (imports, MCP servers)."""
    info = json.loads((state / "sandbox.json").read_text())
    return spawn_gateway(state, info["gateway_argv"], take_gateway_env(state), subprocess.DEVNULL)


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


def start_spare_gateway(state: Path) -> subprocess.Popen:
    """A warm spare's gateway (`--stdin-config`): it imports while nobody waits, and gets its options on stdin."""
    spare = json.loads((state / "spare.json").read_text())
    gateway = spawn_gateway(state, spare["gateway_argv"], spare["env"], subprocess.PIPE)
    marker = state / "spare.new"
    marker.write_text(spare["fingerprint"])
    marker.rename(state / SPARE_MARKER)  # now claimable, all at once
    return gateway


def claimed(state: Path) -> bool:
    """Wait for a claim (SIGUSR1, from the process that renamed the marker away); False when stopped, when its state
    is gone (its root removed, say), or idle for SPARE_TTL_SECONDS, unless a claim won the marker at that moment."""
    deadline = time.monotonic() + SPARE_TTL_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        got = signal.sigtimedwait({signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}, min(remaining, 2))
        if got is not None:
            return got.si_signo == signal.SIGUSR1
        if not (state / "spare.json").exists():
            return False
    try:
        (state / SPARE_MARKER).rename(state / "spare.expired")
    except FileNotFoundError:  # claimed just now: its claimer signals at once
        return signal.sigtimedwait({signal.SIGUSR1}, 10) is not None
    return False


def configure(state: Path, gateway: subprocess.Popen) -> None:
    """Hand a claimed spare's gateway its options and environment (token included), then forget them."""
    info = json.loads((state / "sandbox.json").read_text())
    request = {"args": info["gateway_args"], "env": take_gateway_env(state)}
    gateway.stdin.write(json.dumps(request).encode() + b"\n")
    gateway.stdin.close()


def main() -> int:
    state = Path(sys.argv[1]).resolve()
    spare = sys.argv[2:] == ["--spare"]
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
        if spare:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
            gateway = start_spare_gateway(state)
            os.write(write_fd, b"1")
            os.close(write_fd)
            write_fd = None
            if not claimed(state):
                gateway.kill()
                gateway.wait()
                shutil.rmtree(state, ignore_errors=True)
                os._exit(0)
            configure(state, gateway)
        else:
            gateway = start_gateway(state)
        egress = start_egress(state)
    except BaseException as exc:  # noqa: BLE001 - said in the log; the launcher (or the claimer) reports it
        print(exc, file=sys.stderr, flush=True)
        if gateway is not None:
            gateway.kill()
            gateway.wait()
        if spare and not (state / "sandbox.json").exists():  # a spare nobody claimed leaves nothing behind
            shutil.rmtree(state, ignore_errors=True)
        os._exit(1)
    if write_fd is not None:
        os.write(write_fd, b"1")
        os.close(write_fd)
    try:
        supervise(state, gateway, egress)
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
