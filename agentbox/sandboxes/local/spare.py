"""The warm spare (LOCAL_WARM_GATEWAY): a sandbox's state, supervisor and gateway made before any create asks for
them, so that the next create claims them and skips the gateway's imports.

A spare's gateway starts at once with no options and imports (`--stdin-config`): it holds no option and no secret
until a create claims the spare and writes its sandbox; woken then (SIGUSR1), the supervisor hands the gateway its
options and environment on a pipe, starts the egress proxy and goes on as for any sandbox. Until its sandbox.json
exists a spare is no sandbox: janitors and limits do not see it. A spare nobody claims within SPARE_TTL_SECONDS, or
one discarded, removes itself; one at a time is made, counting those still starting.

Its life is one state machine (`Spare`): its stage is the name of one marker file in its state, and each transition
is one atomic rename of that file. Of two processes racing (two creates; a create and the supervisor's expiry; a
create and a discard) exactly one wins, and the other's rename finds no file.

    starting --publish--> claimable --claim--> claimed       (a create: it writes the sandbox, then wakes the spare)
                                    --discard--> discarded   (`discard_spare`: its supervisor is stopped)
                                    --expire--> expired      (its supervisor, idle for SPARE_TTL_SECONDS)

Only a create from the same place and code may claim a spare (`spare_fingerprint`).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from agentbox.errors import SandboxError, one_line
from agentbox.host import kill_group, process_alive, read_pid, wait_until, wait_until_async
from agentbox.sandboxes.local.bwrap import PROJECT_DIR, base_env
from agentbox.sandboxes.local.network import EGRESS_READY_WITHIN, egress_ready
from agentbox.sandboxes.local.owners import write_private
from agentbox.sandboxes.local.prepare import gateway_argv, make_state
from agentbox.sandboxes.local.state import STARTING_GRACE_SECONDS, SandboxState

SPARE_TTL_SECONDS = 600  # a warm spare nobody claims removes itself after this
CLAIM_SIGNALS = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}  # a spare's supervisor blocks these


class SpareStage(enum.StrEnum):
    STARTING = "starting"  # made (its order written); its supervisor starts the gateway, then publishes it
    CLAIMABLE = "claimable"  # the marker holds the fingerprint: a create from the same place may claim it
    CLAIMED = "claimed"  # a create won it: the sandbox's files follow, then SIGUSR1 wakes its supervisor
    DISCARDED = "discarded"  # stopped before anyone claimed it
    EXPIRED = "expired"  # nobody claimed it within SPARE_TTL_SECONDS


CLAIMABLE_MARKER = SandboxState.SPARE_MARKERS[SpareStage.CLAIMABLE]  # the marker's name while a create may claim it


def spare_fingerprint() -> str:
    """Where and what a spare's gateway runs: only a create from the same network and user namespaces (a
    rehearsal re-run in a private network has its own loopback), the same user, interpreter, checkout and
    version of the agentbox package (an edit since the spare started makes it stale) may claim it."""
    sources = sorted((PROJECT_DIR / "agentbox").rglob("*.py"))
    latest = max((p.stat().st_mtime_ns for p in sources), default=0)
    namespaces = [os.stat(f"/proc/self/ns/{ns}").st_ino for ns in ("net", "user")]
    return f"{namespaces}|{os.geteuid()}|{sys.executable}|{PROJECT_DIR}|{len(sources)}|{latest}"


class Spare:
    """The state machine of the warm spare whose state is `state`."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def _move(self, source: SpareStage, target: SpareStage) -> None:
        """The transition from `source` to `target`: one rename, an OSError when the spare is not in `source`."""
        self.state.spare_marker(source).rename(self.state.spare_marker(target))

    # -- its supervisor's side ---------------------------------------------------------------------------------

    def publish(self, fingerprint: str) -> None:
        """starting -> claimable: the marker appears all at once, holding `fingerprint`."""
        self.state.spare_marker(SpareStage.STARTING).write_text(fingerprint)
        self._move(SpareStage.STARTING, SpareStage.CLAIMABLE)

    def wait_for_claim(self) -> bool:
        """Block until a create claims the spare and wakes its supervisor (SIGUSR1; the caller blocks
        CLAIM_SIGNALS); whether one did. False when the supervisor is stopped, when the state is gone (its root
        removed, say), or after SPARE_TTL_SECONDS idle: then claimable -> expired, unless a claim won the marker at
        that moment (its claimer's SIGUSR1 follows at once)."""
        deadline = time.monotonic() + SPARE_TTL_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            got = signal.sigtimedwait(CLAIM_SIGNALS, min(remaining, 2))
            if got is not None:
                return got.si_signo == signal.SIGUSR1
            if not self.state.spare_order_file.exists():
                return False
        try:
            self._move(SpareStage.CLAIMABLE, SpareStage.EXPIRED)
        except FileNotFoundError:  # claimed just now: its claimer signals at once
            return signal.sigtimedwait({signal.SIGUSR1}, 10) is not None
        return False

    # -- a create's side ---------------------------------------------------------------------------------------

    def claim(self, fingerprint: str) -> bool:
        """claimable -> claimed, when the spare runs where `fingerprint` says; whether this caller won it."""
        marker = self.state.spare_marker(SpareStage.CLAIMABLE)
        try:
            if marker.read_text() != fingerprint:
                return False
            self._move(SpareStage.CLAIMABLE, SpareStage.CLAIMED)
        except OSError:  # claimed or expired meanwhile
            return False
        return True

    async def wake(self) -> None:
        """Tell a claimed spare's supervisor that its sandbox is written (SIGUSR1) and wait until its egress
        sockets exist (the sandbox is ready then); a SandboxError when the supervisor is gone or fails."""
        pid = read_pid(self.state.supervisor_pid_file)
        if pid is None or not process_alive(pid, self.state.marker):
            raise SandboxError("The warm spare gateway it claimed was gone.", "Run again.")
        os.kill(pid, signal.SIGUSR1)
        await wait_until_async(lambda: egress_ready(self.state) or not process_alive(pid, self.state.marker),
                               EGRESS_READY_WITHIN, interval=0.005)
        if not egress_ready(self.state):
            detail = one_line(self.state.supervisor_log.read_text(errors="replace"), last=True, empty="no log")
            raise SandboxError(f"The local sandbox supervisor failed to start ({detail}).")

    def discard(self) -> None:
        """claimable -> discarded: nobody claims it any more (nothing changes when it is past claimable)."""
        with contextlib.suppress(OSError):
            self._move(SpareStage.CLAIMABLE, SpareStage.DISCARDED)


def read_order(state: SandboxState) -> dict:
    """A spare's order, for its supervisor: its gateway's argv and environment, and its fingerprint."""
    return json.loads(state.spare_order_file.read_text())


def spare_states(root: Path) -> list[SandboxState]:
    """Warm spares under `root`, claimable or still starting; a claimed one is a sandbox (it has its info)."""
    return [state for state in SandboxState.with_spare_order(root) if not state.info_file.exists()]


def claim_spare(root: Path) -> SandboxState | None:
    """The state of a warm spare under `root` that this process may claim, claimed; or None. A claimed spare whose
    supervisor is dead is removed, and the next one tried."""
    fingerprint = spare_fingerprint()
    for state in SandboxState.with_spare_marker(root, SpareStage.CLAIMABLE):
        if not Spare(state).claim(fingerprint):
            continue
        if state.supervisor_alive():
            return state
        shutil.rmtree(state.path, ignore_errors=True)
    return None


def make_spare(root: Path) -> None:
    """Start a warm spare under `root` (a supervisor and a gateway that imports and waits for its options) unless
    one waits already or is still starting; a spare that died (a reboot, a SIGKILL) is removed."""
    for state in spare_states(root):
        if state.supervisor_alive():
            return
        if time.time() - state.spare_order_file.stat().st_mtime > STARTING_GRACE_SECONDS:
            shutil.rmtree(state.path, ignore_errors=True)
        else:
            return  # its supervisor has not written its pid yet
    state = SandboxState.new(root)
    make_state(state)
    env = base_env()
    order = {"fingerprint": spare_fingerprint(), "env": env, "gateway_argv": gateway_argv(state, "--stdin-config")}
    write_private(state.spare_order_file, json.dumps(order))
    # Not waited for: the session that made it has ended, and a spare that fails to start removes itself (the
    # next create starts its gateway cold). Its launcher is reaped with this process's next child, or by init.
    # Its environment is the sandbox's base one: it outlives this run, and must not keep what this run held.
    with open(state.supervisor_log, "ab") as log:
        subprocess.Popen(state.supervisor_command("--spare"), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, cwd="/", env=env)


def discard_spare(state: SandboxState) -> None:
    """Stop a warm spare that is not claimed: discard it, SIGTERM its supervisor (which kills its gateway), kill
    its process group when it still runs 5 s later, and remove its state."""
    Spare(state).discard()
    pid = read_pid(state.supervisor_pid_file)
    if process_alive(pid, state.marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not process_alive(pid, state.marker), 5):
            kill_group(pid)  # still ours: its whole group goes (a dead pid's group may be another's)
    shutil.rmtree(state.path, ignore_errors=True)


def discard_spares(root: Path) -> int:
    """Stop every warm spare under `root` (they also go by themselves after SPARE_TTL_SECONDS); how many."""
    states = spare_states(root)
    for state in states:
        discard_spare(state)
    return len(states)
