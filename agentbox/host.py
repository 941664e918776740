"""Neutral helpers about this host that every layer uses: free loopback ports, our processes, and waiting for a
condition with a deadline (one poll loop, rather than one per caller)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.01


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = POLL_SECONDS) -> bool:
    """Call `condition` every `interval` seconds until it is true or `timeout` seconds have passed; whether it
    became true (it is always called at least once, and once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    return True


async def wait_until_async(condition: Callable[[], bool], timeout: float, interval: float = POLL_SECONDS) -> bool:
    """`wait_until` for event loops: sleeps without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    return True


def process_alive(pid: int | None, marker: str) -> bool:
    """Whether `pid` runs and is ours (its command line holds `marker`): guards against pid reuse and zombies."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and marker in cmdline


def read_pid(path: Path) -> int | None:
    """The pid a file holds, or None when it is missing or unreadable."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def kill_group(pid: int) -> None:
    """SIGKILL a process group; one already gone (or not ours to signal) is left alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
