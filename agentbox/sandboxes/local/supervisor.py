"""The supervisor of one local sandbox: runs its gateway and enforces its TTL.

Started by the local backend as `python -m agentbox.sandboxes.local.supervisor <state dir>`. It forks into the
background (a new session, so `killpg` on its pid takes the gateway too), writes its pid, starts the sandbox's gateway
under bubblewrap and its egress proxy, then waits for SIGTERM or the sandbox's end, whichever comes first, and kills
the sandbox. Its end is its lease's, which the run renews through the state (`SandboxState.write_lease`) while it
lives, never past its TTL: a sandbox outlives a run that died without a word by the lease at most.

With `--spare` it supervises a warm spare instead (LOCAL_WARM_GATEWAY, see `spare`): the gateway starts at once with
no options and imports; a create that claims the spare signals SIGUSR1, and the supervisor hands the gateway its
options, starts the egress proxy and goes on as above. A spare nobody claims within SPARE_TTL_SECONDS, or one
stopped, removes itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from agentbox.host import wait_until
from agentbox.sandboxes.local.network import EGRESS, EGRESS_READY_WITHIN, egress_ready
from agentbox.sandboxes.local.processes import kill_state, stop_egress_exporting
from agentbox.sandboxes.local.spare import CLAIM_SIGNALS, Spare, read_order
from agentbox.sandboxes.local.state import LEASE_MOVED, SandboxState


def _unblocked() -> None:
    """Empty a child's signal mask: a spare's supervisor blocks the signals it waits for, and children inherit the
    mask (a gateway or egress proxy that ignored SIGTERM would only stop at the kill that follows)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def start_egress(state: SandboxState) -> subprocess.Popen:
    """Start the sandbox's egress proxy, on the host; return once its sockets exist (commands need them at once),
    or raise when it exits first or takes longer than EGRESS_READY_WITHIN."""
    with open(state.egress_log, "ab") as log:
        egress = subprocess.Popen(
            [sys.executable, "-I", "-S", str(EGRESS), str(state.egress_config_file)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", preexec_fn=_unblocked,
        )
    state.egress_pid_file.write_text(str(egress.pid))
    wait_until(lambda: egress_ready(state) or egress.poll() is not None, EGRESS_READY_WITHIN, interval=0.005)
    if not egress_ready(state):
        raise RuntimeError("the egress proxy did not start: " + state.egress_log.read_text()[-500:])
    return egress


def take_gateway_env(state: SandboxState) -> dict[str, str]:
    """Read the gateway's environment, token included, and delete its file at once, so the token then lives only
    in this process and the gateway."""
    env = json.loads(state.gateway_env_file.read_text())
    state.gateway_env_file.unlink()
    return env


def spawn_gateway(state: SandboxState, argv: list[str], env: dict[str, str], stdin: int) -> subprocess.Popen:
    """Start the gateway (`argv`, its bubblewrap) logging to the state, and write its pid."""
    with open(state.gateway_log, "ab") as log:
        gateway = subprocess.Popen(argv, env=env, stdin=stdin, stdout=log, stderr=log, cwd="/",
                                   preexec_fn=_unblocked)
    state.gateway_pid_file.write_text(str(gateway.pid))
    return gateway


def start_gateway(state: SandboxState) -> subprocess.Popen:
    """Start the sandbox's gateway, under bubblewrap; started first, since it takes the longest (imports, MCP
    servers)."""
    info = json.loads(state.info_file.read_text())
    return spawn_gateway(state, info["gateway_argv"], take_gateway_env(state), subprocess.DEVNULL)


def supervise(state: SandboxState, gateway: subprocess.Popen, egress: subprocess.Popen) -> None:
    """Wait for SIGTERM, SIGINT, SIGHUP or the sandbox's end (its lease's, which its run moves on while it lives,
    or its TTL's), then kill the sandbox. Woken at the end it knew, it reads the lease again: a renewed one goes on."""
    info = json.loads(state.info_file.read_text())
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, LEASE_MOVED}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    while (remaining := (state.ends_at(info) - datetime.now(timezone.utc)).total_seconds()) > 0:
        got = signal.sigtimedwait(signals, min(remaining, 3600))
        if got and got.si_signo != LEASE_MOVED:
            break
        gateway.poll()  # reap a gateway that died; the sandbox lives on without it, as on E2B
    stop_egress_exporting(state, info)
    for helper in (gateway, egress):
        helper.kill()
        helper.wait()
    kill_state(state)  # commands and state; this process exits right after


def start_spare_gateway(state: SandboxState) -> subprocess.Popen:
    """Start a warm spare's gateway (`--stdin-config`): it imports while nobody waits, and gets its options on
    stdin. The spare is claimable from then on."""
    order = read_order(state)
    gateway = spawn_gateway(state, order["gateway_argv"], order["env"], subprocess.PIPE)
    Spare(state).publish(order["fingerprint"])
    return gateway


def configure(state: SandboxState, gateway: subprocess.Popen) -> None:
    """Hand a claimed spare's gateway its options and environment (token included), then forget them."""
    info = json.loads(state.info_file.read_text())
    request = {"args": info["gateway_args"], "env": take_gateway_env(state)}
    gateway.stdin.write(json.dumps(request).encode() + b"\n")
    gateway.stdin.close()


def main() -> int:
    state = SandboxState(Path(sys.argv[1]).resolve())
    spare = sys.argv[2:] == ["--spare"]
    read_fd, write_fd = os.pipe()
    if os.fork():  # the launcher: wait until the supervisor says it is up, then exit so nobody must reap it
        os.close(write_fd)
        ok = os.read(read_fd, 1) == b"1"
        return 0 if ok else 1
    os.close(read_fd)
    signal.pthread_sigmask(signal.SIG_BLOCK, {LEASE_MOVED})  # its default would end the supervisor, not the sandbox
    os.setsid()
    state.supervisor_pid_file.write_text(str(os.getpid()))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    gateway = None
    try:
        if spare:
            signal.pthread_sigmask(signal.SIG_BLOCK, CLAIM_SIGNALS)
            gateway = start_spare_gateway(state)
            os.write(write_fd, b"1")
            os.close(write_fd)
            write_fd = None
            if not Spare(state).wait_for_claim():
                gateway.kill()
                gateway.wait()
                shutil.rmtree(state.path, ignore_errors=True)
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
        if spare and not state.info_file.exists():  # a spare nobody claimed leaves nothing behind
            shutil.rmtree(state.path, ignore_errors=True)
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
