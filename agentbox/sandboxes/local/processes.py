"""A sandbox's processes, seen from the host: starting its supervisor and its commands, and killing them all."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import shutil
import subprocess
from collections.abc import AsyncIterator

from agentbox.errors import SandboxError, one_line
from agentbox.host import kill_group, process_alive, read_pid, wait_until
from agentbox.sandboxes.base import OutputCallback
from agentbox.sandboxes.local.bwrap import bwrap_argv, confined, needed_paths
from agentbox.sandboxes.local.network import offline
from agentbox.sandboxes.local.owners import sandbox_uid
from agentbox.sandboxes.local.spare import discard_spare
from agentbox.sandboxes.local.state import SandboxState


EGRESS_EXPORT_WITHIN = 2.0  # seconds a traced sandbox's egress proxy is given to export its last spans and stop


async def start_supervisor(state: SandboxState) -> None:
    """Start the sandbox's detached supervisor and return once it says it is up (it double-forks, so it outlives
    this process and is nobody's zombie); a SandboxError with the last line of its log when it fails."""
    with open(state.supervisor_log, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *state.supervisor_command(),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/",
        )
        code = await proc.wait()
    if code != 0:
        detail = one_line(state.supervisor_log.read_text(errors="replace"), last=True)
        raise SandboxError(f"The local sandbox supervisor failed to start ({detail}).")


def command_argv(state: SandboxState, routes: list[str], command: str, max_processes: int,
                 max_memory_mib: int) -> list[str]:
    """The argv of a shell `command` in the sandbox: under bubblewrap, offline but for `routes`, started as the
    sandbox's own user with its limits (see `bwrap.confined`)."""
    argv = bwrap_argv(state, needed_paths(), offline(state, routes, ["/bin/bash", "-c", command]))
    return confined(argv, sandbox_uid(state.id), max_processes, max_memory_mib << 20)


async def pump(stream: asyncio.StreamReader, sink: list[str], callback: OutputCallback | None) -> None:
    """Forward a command's output to `sink` and `callback` as it arrives, decoding UTF-8 across chunk
    boundaries."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := await stream.read(65536):
        text = decoder.decode(chunk)
        if text:
            sink.append(text)
            if callback:
                callback(text)
    if tail := decoder.decode(b"", final=True):
        sink.append(tail)
        if callback:
            callback(tail)


async def feed(pipe: asyncio.StreamWriter, chunks: AsyncIterator[str]) -> None:
    """Write `chunks` to a command's input as they come, then close it (EOF); a command that stopped reading (it
    exited) ends the feeding quietly."""
    try:
        async for chunk in chunks:
            pipe.write(chunk.encode())
            await pipe.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        pipe.close()


def stop_egress_exporting(state: SandboxState, info: dict) -> None:
    """Stop a traced sandbox's egress proxy with SIGTERM, before anything kills it: it exports its last spans as it
    stops (within EGRESS_EXPORT_WITHIN). Untraced, nothing to wait for: it is killed with the rest."""
    egress = read_pid(state.egress_pid_file)
    if info.get("telemetry") and process_alive(egress, state.marker):
        with contextlib.suppress(OSError):
            os.kill(egress, signal.SIGTERM)
        wait_until(lambda: not process_alive(egress, state.marker), EGRESS_EXPORT_WITHIN, interval=0.002)


def kill_state(state: SandboxState) -> bool:
    """Kill every process of a sandbox (supervisor, gateway, egress proxy, commands), wait up to 5 s until they are
    gone, remove its state; whether its supervisor was running.

    Shared by `kill` and the supervisor's TTL expiry. Idempotent: a missing sandbox returns False.
    """
    info = state.read_info()
    if info is None:
        shutil.rmtree(state.path, ignore_errors=True)
        return False
    marker = state.marker
    pids = state.command_pids()
    supervisor = read_pid(state.supervisor_pid_file)
    was_running = process_alive(supervisor, marker)
    groups = [*pids, *([supervisor] if was_running and supervisor != os.getpid() else [])]
    helpers = [read_pid(state.gateway_pid_file), read_pid(state.egress_pid_file)]
    stop_egress_exporting(state, info)
    for pid in groups:
        kill_group(pid)
    wait_until(lambda: not any(process_alive(pid, marker) for pid in [*groups, *helpers]), 5)
    shutil.rmtree(state.path, ignore_errors=True)
    return was_running


def abandon(state: SandboxState, spare: bool) -> None:
    """Undo a create that failed: kill what it started and remove its state. A claimed `spare`'s supervisor may not
    have read its sandbox yet, so it is stopped first."""
    if spare:
        discard_spare(state)
    kill_state(state)
