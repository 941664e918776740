"""The local backend: sandboxes on this host, isolated with bubblewrap.

Each sandbox is a state directory plus a detached supervisor process that runs the MCP gateway (this project's,
with the interface of E2B's `mcp-gateway`) under bubblewrap and kills everything when the TTL expires, even if
nobody asks. Commands run in their own bubblewrap instance over the same private home and /tmp, so they see the same
files. The host's filesystem is an allow-list (the system read-only, a few files of /etc, the runtime, the venv,
node_modules; the sandbox's own identity files), so nothing else of the host exists inside. Each has its own pid
namespace and a non-root user inside (uid 1000, so Claude Code's permission guard behaves as on E2B).

Commands have no network of their own: each runs in a fresh network namespace with only a loopback interface, where
`jailnet` listens on three ports (the gateway's, the model API's, an HTTP proxy's) and relays them over unix sockets
to the sandbox's egress proxy on the host (`egress`). That proxy adds the gateway token and the model key on the way
out (inside there are only placeholders) and lets the forward proxy reach only the hosts the run policy allows. The
gateway itself runs in the host's network (it must reach the MCP servers' APIs) on a loopback port.

Run as root, each sandbox's commands run as a uid of its own (`sandbox_uid`), not root's: bwrap starts through
`confine`, which makes the sources of its binds reachable to that uid and drops to it, so the sandbox's user is
nobody outside and owns only its home and /tmp. `confine` also sets the sandbox's limits: memory per process, and
(with a uid of its own) the number of processes of the whole sandbox. As another user, the commands run as that
user, without the process cap.

This is isolation for a development machine, not a security boundary like E2B's microVMs: it shares the host's
kernel, and the gateway (this project's code, holding the MCP servers' credentials) runs as the invoking user.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentbox.claude import MODEL_KEY_ENV, MODEL_URL_ENV
from agentbox.errors import SandboxCommandTimeout, SandboxError, one_line
from agentbox.gateway.catalog import expected_tools, load_catalog, validate_config
from agentbox.sandboxes.confine import staged
from agentbox.secrets import looks_secret
from agentbox.sandboxes.base import (
    CommandResult,
    Network,
    OutputCallback,
    SandboxBackend,
    SandboxHandle,
    SandboxInfo,
)

if TYPE_CHECKING:
    from agentbox.settings import Settings

HOME = "/home/user"
STARTING_GRACE_SECONDS = 60  # how long a sandbox may take to get its supervisor running
SPARE_MARKER = "spare"  # in a warm spare's state while it can be claimed: renaming it away claims it
SPARE_TTL_SECONDS = 600  # a warm spare nobody claims removes itself after this
EGRESS_READY_WITHIN = 10.0
GATEWAY_DIR = "/run/agentbox"
AUDIT_DIR = "/run/agentbox-audit"  # the gateway's call log, writable by the gateway only
CALL_LOG = "calls.jsonl"
EGRESS_LOG = "egress.jsonl"
NET_DIR = "/run/agentbox-net"  # the egress proxy's sockets, bound into every command's sandbox
PROXY_INSIDE = "127.0.0.1:3128"  # HTTP(S)_PROXY inside
MODEL_INSIDE = "127.0.0.1:8788"  # ANTHROPIC_BASE_URL inside
PLACEHOLDER = "agentbox-placeholder-the-egress-proxy-adds-the-real-one"
JAILNET = Path(__file__).with_name("jailnet.py")
EGRESS = Path(__file__).with_name("egress.py")
CONFINE = Path(__file__).with_name("confine.py")
SANDBOX_UIDS = (2_000_000_000, 1 << 24)  # first uid and how many: far above any real user's or subuid range's
DEFAULT_MAX_PROCESSES = 1024  # per sandbox (when run as root)
DEFAULT_MAX_MEMORY_MIB = 4096  # per process: Claude Code needs well under 1 GiB
PROJECT_DIR = Path(__file__).resolve().parents[2]
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


def _now() -> datetime:
    return datetime.now(timezone.utc)


def free_port() -> int:
    """A loopback port free now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


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


class LocalSandboxes(SandboxBackend):
    """Sandboxes as bubblewrap processes on this host; state lives under `root`."""

    name = "local"
    gateway_filters_tools = True

    def __init__(
        self,
        root: Path,
        catalog_file: Path | str | None = None,
        max_processes: int = DEFAULT_MAX_PROCESSES,
        max_memory_mib: int = DEFAULT_MAX_MEMORY_MIB,
        warm_spare: bool = False,
    ) -> None:
        self.root = Path(root).expanduser().resolve()  # real: its processes are found by their argv holding it
        self.catalog_file = Path(catalog_file) if catalog_file else None
        self.max_processes = max_processes
        self.max_memory_mib = max_memory_mib
        self.warm_spare = warm_spare

    @classmethod
    def options(cls, settings: Settings) -> dict[str, Any]:
        catalog = settings.local_mcp_catalog
        return {"root": str(settings.local_sandbox_root), "catalog_file": str(catalog) if catalog else None,
                "max_processes": settings.local_max_processes, "max_memory_mib": settings.local_max_memory_mib,
                "warm_spare": settings.local_warm_gateway}

    @classmethod
    def open(cls, options: dict[str, Any], settings: Settings) -> LocalSandboxes:
        return cls(Path(options["root"]), options.get("catalog_file"),
                   options.get("max_processes", DEFAULT_MAX_PROCESSES),
                   options.get("max_memory_mib", DEFAULT_MAX_MEMORY_MIB), options.get("warm_spare", False))

    @classmethod
    def check_mcp_config(cls, options: dict[str, Any], mcp: dict[str, Any]) -> None:
        validate_config(mcp, load_catalog(options.get("catalog_file")), allow_unknown_fields=False)

    @classmethod
    def expected_tools(cls, options: dict[str, Any], mcp: dict[str, Any]) -> dict[str, list[str]]:
        return expected_tools(list(mcp), load_catalog(options.get("catalog_file")))

    # -- the sandbox's filesystem view -----------------------------------------------------------------------

    def _state(self, sandbox_id: str) -> Path:
        if not sandbox_id.startswith("local-") or "/" in sandbox_id:
            raise SandboxError(
                f"'{sandbox_id}' is not a local sandbox id.",
                "Pass the id a local sandbox was created with.",
            )
        return self.root / sandbox_id

    def _needed(self) -> list[Path]:
        """Read-only paths the sandbox needs even when they sit under a hidden directory."""
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

    def _bwrap(self, state: Path, extra: list[str] = ()) -> list[str]:
        """The sandbox's view: an empty root with the system read-only, the sandbox's own identity files, home and
        /tmp, and the runtime; the host's other directories (homes, this checkout's .env, other sandboxes' state,
        /etc's credentials) are not there at all."""
        argv = [shutil.which("bwrap") or "bwrap"]
        for path in SYSTEM_PATHS:
            if Path(path).is_symlink():  # merged /usr: /bin -> usr/bin
                argv += ["--symlink", os.readlink(path), path]
            elif Path(path).exists():
                argv += ["--ro-bind", path, path]
        argv += [arg for name in ETC_FILES if Path("/etc", name).exists() for arg in ("--ro-bind", f"/etc/{name}",
                                                                                      f"/etc/{name}")]
        for name, path in _identity_files(state).items():
            argv += ["--ro-bind", str(path), f"/etc/{name}"]
        argv += ["--tmpfs", "/root", "--dir", "/home", "--bind", str(state / "home"), HOME]
        argv += ["--bind", str(state / "tmp"), "/tmp", "--dir", "/var", "--symlink", "/tmp", "/var/tmp"]
        for path in self._needed():  # after the private /tmp and home, so a checkout under /tmp still shows through
            argv += ["--ro-bind", str(path), str(path)]
        argv += ["--dev", "/dev", "--proc", "/proc"]
        argv += ["--unshare-user", "--uid", "1000", "--gid", "1000", "--unshare-pid", "--unshare-ipc"]
        argv += ["--unshare-uts", "--hostname", "agentbox", "--die-with-parent", "--new-session", "--chdir", HOME]
        return sealed([*argv, *extra])

    def _offline(self, state: Path, command: list[str]) -> list[str]:
        """bwrap arguments that run `command` in a network namespace of its own, whose only ways out are the
        sandbox's egress proxy sockets (see `jailnet`)."""
        routes = (_read_info(state) or {}).get("routes", [])
        return ["--unshare-net", "--ro-bind", str(state / "net"), NET_DIR, "--",
                sys.executable, "-I", "-S", str(JAILNET), *routes, "--", *command]

    def prepare_private_dirs(self, state: Path, sandbox_id: str) -> None:
        """The sandbox's home (setgid, so what is made in it stays reachable by the root group), /tmp (sticky and
        open to all, as a /tmp is: only this sandbox can reach it) and its egress sockets' directory, owned by its
        user; and in them, the mount points of the runtime paths that lie under /tmp or the home (a checkout in
        /tmp), made once here: bwrap run as the sandbox's user could not make them in a directory that a root-run
        program (the gateway) made first. They stay writable by the root group, so a root-run bwrap can still make
        its own mount points under them."""
        uid = sandbox_uid(sandbox_id)
        own(uid, state / "home", state / "tmp", state / "net")
        if uid is not None:
            (state / "home").chmod(0o2770)
            (state / "tmp").chmod(0o1777)
        for path in self._needed():
            with contextlib.suppress(SandboxError):
                mkdirs_owned(self._host_path(state, str(path)), uid, 0o2775)

    def _confined(self, state: Path, argv: list[str]) -> list[str]:
        """A command's bwrap argv, started as the sandbox's own user with its limits (see `confine`)."""
        return confined(argv, sandbox_uid(state.name), self.max_processes, self.max_memory_mib << 20)

    def _base_env(self) -> dict[str, str]:
        path = [str(PROJECT_DIR / "node_modules" / ".bin"), str(Path(sys.executable).parent)]
        path += ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        # PYTHONPATH: the gateway imports the very agentbox this process runs, whichever checkout the venv points at.
        return {"HOME": HOME, "USER": "user", "PATH": ":".join(path), "LANG": "C.UTF-8", "TMPDIR": "/tmp",
                "PYTHONPATH": str(PROJECT_DIR)}

    def _host_path(self, state: Path, path: str) -> Path:
        """Where a path inside the sandbox lives on the host (only the private home and /tmp are writable)."""
        for inside, outside in ((HOME, state / "home"), ("/tmp", state / "tmp")):
            if path == inside or path.startswith(inside + "/"):
                host = (outside / path[len(inside) :].lstrip("/")).resolve()
                if host == outside.resolve() or outside.resolve() in host.parents:
                    return host
        raise SandboxError(f"Cannot write {path} in a local sandbox.", f"Write under {HOME} or /tmp.")

    # -- the port ---------------------------------------------------------------------------------------------

    async def create(
        self,
        mcp_config: dict,
        envs: dict[str, str],
        ttl_seconds: int,
        metadata: dict[str, str],
        idempotency_key: str | None = None,  # a local create is not retried behind our back
        tools: list[str] | None = None,
        network: Network | None = None,
    ) -> SandboxHandle:
        await self._check_bubblewrap()
        spare = self._claim_spare() if self.warm_spare else None
        while True:
            state = spare or self.root / f"local-{secrets.token_hex(6)}"
            sandbox_id = state.name
            try:
                with _translated(f"create a local sandbox under {self.root}",
                                 "Check LOCAL_SANDBOX_ROOT and disk space."):
                    if not spare:
                        self._make_dirs(state)
                    info = self._prepare(state, sandbox_id, mcp_config, envs, ttl_seconds, metadata, tools,
                                         network or Network())
                    if spare:
                        await self._wake_spare(state)
                    else:
                        await self._start_supervisor(state)
                break
            except SandboxError:
                await asyncio.shield(asyncio.to_thread(_abandon, state, spare is not None))
                if not spare:
                    raise
                spare = None  # a spare that failed to wake: start a sandbox of its own instead
            except BaseException:
                await asyncio.shield(asyncio.to_thread(_abandon, state, spare is not None))
                raise
        url = f"http://127.0.0.1:{info['gateway_port']}/mcp"
        return SandboxHandle(
            id=sandbox_id,
            backend="local",
            gateway_url=url,
            internal_gateway_url=url,
            metadata=info["metadata"],
            created_at=datetime.fromisoformat(info["created_at"]),
            expires_at=datetime.fromisoformat(info["expires_at"]),
        )

    def _gateway_argv(self, state: Path, *options: str) -> list[str]:
        """The sandbox's gateway under bubblewrap: its config read-only, its call log the only place it writes."""
        return self._bwrap(state, ["--tmpfs", "/run", "--ro-bind", str(state / "gateway"), GATEWAY_DIR,
                                   "--bind", str(state / "audit"), AUDIT_DIR, "--",
                                   sys.executable, "-m", "agentbox.gateway", *options])

    def _make_dirs(self, state: Path) -> None:
        """A new sandbox's state directory, with its private directories (its processes come later)."""
        for sub in ("home", "tmp", "gateway", "audit", "procs", "net"):
            (state / sub).mkdir(parents=True, mode=0o700)
        self.prepare_private_dirs(state, state.name)

    # -- warm spares (LOCAL_WARM_GATEWAY) ----------------------------------------------------------------------

    def _fingerprint(self) -> str:
        """Where and what a spare's gateway runs: only a create from the same network and user namespaces (a
        rehearsal re-run in a private network has its own loopback), the same user, interpreter, checkout and
        version of the agentbox package (an edit since the spare started makes it stale) may claim it."""
        sources = sorted((PROJECT_DIR / "agentbox").rglob("*.py"))
        latest = max((p.stat().st_mtime_ns for p in sources), default=0)
        namespaces = [os.stat(f"/proc/self/ns/{ns}").st_ino for ns in ("net", "user")]
        return f"{namespaces}|{os.geteuid()}|{sys.executable}|{PROJECT_DIR}|{len(sources)}|{latest}"

    def _claim_spare(self) -> Path | None:
        """A warm spare's state, claimed by renaming its marker away (one claimer wins), or None."""
        fingerprint = self._fingerprint()
        for marker in sorted(self.root.glob(f"local-*/{SPARE_MARKER}")):
            state = marker.parent
            try:
                if marker.read_text() != fingerprint:
                    continue
                marker.rename(state / "spare.claimed")
            except OSError:  # claimed or expired meanwhile
                continue
            if process_alive(_read_pid(state / "supervisor.pid"), str(state)):
                return state
            shutil.rmtree(state, ignore_errors=True)
        return None

    async def _wake_spare(self, state: Path) -> None:
        """Tell a claimed spare's supervisor its sandbox is written; it is ready once its egress sockets exist."""
        pid = _read_pid(state / "supervisor.pid")
        if pid is None or not process_alive(pid, str(state)):
            raise SandboxError("The warm spare gateway it claimed was gone.", "Run again.")
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + EGRESS_READY_WITHIN
        while not egress_ready(state):
            if not process_alive(pid, str(state)) or time.monotonic() > deadline:
                detail = one_line((state / "supervisor.log").read_text(errors="replace"), last=True, empty="no log")
                raise SandboxError(f"The local sandbox supervisor failed to start ({detail}).")
            await asyncio.sleep(0.005)

    def make_spare(self) -> None:
        """Start a warm spare (a supervisor and a gateway that imports and waits for its options) unless one
        waits already: the next create claims it and skips the gateway's imports."""
        for state in self._spare_states():  # one spare at a time, counting those still starting
            if process_alive(_read_pid(state / "supervisor.pid"), str(state)):
                return
            if time.time() - (state / "spare.json").stat().st_mtime > STARTING_GRACE_SECONDS:
                shutil.rmtree(state, ignore_errors=True)  # a spare that died (a reboot, a SIGKILL)
            else:
                return  # its supervisor has not written its pid yet
        state = self.root / f"local-{secrets.token_hex(6)}"
        self._make_dirs(state)
        env = self._base_env()
        spare = {"fingerprint": self._fingerprint(), "env": env,
                 "gateway_argv": self._gateway_argv(state, "--stdin-config")}
        _write_private(state / "spare.json", json.dumps(spare))
        # Not waited for: the session that made it has ended, and a spare that fails to start removes itself (the
        # next create starts its gateway cold). Its launcher is reaped with this process's next child, or by init.
        # Its environment is the sandbox's base one: it outlives this run, and must not keep what this run held.
        with open(state / "supervisor.log", "ab") as log:
            subprocess.Popen([sys.executable, "-m", "agentbox.sandboxes.supervisor", str(state), "--spare"],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/",
                             env=env)

    def _spare_states(self) -> list[Path]:
        """Warm spares under the root, claimable or still starting; a claimed one is a sandbox (its sandbox.json)."""
        return [j.parent for j in self.root.glob("local-*/spare.json") if not (j.parent / "sandbox.json").exists()]

    def discard_spares(self) -> int:
        """Stop every warm spare under the root (they also go by themselves after SPARE_TTL_SECONDS)."""
        states = self._spare_states()
        for state in states:
            discard_spare(state)
        return len(states)

    def _prepare(
        self,
        state: Path,
        sandbox_id: str,
        mcp_config: dict,
        envs: dict[str, str],
        ttl_seconds: int,
        metadata: dict[str, str],
        tools: list[str] | None,
        network: Network,
    ) -> dict:
        """Write what the supervisor and later commands need; secrets only in files only the owner can read."""
        port = free_port()
        token = secrets.token_urlsafe(24)
        _write_private(state / "gateway" / "mcp.json", json.dumps(mcp_config))
        _write_private(state / "token", token)
        _write_private(state / "env.json", json.dumps(_inside_env(envs)))
        _write_private(state / "egress.json", json.dumps(_egress_config(state, envs, network, port, token)))
        gateway_args = ["--config", f"@{GATEWAY_DIR}/mcp.json", "--host", "127.0.0.1", "--port", str(port)]
        if self.catalog_file:
            shutil.copyfile(self.catalog_file, state / "gateway" / "catalog.json")
            gateway_args += ["--catalog", f"{GATEWAY_DIR}/catalog.json"]
        if tools is not None:
            gateway_args += ["--tools", ",".join(tools)]
        created = _now()
        info = {
            "id": sandbox_id,
            "metadata": {k: str(v) for k, v in metadata.items()},
            "created_at": created.isoformat(),
            "expires_at": (created + timedelta(seconds=ttl_seconds)).isoformat(),
            "gateway_port": port,
            "gateway_args": gateway_args,
            "routes": [f"{PROXY_INSIDE}={NET_DIR}/proxy.sock", f"{MODEL_INSIDE}={NET_DIR}/model.sock",
                       f"127.0.0.1:{port}={NET_DIR}/gateway.sock"],
            "gateway_argv": self._gateway_argv(state, *gateway_args),
        }
        _write_private(state / "sandbox.json", json.dumps(info))
        gateway_env = {
            **self._base_env(),
            "GATEWAY_ACCESS_TOKEN": token,
            "GATEWAY_CALL_LOG": f"{AUDIT_DIR}/{CALL_LOG}",
            "GATEWAY_SECRET_VALUES": json.dumps([v for k, v in envs.items() if looks_secret(k)]),
        }
        _write_private(state / "gateway_env.json", json.dumps(gateway_env))
        return info

    async def _check_bubblewrap(self) -> None:
        """bwrap must exist and be allowed to create user namespaces; say how to fix it if not."""
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

    async def _start_supervisor(self, state: Path) -> None:
        """Start the detached supervisor (it double-forks, so it outlives this process and is nobody's zombie)."""
        log = open(state / "supervisor.log", "ab")
        with log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentbox.sandboxes.supervisor", str(state),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                cwd="/",
            )
            code = await proc.wait()
        if code != 0:
            detail = one_line((state / "supervisor.log").read_text(errors="replace"), last=True)
            raise SandboxError(f"The local sandbox supervisor failed to start ({detail}).")

    async def gateway_token(self, handle: SandboxHandle) -> str:
        state = self._state(handle.id)
        with _translated(f"read the gateway token of {handle.id}", state=state):
            return (state / "token").read_text()

    async def claude_gateway_token(self, handle: SandboxHandle) -> str:
        return PLACEHOLDER  # the egress proxy puts the real one on every request to the gateway

    def _require_running(self, sandbox_id: str) -> Path:
        state = self._state(sandbox_id)
        info = _read_info(state)
        if not info or not process_alive(_read_pid(state / "supervisor.pid"), str(state)):
            raise SandboxError(
                f"Sandbox {sandbox_id} is not running (killed or past its TTL).",
                "Create a new sandbox.",
            )
        return state

    async def run(
        self,
        handle: SandboxHandle,
        command: str,
        *,
        envs: dict[str, str] | None = None,
        timeout: float,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: AsyncIterator[str] | None = None,
    ) -> CommandResult:
        state = self._require_running(handle.id)
        with _translated(f"run a command in {handle.id}", state=state):
            env = {**self._base_env(), **json.loads((state / "env.json").read_text()), **(envs or {})}
            proc = await asyncio.create_subprocess_exec(
                *self._confined(state, self._bwrap(state, self._offline(state, ["/bin/bash", "-c", command]))),
                env=env, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
            )
            marker = state / "procs" / str(proc.pid)
            marker.touch()
        out: list[str] = []
        err: list[str] = []
        parts = [
            asyncio.ensure_future(_pump(proc.stdout, out, on_stdout)),
            asyncio.ensure_future(_pump(proc.stderr, err, on_stderr)),
            asyncio.ensure_future(proc.wait()),
        ]
        feeding = asyncio.ensure_future(_feed(proc.stdin, stdin)) if stdin is not None else None
        try:
            _, pending = await asyncio.wait(parts, timeout=timeout)
            if pending:
                raise SandboxCommandTimeout(
                    f"Command in sandbox {handle.id} ran past its {timeout:g} s timeout and was killed."
                )
        finally:
            if proc.returncode is None:  # timed out, or this task was cancelled: the process goes too
                _killpg(proc.pid)
            for part in [*parts, *([feeding] if feeding else [])]:
                part.cancel()
            await asyncio.shield(asyncio.gather(*parts, *([feeding] if feeding else []), return_exceptions=True))
            await asyncio.shield(proc.wait())
            marker.unlink(missing_ok=True)
        if proc.returncode != 0 and handle.expired():  # the supervisor killed it with the sandbox
            raise handle.expired_error()
        return CommandResult(proc.returncode, "".join(out), "".join(err))

    async def write_file(self, handle: SandboxHandle, path: str, data: str | bytes) -> None:
        state = self._require_running(handle.id)
        target = self._host_path(state, path)
        with _translated(f"write {path} in {handle.id}", state=state):
            write_owned(target, data.encode() if isinstance(data, str) else data, sandbox_uid(handle.id))

    async def gateway_calls(self, handle: SandboxHandle) -> list[dict[str, Any]] | None:
        return await self._audit_log(handle, CALL_LOG, "gateway's call log")

    async def _audit_log(self, handle: SandboxHandle, name: str, what: str) -> list[dict[str, Any]]:
        state = self._state(handle.id)
        with _translated(f"read the {what} of {handle.id}", state=state):
            log = state / "audit" / name
            lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    async def egress_log(self, handle: SandboxHandle) -> list[dict[str, Any]] | None:
        return await self._audit_log(handle, EGRESS_LOG, "egress log")

    async def kill(self, sandbox_id: str) -> bool:
        state = self._state(sandbox_id)
        killed = await asyncio.to_thread(kill_state, state)
        if self.warm_spare:  # now, when the session no longer needs the CPU, for the next create to claim
            with contextlib.suppress(SandboxError, OSError):
                self.make_spare()
        return killed

    async def list(self, metadata: dict[str, str] | None = None) -> list[SandboxInfo]:
        found: list[SandboxInfo] = []
        if not self.root.is_dir():
            return found
        for state in sorted(self.root.iterdir()):
            info = _read_info(state)
            alive = info and process_alive(_read_pid(state / "supervisor.pid"), str(state))
            if not (alive or (info and _starting(state, info))):
                continue
            if all(info["metadata"].get(k) == v for k, v in (metadata or {}).items()):
                found.append(
                    SandboxInfo(
                        id=info["id"],
                        metadata=info["metadata"],
                        created_at=datetime.fromisoformat(info["created_at"]),
                        expires_at=datetime.fromisoformat(info["expires_at"]),
                    )
                )
        return found


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
    """`directory` and the parents it lacks, owned by the sandbox's user (and given `mode`)."""
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


def confined(argv: list[str], uid: int | None, max_processes: int, max_memory: int) -> list[str]:
    """`argv` (a bwrap command line) started through `confine`: as `uid` with every bind source staged where that
    uid reaches it, and with the limits. Sources keep their host path inside the stage, so the command line still
    names the sandbox's state (how its processes are found)."""
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


def sealed(argv: list[str]) -> list[str]:
    """bwrap's argv with its root made read-only once every mount is in place (before the `--` that ends the
    options), so writes succeed only in home, /tmp and what is bound writable."""
    if "--" not in argv:
        return argv
    end = argv.index("--")
    return [*argv[:end], "--remount-ro", "/", *argv[end:]]


def _inside_env(envs: dict[str, str]) -> dict[str, str]:
    """The commands' environment: the model reached through the egress proxy, with a placeholder key; every other
    program's HTTP(S) through its forward proxy."""
    proxy = f"http://{PROXY_INSIDE}"
    inside = {**envs, MODEL_URL_ENV: f"http://{MODEL_INSIDE}"}
    if MODEL_KEY_ENV in envs:
        inside[MODEL_KEY_ENV] = PLACEHOLDER
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        inside[name] = proxy
    return inside


def _egress_config(state: Path, envs: dict[str, str], network: Network, port: int, token: str) -> dict[str, Any]:
    """What the sandbox's egress proxy serves (its sockets in `state/net`)."""
    model_headers = {"x-api-key": envs[MODEL_KEY_ENV]} if MODEL_KEY_ENV in envs else {}
    return {
        "directory": str(state / "net"),
        "proxy": "proxy.sock",
        "allow": network.allow,
        "resolve": network.resolve,
        "log": str(state / "audit" / EGRESS_LOG),
        "services": {
            "model API": {"socket": "model.sock", "upstream": envs.get(MODEL_URL_ENV) or network.model_url,
                          "headers": model_headers, "inside": MODEL_INSIDE},
            "gateway": {"socket": "gateway.sock", "upstream": f"http://127.0.0.1:{port}",
                        "headers": {"Authorization": f"Bearer {token}"}, "inside": f"127.0.0.1:{port}"},
        },
    }


def _identity_files(state: Path) -> dict[str, Path]:
    """The sandbox's /etc/passwd, group, hosts and hostname, written once into its state."""
    directory = state / "etc"
    directory.mkdir(exist_ok=True)
    files = {}
    for name, text in IDENTITY.items():
        path = directory / name
        if not path.exists():
            path.write_text(text)
        files[name] = path
    return files


@contextlib.contextmanager
def _translated(action: str, hint: str = "", state: Path | None = None) -> Iterator[None]:
    """The host's OS errors as the product's: what failed, and what to do. When the sandbox's `state` has vanished
    meanwhile, the cause is that the sandbox is gone, whatever the error."""
    try:
        yield
    except OSError as exc:
        if state is not None and not state.exists():
            raise SandboxError(
                f"Cannot {action}: the sandbox is gone (killed or past its TTL).", "Create a new sandbox."
            ) from None
        raise SandboxError(
            f"Cannot {action} ({exc.strerror or one_line(exc)}).",
            hint or "See the sandbox's logs.",
        ) from None


def _starting(state: Path, info: dict) -> bool:
    """A sandbox whose supervisor has not written its pid yet, created moments ago: its creator may have died in
    between (a SIGKILLed flow), so janitors must see it; killing it removes the state and the supervisor gives up."""
    age = (_now() - datetime.fromisoformat(info["created_at"])).total_seconds()
    return not (state / "supervisor.pid").exists() and age < STARTING_GRACE_SECONDS


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _read_info(state: Path) -> dict | None:
    try:
        return json.loads((state / "sandbox.json").read_text())
    except (OSError, ValueError):
        return None


async def _pump(stream: asyncio.StreamReader, sink: list[str], callback: OutputCallback | None) -> None:
    """Forward output as it arrives, decoding UTF-8 across chunk boundaries."""
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


async def _feed(pipe: asyncio.StreamWriter, chunks: AsyncIterator[str]) -> None:
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


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def egress_ready(state: Path) -> bool:
    """Whether the sandbox's egress proxy has made its sockets (its commands need them)."""
    return all((state / "net" / name).exists() for name in ("proxy.sock", "model.sock", "gateway.sock"))


def _abandon(state: Path, spare: bool) -> None:
    """Undo a create that failed: a claimed spare's supervisor may not have read its sandbox yet, so it is stopped
    first."""
    if spare:
        discard_spare(state)
    kill_state(state)


def discard_spare(state: Path) -> None:
    """Stop a warm spare that is not claimed: its supervisor kills its gateway and removes its state."""
    with contextlib.suppress(OSError):
        (state / SPARE_MARKER).rename(state / "spare.discarded")  # nobody claims it any more
    pid = _read_pid(state / "supervisor.pid")
    if process_alive(pid, str(state)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while process_alive(pid, str(state)) and time.monotonic() < deadline:
            time.sleep(0.01)
        if process_alive(pid, str(state)):  # still ours: its whole group goes (a dead pid's group may be another's)
            _killpg(pid)
    shutil.rmtree(state, ignore_errors=True)


def kill_state(state: Path) -> bool:
    """Kill every process of a sandbox (supervisor, gateway, commands), wait until they are gone, remove its state.

    Shared by `kill` and the supervisor's TTL expiry. Idempotent: a missing sandbox returns False.
    """
    info = _read_info(state)
    if info is None:
        shutil.rmtree(state, ignore_errors=True)
        return False
    marker = str(state)
    pids = [int(p.name) for p in (state / "procs").glob("*") if p.name.isdigit()]
    supervisor = _read_pid(state / "supervisor.pid")
    was_running = process_alive(supervisor, marker)
    groups = [*pids, *([supervisor] if was_running and supervisor != os.getpid() else [])]
    helpers = [_read_pid(state / "gateway.pid"), _read_pid(state / "egress.pid")]
    for pid in groups:
        _killpg(pid)
    deadline = time.monotonic() + 5
    while any(process_alive(pid, marker) for pid in [*groups, *helpers]) and time.monotonic() < deadline:
        time.sleep(0.01)
    shutil.rmtree(state, ignore_errors=True)
    return was_running
