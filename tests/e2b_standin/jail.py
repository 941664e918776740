"""Where a stand-in sandbox's processes run: under bubblewrap, exactly as the local backend isolates its sandboxes.

The bwrap argv and the base environment are the local backend's own (`bwrap_argv`, `base_env`), so the stand-in's
sandboxes look like the local backend's from inside: /home/user and /tmp private to each sandbox, the host's
filesystem by the same allow-list (the rest of the host does not exist), a pid namespace of their own, uid 1000
("user") by default, started through `confine` as the local backend's commands are (a uid of its own outside, the
same process and memory limits). Two differences: `user="root"` runs as uid 0 inside, unconfined (E2B runs
`mcp-gateway` as root), and the gateway also sees this checkout's `tests/servers/` (read-only) so test catalogs can
point at the stdio servers there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
import sys
from pathlib import Path

from agentbox.sandboxes.local.bwrap import (
    DEFAULT_MAX_MEMORY_MIB,
    DEFAULT_MAX_PROCESSES,
    HOME,
    PROJECT_DIR,
    base_env,
    bwrap_argv,
    confined,
    needed_paths,
    sealed,
    write_identity_files,
)
from agentbox.sandboxes.local.network import PROXY_INSIDE, offline
from agentbox.sandboxes.local.owners import prepare_private_dirs, sandbox_uid
from agentbox.sandboxes.local.prepare import GATEWAY_DIR  # where the gateway finds its catalog copy
from agentbox.sandboxes.local.state import SandboxState

TEST_SERVERS = PROJECT_DIR / "tests" / "servers"
TOKEN_DIR = "/etc/mcp-gateway"  # E2B's mcp-gateway keeps its token in /etc/mcp-gateway/.token (root only)
USERS = {"user": (1000, HOME), "root": (0, "/root")}

_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork: the child only calls it


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this process when the thread that started it (the stand-in's loop) ends."""
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class PathRefused(Exception):
    """A files-API path the stand-in does not serve; `status` is the HTTP status envd would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Jail:
    """bwrap argv, environment and host paths for sandboxes whose state directories live under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tools = self._install_tools()

    def _install_tools(self) -> Path:
        """What E2B's `mcp-gateway` template has on its PATH: the claude CLI and the MCP servers. Commands run under
        `bash -l`, whose /etc/profile resets PATH, so they are linked into /usr/local/bin as a template image has
        them (links, so node scripts still find their modules)."""
        tools = self.root / "usr-local-bin"
        tools.mkdir(parents=True, exist_ok=True)
        for name, target in (
            ("claude", PROJECT_DIR / "node_modules" / ".bin" / "claude"),
            ("notion-mcp-server", PROJECT_DIR / "node_modules" / ".bin" / "notion-mcp-server"),
            ("github-mcp-server", Path(sys.executable).parent / "github-mcp-server"),
        ):
            if target.exists() and not (tools / name).exists():
                (tools / name).symlink_to(target.resolve())
        return tools

    def prepare(self, state: Path) -> None:
        local = SandboxState(state)  # the local backend's layout, where the two share it
        for directory in (local.home, local.tmp, local.gateway, state / "mcp-gateway", local.net):
            directory.mkdir(parents=True, mode=0o700)
        prepare_private_dirs(local)
        write_identity_files(local)

    @staticmethod
    def owner(state: Path, user: str) -> int | None:
        """The host uid of a sandbox user's processes and files: "user" has the local backend's uid of its own
        (when the stand-in runs as root); "root" is the stand-in's (E2B runs the gateway as root in the VM)."""
        return sandbox_uid(state.name) if user == "user" else None

    def argv(self, state: Path, user: str, cwd: str | None, command: list[str], extra: list[str] = (),
             routes: list[str] | None = None) -> list[str]:
        """With `routes`, the command runs in a network namespace of its own whose only ways out are those
        (`jailnet`), to the sandbox's egress proxy: E2B's egress policy, enforced."""
        uid, home = USERS[user]
        local = SandboxState(state)
        argv = [*bwrap_argv(local, needed_paths()), "--ro-bind", str(self.tools), "/usr/local/bin"]
        argv[argv.index("--chdir") + 1] = cwd or home  # bwrap warns on stderr about a second --chdir
        if uid != 1000:
            for flag in ("--uid", "--gid"):
                argv[argv.index(flag) + 1] = str(uid)
        tail = ["--", *command] if routes is None else offline(local, routes, command)
        argv = sealed([*argv, *extra, *tail])
        if user == "root":
            return argv
        return confined(argv, sandbox_uid(state.name), DEFAULT_MAX_PROCESSES, DEFAULT_MAX_MEMORY_MIB << 20)

    def gateway_argv(self, state: Path, command: list[str]) -> list[str]:
        extra = ["--tmpfs", "/run", "--ro-bind", str(SandboxState(state).gateway), GATEWAY_DIR]
        if TEST_SERVERS.is_dir():
            extra += ["--ro-bind", str(TEST_SERVERS), str(TEST_SERVERS)]
        return self.argv(state, "root", "/", command, extra)

    def env(self, user: str, *layers: dict[str, str], offline: bool = False) -> dict[str, str]:
        """envd's order: its defaults for the user, then the sandbox's envVars, then the request's envs. An
        `offline` command finds its egress proxy in HTTP(S)_PROXY (E2B's is transparent; the stand-in's cannot be)."""
        _, home = USERS[user]
        env = {**base_env(), "HOME": home, "USER": user, "LOGNAME": user}
        if offline:
            env.update({name: f"http://{PROXY_INSIDE}" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                                                    "https_proxy")})
        for layer in layers:
            env.update(layer)
        return env

    def host_path(self, state: Path, path: str, user: str) -> tuple[str, Path]:
        """(path inside, path on the host) for the files API. Only the sandbox's private directories are served:
        /home/user, /tmp and /etc/mcp-gateway (root only). Relative paths are relative to the user's home."""
        _, home = USERS[user]
        inside = os.path.normpath(path if path.startswith("/") else os.path.join(home, path))
        local = SandboxState(state)
        for prefix, outside, root_only in ((HOME, local.home, False), ("/tmp", local.tmp, False),
                                           (TOKEN_DIR, state / "mcp-gateway", True)):
            if inside == prefix or inside.startswith(prefix + "/"):
                if root_only and user != "root":
                    raise PathRefused(403, f"permission denied: {inside} is readable by root only")
                host = (outside / inside[len(prefix):].lstrip("/")).resolve()
                base = outside.resolve()
                if host != base and base not in host.parents:  # a symlink pointing out of the sandbox
                    raise PathRefused(403, f"permission denied: {inside} leaves the sandbox")
                return inside, host
        raise PathRefused(400, f"the E2B stand-in serves files under {HOME}, /tmp and {TOKEN_DIR} only, not {inside}")

    async def spawn(self, argv: list[str], env: dict[str, str], *, stdin, stdout, stderr) -> asyncio.subprocess.Process:
        """Its own session (so killpg takes the outer bwrap) and PR_SET_PDEATHSIG (so it dies with the stand-in).
        bwrap's pid 1 follows through --die-with-parent, except when the outer bwrap dies while the inside is still
        being set up: `reap` catches those."""
        return await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=stdin, stdout=stdout, stderr=stderr, cwd="/",
            start_new_session=True, preexec_fn=_die_with_parent,
        )

    def processes(self, marker: Path | None = None) -> dict[int, str]:
        """Pid -> command line of live processes that belong to these sandboxes: their command line, or an
        ancestor's, names `marker` (default: the stand-in's root). The outer bwrap and its pid 1 carry state paths
        in their argv; everything inside descends from them."""
        return processes_under(str(marker or self.root))


async def exited(popen: asyncio.subprocess.Process, poll: float = 0.02) -> int:
    """The exit status once the process has exited. Not `popen.wait()`: on Python 3.11 that also waits until every
    pipe is closed, which never happens while an orphan from inside the sandbox still holds one."""
    while popen.returncode is None:
        await asyncio.sleep(poll)
    return popen.returncode


def kill_under(marker: str | Path) -> dict[int, str]:
    """SIGKILL every process under `marker` (see `processes_under`); the ones found. Killing an orphaned bwrap
    pid 1 takes its whole pid namespace with it."""
    found = processes_under(str(marker))
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


async def reap(marker: str | Path, timeout: float = 10.0) -> dict[int, str]:
    """Kill under `marker` until nothing is left; what still ran after `timeout` (empty is the good answer)."""
    deadline = time.monotonic() + timeout
    while (left := kill_under(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return left


def reap_now(marker: str | Path, timeout: float = 10.0) -> dict[int, str]:
    """`reap` for callers outside an event loop."""
    deadline = time.monotonic() + timeout
    while (left := kill_under(marker)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def processes_under(marker: str) -> dict[int, str]:
    table: dict[int, tuple[int, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(proc.name)] = (int(fields[1]), cmdline)

    def belongs(pid: int) -> bool:
        for _ in range(64):
            if pid not in table:
                return False
            parent, cmdline = table[pid]
            if marker in cmdline:
                return True
            pid = parent
        return False

    return {pid: cmd[:300] for pid, (_, cmd) in table.items() if pid != os.getpid() and belongs(pid)}
