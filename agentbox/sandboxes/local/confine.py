"""Start bubblewrap as a sandbox's own unprivileged user, with its process and memory limits.

Run by the local backend (and the E2B stand-in) in front of a command's bwrap: `python -I -S confine.py --uid U
--nproc N --memory BYTES --stage SRC ... -- bwrap ...`.

Why: bwrap started by root maps the sandbox's user to root outside, so a process that escaped its namespaces, or a
file it left behind, would be root's. Started as a uid of its own instead (one per sandbox, owning nothing on the
host but the sandbox's home and /tmp), it is nobody outside. But that uid cannot reach what root's directories hold
(a runtime under /root, sandbox state under a 0700 directory), and bwrap resolves every bind source by path as the
user it runs as. So, as root, in a mount namespace of its own (nothing leaks to the host), this mounts a tmpfs on
/tmp (`STAGE`) and binds each `--stage` source at STAGE + its own path (opened first, so sources under /tmp work
too); the caller has already pointed bwrap's sources there. Then it drops to the uid for good and execs bwrap.

Limits, set last so they bind bwrap and everything under it: RLIMIT_AS per process (a memory hog gets MemoryError,
not the host's OOM killer), and RLIMIT_NPROC, which the kernel counts per uid across the sandbox's namespaces: with
a uid per sandbox it caps the sandbox's processes, so a fork flood ends in its own sandbox only. As a non-root user
there is no uid of its own to count against (the cap would count all of the user's processes), so `--nproc` is
only given with `--uid`.

Standard library only (ctypes for unshare and mount), so it starts in a few tens of milliseconds.
"""

import ctypes
import os
import resource
import stat
import sys

STAGE = "/tmp"
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x1000, 0x4000, 0x40000, 0x2, 0x4
PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2

_libc = ctypes.CDLL(None, use_errno=True)


def staged(path: str) -> str:
    """Where a staged source appears to bwrap."""
    return STAGE + os.path.realpath(path)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def stage(sources: list[str]) -> None:
    """Bind each source at `staged(source)` in a fresh private mount namespace (as root)."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare a mount namespace")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    real = sorted({os.path.realpath(s) for s in sources}, key=len)  # parents first
    fds = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in real}  # before /tmp is covered
    _mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    done: list[str] = []
    for path in real:
        target = STAGE + path
        nested = any(path.startswith(parent.rstrip("/") + "/") for parent in done)
        if not nested:  # inside an earlier bind the target exists already; never create anything there
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            if stat.S_ISDIR(os.fstat(fds[path]).st_mode):
                os.makedirs(target, mode=0o755, exist_ok=True)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        _mount(f"/proc/self/fd/{fds[path]}", target, None, MS_BIND | MS_REC)
        done.append(path)
    for fd in fds.values():
        os.close(fd)


def become(uid: int) -> None:
    """Drop to `uid` (and the group of the same number), with no supplementary groups, for good. The parent-death
    signal a caller set is cleared by the kernel on a uid change, so it is set again."""
    signal = ctypes.c_int(0)
    _libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(signal))
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if signal.value:
        _libc.prctl(PR_SET_PDEATHSIG, signal.value)


def main(argv: list[str]) -> None:
    end = argv.index("--")
    options, command = argv[:end], argv[end + 1 :]
    uid = nproc = memory = None
    sources: list[str] = []
    it = iter(options)
    for flag in it:
        value = next(it)
        if flag == "--uid":
            uid = int(value)
        elif flag == "--nproc":
            nproc = int(value)
        elif flag == "--memory":
            memory = int(value)
        elif flag == "--stage":
            sources.append(value)
        else:
            raise SystemExit(f"confine: unknown option {flag}")
    if uid is not None:
        stage(sources)
        become(uid)
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
