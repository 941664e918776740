"""The stand-in's books: every sandbox ever created, the requests the SDK sent, the injected faults, and the life of a
sandbox (create, TTL, kill). Everything here runs on the stand-in's own event loop; tests read frozen snapshots
(`SandboxRecord`, `RecordedRequest`, `CommandRecord`) through `E2BStandIn`, never the live objects."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import json
import os
import random
import secrets
import shutil
import signal
import socket
import string
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from e2b.envd.process import process_pb as pb

from agentbox.sandboxes.local.egress import Egress
from agentbox.sandboxes.local.network import PROXY_INSIDE, route
from agentbox.sandboxes.local.state import SandboxState
from tests.e2b_standin.jail import Jail, reap

log = logging.getLogger("e2b_standin")

MCP_PORT = 50005  # AsyncSandbox.mcp_port: where E2B's mcp-gateway listens
ENVD_VERSION = "0.6.4"  # >= 0.4.0: the SDK sends no implicit user; >= 0.5.7: octet-stream uploads allowed
ADDRESS_LOCKS = Path(tempfile.gettempdir()) / ".e2b-standin-addresses"  # shared by every stand-in on this host
GONE = object()  # put on a stream's queue when its sandbox dies: the stream ends as E2B's does (UNAVAILABLE)


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_sandbox_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(20))


# ------------------------------------------------------------------------------------------------ what tests see


@dataclass(frozen=True)
class SandboxRecord:
    """One sandbox in the books, alive or not. `state`: running, killed (DELETE), timed_out (TTL), vanished
    (injected), stopped (the stand-in shut down while it ran)."""

    id: str
    template: str
    metadata: dict[str, str]
    envs: dict[str, str]
    timeout: int
    lifecycle: dict[str, Any]  # autoPause / autoPauseMemory / autoResume exactly as the create body had them
    mcp: dict | None
    idempotency_key: str | None
    domain: str
    created_at: datetime
    end_at: datetime  # when the TTL kills it (moved by set_timeout and connect)
    ended_at: datetime | None
    state: str
    network: dict | None = None  # the create body's egress policy, as received

    @property
    def alive(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class RecordedRequest:
    """A control-plane request as the stand-in received it; `x-api-key` is redacted."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    status: int


@dataclass(frozen=True)
class CommandRecord:
    """A process started over envd (env values are left out: they may be secrets)."""

    sandbox_id: str
    cmd: str
    args: tuple[str, ...]
    user: str
    env_names: tuple[str, ...]
    cwd: str | None
    timeout_ms: int | None


@dataclass
class Fault:
    """An injected fault; `hits` counts how often it fired, `count` how often it still will (None: until cleared).
    `rate` is the chance that a request it matches is hit (thrown with `rng`, seeded by the stand-in); `session`, a
    text the sandbox's metadata must contain (one session of a batch, say)."""

    kind: str
    params: dict[str, Any]
    count: int | None = 1
    hits: int = 0
    rate: float = 1.0
    session: str | None = None
    rng: random.Random = field(default_factory=random.Random)

    def concerns(self, metadata: dict[str, str] | None) -> bool:
        return self.session is None or self.session in json.dumps(metadata or {}, sort_keys=True)

    def take(self) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.rate < 1 and self.rng.random() >= self.rate:
            return False
        if self.count is not None:
            self.count -= 1
        self.hits += 1
        return True


# ------------------------------------------------------------------------------------------------ live objects


@dataclass
class Proc:
    """A process started over envd: the outer bwrap's host pid is the pid the SDK sees."""

    pid: int
    config: pb.ProcessConfig
    tag: str | None
    popen: asyncio.subprocess.Process
    subscribers: set[asyncio.Queue] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    vanish_after_start: bool = False
    cut_after: float | None = None  # seconds after which its stream breaks off (an injected fault)

    def broadcast(self, event: object) -> None:
        for q in list(self.subscribers):
            q.put_nowait(event)

    def signal(self, sig: int) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)  # its own session: bwrap and, through --die-with-parent, all inside


@dataclass
class Sandbox:
    id: str
    template: str
    envd_token: str
    domain: str  # its own loopback address, handed out as the sandbox's `domain`
    metadata: dict[str, str]
    envs: dict[str, str]
    mcp: dict | None
    lifecycle: dict[str, Any]
    timeout: int
    idempotency_key: str | None
    allow_internet_access: bool | None
    created_at: datetime
    end_at: datetime
    dir: Path  # state: home/, tmp/, gateway/, mcp-gateway/ (the token), gateway.log
    state: str = "running"
    ended_at: datetime | None = None
    procs: dict[int, Proc] = field(default_factory=dict)
    gateway: asyncio.subprocess.Process | None = None
    ttl_task: asyncio.Task | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    final_gateway_log: str = ""  # kept when the state directory goes
    network: dict | None = None  # the egress policy create received (allowOut, denyOut, rules)
    egress: list[asyncio.AbstractServer] | None = None  # its egress proxy, started with the first command

    def gateway_log(self) -> str:
        path = self.dir / "gateway.log"
        return path.read_text(errors="replace") if self.alive and path.exists() else self.final_gateway_log

    @property
    def alive(self) -> bool:
        return self.state == "running"

    def record(self) -> SandboxRecord:
        return SandboxRecord(
            id=self.id, template=self.template, metadata=dict(self.metadata), envs=dict(self.envs),
            timeout=self.timeout, lifecycle=dict(self.lifecycle), mcp=self.mcp, idempotency_key=self.idempotency_key,
            domain=self.domain, created_at=self.created_at, end_at=self.end_at, ended_at=self.ended_at,
            state=self.state, network=self.network,
        )


def egress_config(sbx: Sandbox, log: Path) -> dict[str, Any]:
    """E2B's egress policy as the stand-in enforces it, with this project's egress proxy: `denyOut` everything and
    `allowOut` hosts (any port; CIDRs other than everything are not emulated), or no policy at all; `rules` headers
    added to plain-HTTP requests through the proxy (E2B's own proxy also rewrites HTTPS, which this one cannot)."""
    network = sbx.network or {}
    allow_out = network.get("allowOut")
    deny_all = "0.0.0.0/0" in (network.get("denyOut") or [])
    allow = [f"{h}:*" for h in allow_out or [] if "/" not in h] if (allow_out is not None or deny_all) else ["*:*"]
    inject = {host: {k: v for rule in rules for k, v in rule.get("transform", {}).get("headers", {}).items()}
              for host, rules in (network.get("rules") or {}).items()}
    return {
        "directory": str(SandboxState(sbx.dir).net),
        "proxy": SandboxState.PROXY_SOCKET,
        "allow": allow,
        "inject": inject,
        "log": str(log),
        "services": {"gateway": {"socket": SandboxState.GATEWAY_SOCKET, "upstream": f"http://{sbx.domain}:{MCP_PORT}",
                                 "inside": f"{sbx.domain}:{MCP_PORT}"}},
    }


# ------------------------------------------------------------------------------------------------ the books


class State:
    """Everything both servers share. Only touched from the stand-in's event loop."""

    def __init__(self, api_key: str, base_dir: Path, page_size: int, catalog_file: str | None) -> None:
        self.api_key = api_key
        self.base_dir = base_dir
        self.jail = Jail(base_dir)
        self.default_page_size = page_size
        self.page_size = page_size
        self.catalog_file = catalog_file
        self.sandboxes: dict[str, Sandbox] = {}  # every sandbox ever created, by id
        self.idempotency: dict[str, str] = {}  # Idempotency-Key -> sandbox id
        self.faults: list[Fault] = []
        self.requests: list[RecordedRequest] = []
        self.commands: list[CommandRecord] = []
        self.used_hosts: dict[str, int] = {}  # address -> fd of its lock file
        self.resolve: dict[str, str] = {}  # names the sandboxes' DNS answers with these addresses (tests' hosts)
        self._fake_pids = iter(range(10_000_000, 20_000_000))

    def live(self, sandbox_id: str | None) -> Sandbox | None:
        sbx = self.sandboxes.get(sandbox_id or "")
        return sbx if sbx and sbx.alive else None

    def fake_pid(self) -> int:
        return next(self._fake_pids)

    def take_fault(self, kind: str, match: str | None = None, metadata: dict[str, str] | None = None) -> Fault | None:
        """The first armed fault of `kind` (whose `match` substring occurs in `match`, when given, and whose session
        the sandbox's `metadata` names); it fires."""
        for fault in self.faults:
            wanted = fault.params.get("match")
            if fault.kind != kind or (match is not None and wanted is not None and wanted not in match):
                continue
            if not fault.concerns(metadata):
                continue
            if fault.take():
                return fault
        return None

    # -- sandboxes ---------------------------------------------------------------------------------------------

    def alloc_host(self) -> str:
        """A loopback address of its own for each sandbox, so every gateway can listen on port 50005. An address is
        held with a lock file (released when the sandbox ends, or with the process) so that stand-ins in other
        processes never hand out the same one before its gateway listens; free means port 50005 binds there too."""
        ADDRESS_LOCKS.mkdir(mode=0o700, exist_ok=True)
        for n in range(2, 65534):
            host = f"127.77.{n // 256}.{n % 256}"
            if host in self.used_hosts or n % 256 in (0, 255):
                continue
            fd = os.open(ADDRESS_LOCKS / host, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                with socket.socket() as s:
                    s.bind((host, MCP_PORT))
            except OSError:
                os.close(fd)
                continue
            self.used_hosts[host] = fd
            return host
        raise RuntimeError("no free loopback address in 127.77.0.0/16")

    async def routes(self, sbx: Sandbox) -> list[str]:
        """The ways out of a command's network namespace (see `Jail.argv`), its egress proxy started first."""
        if sbx.egress is None:
            config = {**egress_config(sbx, self.egress_log_path(sbx.id)), "resolve": self.resolve}
            sbx.egress = await Egress(config).start()
        return [route(PROXY_INSIDE, SandboxState.PROXY_SOCKET),
                route(f"{sbx.domain}:{MCP_PORT}", SandboxState.GATEWAY_SOCKET)]

    def egress_log_path(self, sandbox_id: str) -> Path:
        return self.base_dir / f"egress-{sandbox_id}.jsonl"

    def release_host(self, host: str) -> None:
        fd = self.used_hosts.pop(host, None)
        if fd is not None:
            os.close(fd)

    def create(self, body: dict, idempotency_key: str | None) -> Sandbox:
        timeout = int(body.get("timeout", 300))
        sbx_id = new_sandbox_id()
        created = now()
        sbx = Sandbox(
            id=sbx_id,
            template=str(body["templateID"]),
            envd_token=secrets.token_urlsafe(24),
            domain=self.alloc_host(),
            metadata={str(k): str(v) for k, v in (body.get("metadata") or {}).items()},
            envs={str(k): str(v) for k, v in (body.get("envVars") or {}).items()},
            mcp=body.get("mcp"),
            lifecycle={k: body[k] for k in ("autoPause", "autoPauseMemory", "autoResume") if k in body},
            timeout=timeout,
            idempotency_key=idempotency_key,
            allow_internet_access=body.get("allow_internet_access"),
            network=body.get("network"),
            created_at=created,
            end_at=created + timedelta(seconds=timeout),
            dir=self.base_dir / sbx_id,
        )
        try:
            self.jail.prepare(sbx.dir)
        except BaseException:
            self.release_host(sbx.domain)
            raise
        self.sandboxes[sbx_id] = sbx
        if idempotency_key:
            self.idempotency[idempotency_key] = sbx_id
        self.schedule_ttl(sbx)
        return sbx

    def schedule_ttl(self, sbx: Sandbox) -> None:
        if sbx.ttl_task:
            sbx.ttl_task.cancel()

        async def expire() -> None:
            await asyncio.sleep(max(0.0, (sbx.end_at - now()).total_seconds()))
            # autoPause is not emulated (a paused sandbox would need a snapshot): on_timeout=pause also kills
            log.info("sandbox %s reached its timeout: killed", sbx.id)
            await self.kill(sbx, "timed_out")

        sbx.ttl_task = asyncio.create_task(expire())

    async def kill(self, sbx: Sandbox, reason: str) -> bool:
        """Kill every process of the sandbox and wait until none is left; False if it was not running."""
        if not sbx.alive:
            return False
        sbx.state, sbx.ended_at = reason, now()  # from here on envd answers 502 "not found" for it
        sbx.gone.set()
        if sbx.ttl_task and sbx.ttl_task is not asyncio.current_task():
            sbx.ttl_task.cancel()
        for proc in list(sbx.procs.values()):
            proc.broadcast(GONE)  # streams in flight end first, as when E2B's proxy drops the connection
            proc.signal(signal.SIGKILL)
        gateway, sbx.gateway = sbx.gateway, None
        if gateway is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(gateway.pid, signal.SIGKILL)
        left = await reap(sbx.dir)  # bwrap's pid 1 and all inside die a moment after the outer bwrap, or are killed
        if left:
            log.error("sandbox %s: processes survived SIGKILL: %s", sbx.id, left)
        for server in sbx.egress or []:
            server.close()
        self.release_host(sbx.domain)
        log_path = sbx.dir / "gateway.log"
        sbx.final_gateway_log = log_path.read_text(errors="replace") if log_path.exists() else ""
        shutil.rmtree(sbx.dir, ignore_errors=True)
        return True

    async def kill_all(self, reason: str) -> int:
        alive = [s for s in self.sandboxes.values() if s.alive]
        await asyncio.gather(*(self.kill(s, reason) for s in alive))
        return len(alive)
