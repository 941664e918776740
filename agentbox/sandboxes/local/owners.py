"""Who owns a sandbox's files on the host.

Run as root, a sandbox's commands run as a host uid of its own (`sandbox_uid`, far above any real user's), which
owns the sandbox's home, /tmp and egress sockets' directory and nothing else on the host; what the host writes into
them is handed to that uid, as a file written from inside would be. As another user, everything is that user's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

from agentbox.errors import SandboxError
from agentbox.sandboxes.local.bwrap import host_path, needed_paths
from agentbox.sandboxes.local.state import SandboxState

SANDBOX_UIDS = (2_000_000_000, 1 << 24)  # first uid and how many: far above any real user's or subuid range's


def sandbox_uid(sandbox_id: str) -> int | None:
    """The host uid a sandbox's commands run as when this process is root: one per sandbox (from its random id),
    so its processes count against its own limit and its files are nobody else's. None when not root, or root only
    of a user namespace that does not map those uids (a rehearsal moved into a private network): commands run as
    this user."""
    if not _can_become_sandbox_uids():
        return None
    first, count = SANDBOX_UIDS
    return first + int.from_bytes(hashlib.sha256(sandbox_id.encode()).digest()[:8], "big") % count


@functools.cache
def _can_become_sandbox_uids() -> bool:
    if os.geteuid() != 0:
        return False
    first, count = SANDBOX_UIDS
    try:
        ranges = [tuple(map(int, line.split())) for line in Path("/proc/self/uid_map").read_text().splitlines()]
    except (OSError, ValueError):
        return False
    return any(inside <= first and first + count <= inside + length for inside, _, length in ranges)


def own(uid: int | None, *paths: Path) -> None:
    """Give the sandbox's user what it may write (nothing to do when commands run as this user). The group stays
    root's, so the sandbox's root-run programs (the gateway here, E2B's `mcp-gateway`), whose namespace maps only
    root, still reach them: a uid that their namespace does not map gets no capability's override. Never through
    a symlink: one the sandbox planted would hand it a host file."""
    if uid is not None:
        for path in paths:
            os.chown(path, uid, 0, follow_symlinks=False)


def mkdirs_owned(directory: Path, uid: int | None, mode: int | None = None) -> None:
    """Make `directory` and the parents it lacks, owned by the sandbox's user (and given `mode`)."""
    missing = [parent for parent in [directory, *directory.parents] if not parent.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    own(uid, *missing)
    if uid is not None and mode is not None:
        for path in missing:
            path.chmod(mode)


def write_owned(target: Path, data: bytes, uid: int | None) -> None:
    """Write a file into a sandbox's home or /tmp from the host, owned (with the directories it needed) by the
    sandbox's user, as a file written from inside would be."""
    mkdirs_owned(target.parent, uid)
    target.write_bytes(data)
    own(uid, target)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def prepare_private_dirs(state: SandboxState) -> None:
    """Give the sandbox's user its home (setgid, so what is made in it stays reachable by the root group), /tmp
    (sticky and open to all, as a /tmp is: only this sandbox can reach it) and its egress sockets' directory; and
    make in them, once, the mount points of the runtime paths that lie under /tmp or the home (a checkout in /tmp):
    bwrap run as the sandbox's user could not make them in a directory that a root-run program (the gateway) made
    first. They stay writable by the root group, so a root-run bwrap can still make its own mount points under
    them."""
    uid = sandbox_uid(state.id)
    own(uid, state.home, state.tmp, state.net)
    if uid is not None:
        state.home.chmod(0o2770)
        state.tmp.chmod(0o1777)
    for path in needed_paths():
        with contextlib.suppress(SandboxError):
            mkdirs_owned(host_path(state, str(path)), uid, 0o2775)
