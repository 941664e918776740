"""A sandbox's view of the host, as bubblewrap builds it, and how its commands start in it.

The host's filesystem is an allow-list: the system directories read-only, a few files of /etc, the runtime, the venv,
node_modules and this package; the sandbox's own identity files, home and /tmp. Nothing else of the host (homes,
this checkout's .env, other sandboxes' state, /etc's credentials) exists inside. Each sandbox has its own pid
namespace and a non-root user inside (uid 1000, so Claude Code's permission guard behaves as on E2B).

Run as root, each sandbox's commands run as a host uid of its own (`owners.sandbox_uid`), not root's: bwrap starts
through `confine`, which makes the sources of its binds reachable to that uid and drops to it, so the sandbox's user
is nobody outside and owns only its home and /tmp. `confine` also sets the sandbox's limits: memory per process, and
(with a uid of its own) the number of processes of the whole sandbox. As another user, the commands run as that
user, without the process cap.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

from agentbox.errors import SandboxError, one_line
from agentbox.sandboxes.local.confine import staged
from agentbox.sandboxes.local.state import SandboxState

HOME = "/home/user"
PROJECT_DIR = Path(__file__).resolve().parents[3]
CONFINE = Path(__file__).with_name("confine.py")
DEFAULT_MAX_PROCESSES = 1024  # per sandbox (when run as root)
DEFAULT_MAX_MEMORY_MIB = 4096  # per process: Claude Code needs well under 1 GiB
# The host's filesystem by allow-list: what programs need, read-only. Anything else on the host does not exist inside.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (  # name resolution, TLS roots, the dynamic linker, shells' profiles; no credentials, no host identity
    "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "protocols", "services", "localtime", "timezone",
    "ssl", "ca-certificates", "ca-certificates.conf", "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
    "os-release", "debian_version", "mime.types", "profile", "profile.d", "bash.bashrc", "environment", "inputrc",
    "terminfo", "login.defs",
)
IDENTITY = {  # the sandbox's own users and names, in place of the host's
    "passwd": f"root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:user:{HOME}:/bin/bash\n",
    "group": "root:x:0:\nuser:x:1000:\n",
    "hosts": "127.0.0.1\tlocalhost agentbox\n::1\tlocalhost\n",
    "hostname": "agentbox\n",
}
INSTALL_HINT = (
    "Install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) "
    "or set SANDBOX_BACKEND=e2b."
)


def needed_paths() -> list[Path]:
    """Read-only paths the sandbox needs even when they sit under a hidden directory: the Python runtime, the
    running environment, the venv, node_modules and this package (and where a symlinked one resolves to), parents
    first."""
    needed = [
        Path(sys.base_prefix).resolve(),
        Path(sys.prefix),  # the running environment, wherever it is (a worker's, say)
        PROJECT_DIR / ".venv",
        PROJECT_DIR / "node_modules",
        PROJECT_DIR / "agentbox",
    ]
    needed += [p.resolve() for p in needed if p.is_symlink()]  # a linked .venv must resolve inside too
    unique = {p: None for p in needed if p.exists()}
    return sorted(unique, key=lambda p: len(p.parts))  # parents first, so a nested bind is not covered


def bwrap_argv(state: SandboxState, needed: list[Path], extra: list[str] = ()) -> list[str]:
    """bwrap's argv for the sandbox's view: an empty root with the system read-only, the sandbox's own identity
    files (`write_identity_files` wrote them), home and /tmp, and the `needed` paths read-only; then `extra` (more
    options, and `--` with the command), the root sealed read-only (`sealed`). Writes nothing."""
    argv = [shutil.which("bwrap") or "bwrap"]
    for path in SYSTEM_PATHS:
        if Path(path).is_symlink():  # merged /usr: /bin -> usr/bin
            argv += ["--symlink", os.readlink(path), path]
        elif Path(path).exists():
            argv += ["--ro-bind", path, path]
    argv += [arg for name in ETC_FILES if Path("/etc", name).exists() for arg in ("--ro-bind", f"/etc/{name}",
                                                                                  f"/etc/{name}")]
    for name in IDENTITY:
        argv += ["--ro-bind", str(state.identity_file(name)), f"/etc/{name}"]
    argv += ["--tmpfs", "/root", "--dir", "/home", "--bind", str(state.home), HOME]
    argv += ["--bind", str(state.tmp), "/tmp", "--dir", "/var", "--symlink", "/tmp", "/var/tmp"]
    for path in needed:  # after the private /tmp and home, so a checkout under /tmp still shows through
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--dev", "/dev", "--proc", "/proc"]
    argv += ["--unshare-user", "--uid", "1000", "--gid", "1000", "--unshare-pid", "--unshare-ipc"]
    argv += ["--unshare-uts", "--hostname", "agentbox", "--die-with-parent", "--new-session", "--chdir", HOME]
    return sealed([*argv, *extra])


def write_identity_files(state: SandboxState) -> None:
    """Write the sandbox's /etc/passwd, group, hosts and hostname into its state (those it has already stay)."""
    state.etc.mkdir(exist_ok=True)
    for name, text in IDENTITY.items():
        path = state.identity_file(name)
        if not path.exists():
            path.write_text(text)


def sealed(argv: list[str]) -> list[str]:
    """bwrap's argv with its root made read-only once every mount is in place (before the `--` that ends the
    options), so writes succeed only in home, /tmp and what is bound writable."""
    if "--" not in argv:
        return argv
    end = argv.index("--")
    return [*argv[:end], "--remount-ro", "/", *argv[end:]]


def confined(argv: list[str], uid: int | None, max_processes: int, max_memory: int) -> list[str]:
    """`argv` (a bwrap command line) started through `confine`: as `uid` with every bind source staged where that
    uid reaches it, and with the limits (`max_memory` in bytes). Sources keep their host path inside the stage, so
    the command line still names the sandbox's state (how its processes are found)."""
    options = ["--memory", str(max_memory)]
    out = list(argv)
    if uid is not None:
        options += ["--uid", str(uid), "--nproc", str(max_processes)]
        end = out.index("--") if "--" in out else len(out)
        for i in range(end - 2):
            if out[i] in ("--bind", "--ro-bind"):
                options += ["--stage", out[i + 1]]
                out[i + 1] = staged(out[i + 1])
    return [sys.executable, "-I", "-S", str(CONFINE), *options, "--", *out]


def base_env() -> dict[str, str]:
    """The environment every program of a sandbox starts from: its user, home, locale and /tmp, a PATH with the npm
    tools and this Python, and this checkout on PYTHONPATH."""
    path = [str(PROJECT_DIR / "node_modules" / ".bin"), str(Path(sys.executable).parent)]
    path += ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    # PYTHONPATH: the gateway imports the very agentbox this process runs, whichever checkout the venv points at.
    return {"HOME": HOME, "USER": "user", "PATH": ":".join(path), "LANG": "C.UTF-8", "TMPDIR": "/tmp",
            "PYTHONPATH": str(PROJECT_DIR)}


def host_path(state: SandboxState, path: str) -> Path:
    """Where a path inside the sandbox lives on the host; a SandboxError for one outside its home and /tmp (the
    only places writable from the host), a symlink's way out included."""
    for inside, outside in ((HOME, state.home), ("/tmp", state.tmp)):
        if path == inside or path.startswith(inside + "/"):
            host = (outside / path[len(inside) :].lstrip("/")).resolve()
            if host == outside.resolve() or outside.resolve() in host.parents:
                return host
    raise SandboxError(f"Cannot write {path} in a local sandbox.", f"Write under {HOME} or /tmp.")


async def check_bubblewrap() -> None:
    """Raise a SandboxError saying how to fix it unless bwrap exists and may create user namespaces here."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise SandboxError("bubblewrap (bwrap) is not installed; the local sandbox backend needs it.", INSTALL_HINT)
    probe = [bwrap, "--ro-bind", "/", "/", "--unshare-user", "--uid", "1000", "--unshare-pid", "--", "/bin/true"]
    proc = await asyncio.create_subprocess_exec(
        *probe, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SandboxError(
            f"bubblewrap cannot create a sandbox here ({one_line(err.decode(errors='replace'), last=True)}).",
            "Allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or "
            "kernel.apparmor_restrict_unprivileged_userns=0) or set SANDBOX_BACKEND=e2b.",
        )
