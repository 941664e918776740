"""A local sandbox's state directory on the host: the one place that names its files and directories.

A sandbox is its state directory under the backend's root (`local-` and 12 hex digits, its id) and the processes
whose command lines name that directory (its supervisor, its gateway's and its commands' bubblewrap, its egress
proxy): that is how they are found again, so the root is always given resolved.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from agentbox.errors import SandboxError, one_line
from agentbox.host import process_alive, read_pid

ID_PREFIX = "local-"
STARTING_GRACE_SECONDS = 60  # how long a sandbox may take to get its supervisor running
ABANDONED_AFTER_SECONDS = 20  # a state nobody supervises (its creator died mid-create) is swept after this
SUPERVISOR = "agentbox.sandboxes.local.supervisor"
LEASE_MOVED = signal.SIGUSR2  # tells the supervisor to read its lease again (blocked by it from its first moment)


@dataclass(frozen=True)
class SandboxState:
    """The state directory of one sandbox, `path`; its name is the sandbox's id."""

    path: Path

    # Files in directories bound into the sandbox's gateway or commands, which name them too.
    MCP_CONFIG = "mcp.json"  # in `gateway`: the gateway's MCP config
    CATALOG = "catalog.json"  # in `gateway`: a copy of LOCAL_MCP_CATALOG, when one is set
    CALL_LOG = "calls.jsonl"  # in `audit`: the gateway's call log
    EGRESS_AUDIT = "egress.jsonl"  # in `audit`: the egress proxy's decisions
    PROXY_SOCKET = "proxy.sock"  # in `net`: the egress proxy's forward proxy
    MODEL_SOCKET = "model.sock"  # in `net`: the model API, through the egress proxy
    GATEWAY_SOCKET = "gateway.sock"  # in `net`: the gateway, through the egress proxy
    TELEMETRY_SOCKET = "telemetry.sock"  # in `net`: the OTLP endpoint, through the egress proxy (tracing on)
    SPARE_ORDER = "spare.json"  # a warm spare's gateway argv, environment and fingerprint
    # A warm spare's marker file in each stage of its life (the keys are `spare.SpareStage`'s values).
    SPARE_MARKERS = {"starting": "spare.new", "claimable": "spare", "claimed": "spare.claimed",
                     "discarded": "spare.discarded", "expired": "spare.expired"}

    @classmethod
    def new(cls, root: Path) -> SandboxState:
        """The state of a sandbox to be made under `root`, with a fresh random id (nothing is written)."""
        return cls(root / f"{ID_PREFIX}{secrets.token_hex(6)}")

    @classmethod
    def of(cls, root: Path, sandbox_id: str) -> SandboxState:
        """The state of sandbox `sandbox_id` under `root`; a SandboxError when no local sandbox has that id."""
        if not sandbox_id.startswith(ID_PREFIX) or "/" in sandbox_id:
            raise SandboxError(
                f"'{sandbox_id}' is not a local sandbox id.",
                "Pass the id a local sandbox was created with.",
            )
        return cls(root / sandbox_id)

    @classmethod
    def with_spare_order(cls, root: Path) -> list[SandboxState]:
        """The states under `root` that hold a warm spare's order (claimed spares included)."""
        return [cls(found.parent) for found in root.glob(f"{ID_PREFIX}*/{cls.SPARE_ORDER}")]

    @classmethod
    def with_spare_marker(cls, root: Path, stage: str) -> list[SandboxState]:
        """The states under `root` whose warm spare is in `stage`, by id."""
        return [cls(found.parent) for found in sorted(root.glob(f"{ID_PREFIX}*/{cls.SPARE_MARKERS[stage]}"))]

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def marker(self) -> str:
        """What the command line of each of the sandbox's processes holds: its state's path."""
        return str(self.path)

    def supervisor_command(self, *flags: str) -> list[str]:
        """The command line of the sandbox's supervisor (`supervisor`), which names the state."""
        return [sys.executable, "-m", SUPERVISOR, str(self.path), *flags]

    # -- directories -------------------------------------------------------------------------------------------

    @property
    def home(self) -> Path:  # the sandbox's /home/user
        return self.path / "home"

    @property
    def tmp(self) -> Path:  # the sandbox's /tmp (and /var/tmp)
        return self.path / "tmp"

    @property
    def gateway(self) -> Path:  # the gateway's config, bound read-only into the gateway's bubblewrap
        return self.path / "gateway"

    @property
    def audit(self) -> Path:  # the gateway's call log and the egress proxy's decisions
        return self.path / "audit"

    @property
    def procs(self) -> Path:  # an empty file per running command, named by its pid
        return self.path / "procs"

    @property
    def net(self) -> Path:  # the egress proxy's sockets, bound into every command's bubblewrap
        return self.path / "net"

    @property
    def etc(self) -> Path:  # the sandbox's own identity files (/etc/passwd, group, hosts, hostname)
        return self.path / "etc"

    def make_dirs(self) -> None:
        """Make the state directory and in it the directories a sandbox starts with, those only their owner can
        enter (mode 0700)."""
        for directory in (self.home, self.tmp, self.gateway, self.audit, self.procs, self.net):
            directory.mkdir(parents=True, mode=0o700)

    # -- files -------------------------------------------------------------------------------------------------

    @property
    def info_file(self) -> Path:  # the sandbox: id, metadata, times, its gateway's port, options and argv, routes
        return self.path / "sandbox.json"

    @property
    def supervisor_pid_file(self) -> Path:
        return self.path / "supervisor.pid"

    @property
    def gateway_pid_file(self) -> Path:
        return self.path / "gateway.pid"

    @property
    def egress_pid_file(self) -> Path:
        return self.path / "egress.pid"

    @property
    def lease_file(self) -> Path:  # when the sandbox dies unless its run renews the lease (ISO time; none: its TTL)
        return self.path / "lease"

    @property
    def token_file(self) -> Path:  # the gateway's bearer token
        return self.path / "token"

    @property
    def env_file(self) -> Path:  # the commands' environment (placeholders for the secrets)
        return self.path / "env.json"

    @property
    def egress_config_file(self) -> Path:  # the egress proxy's config; the proxy deletes it once read
        return self.path / "egress.json"

    @property
    def gateway_env_file(self) -> Path:  # the gateway's environment; the supervisor deletes it once read
        return self.path / "gateway_env.json"

    @property
    def spare_order_file(self) -> Path:
        return self.path / self.SPARE_ORDER

    def spare_marker(self, stage: str) -> Path:
        """The marker file of a warm spare in `stage` (a `spare.SpareStage`)."""
        return self.path / self.SPARE_MARKERS[stage]

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    @property
    def gateway_log(self) -> Path:
        return self.path / "gateway.log"

    @property
    def egress_log(self) -> Path:  # the egress proxy's output (its decisions are in `egress_audit`)
        return self.path / "egress.log"

    @property
    def mcp_config(self) -> Path:
        return self.gateway / self.MCP_CONFIG

    @property
    def catalog(self) -> Path:
        return self.gateway / self.CATALOG

    @property
    def call_log(self) -> Path:
        return self.audit / self.CALL_LOG

    @property
    def egress_audit(self) -> Path:
        return self.audit / self.EGRESS_AUDIT

    @property
    def sockets(self) -> tuple[Path, ...]:
        """The egress proxy's sockets, which the sandbox's commands need."""
        return tuple(self.net / name for name in (self.PROXY_SOCKET, self.MODEL_SOCKET, self.GATEWAY_SOCKET))

    def identity_file(self, name: str) -> Path:
        """The sandbox's own /etc/`name`."""
        return self.etc / name

    def command_marker(self, pid: int) -> Path:
        """The file that says the command of pid `pid` runs in the sandbox (`kill_state` kills its group)."""
        return self.procs / str(pid)

    def command_pids(self) -> list[int]:
        """The pids of the sandbox's running commands (each its own process group)."""
        return [int(p.name) for p in self.procs.glob("*") if p.name.isdigit()]

    # -- reading it --------------------------------------------------------------------------------------------

    def read_info(self) -> dict | None:
        """The sandbox's info (`info_file`), or None when there is none (not written yet, or gone)."""
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None

    def ends_at(self, info: dict) -> datetime:
        """When the sandbox dies: at its lease's end (when it has one), never past its TTL."""
        ttl_end = datetime.fromisoformat(info["expires_at"])
        try:
            return min(ttl_end, datetime.fromisoformat(self.lease_file.read_text().strip()))
        except (OSError, ValueError):
            return ttl_end

    def write_lease(self, ends_at: datetime) -> None:
        """Move the lease's end (atomically: the supervisor may read it at any moment), and tell the supervisor, which
        otherwise reads it again only when the end it knew comes (a lease can be shortened too)."""
        draft = self.lease_file.with_name(f"{self.lease_file.name}.{secrets.token_hex(4)}")
        draft.write_text(ends_at.isoformat())
        draft.replace(self.lease_file)
        pid = read_pid(self.supervisor_pid_file)
        if process_alive(pid, self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, LEASE_MOVED)

    def supervisor_alive(self) -> bool:
        """Whether the sandbox's supervisor runs."""
        return process_alive(read_pid(self.supervisor_pid_file), self.marker)

    def is_starting(self, info: dict) -> bool:
        """Whether this is a sandbox whose supervisor has not written its pid yet, created moments ago: its creator
        may have died in between (a SIGKILLed flow), so janitors must see it; killing it removes the state and the
        supervisor gives up."""
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(info["created_at"])).total_seconds()
        return not self.supervisor_pid_file.exists() and age < STARTING_GRACE_SECONDS

    def abandoned(self) -> bool:
        """Whether this is what a creator killed mid-create (or a supervisor killed) left behind: no supervisor runs,
        it is no warm spare (those end by themselves), and nothing has changed in it for ABANDONED_AFTER_SECONDS."""
        if not self.id.startswith(ID_PREFIX) or self.supervisor_alive() or self.spare_order_file.exists():
            return False
        try:
            return time.time() - self.path.stat().st_mtime > ABANDONED_AFTER_SECONDS
        except OSError:
            return False

    def require_running(self) -> dict:
        """The sandbox's info; a SandboxError when it is not running (killed or past its TTL)."""
        info = self.read_info()
        if not info or not self.supervisor_alive():
            raise SandboxError(
                f"Sandbox {self.id} is not running (killed or past its TTL).",
                "Create a new sandbox.",
            )
        return info

    def read_audit(self, log: Path, what: str) -> list[dict]:
        """The records of the audit log `log` (one JSON object a line; none when it does not exist yet)."""
        with translated(f"read the {what} of {self.id}", state=self):
            lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        return [json.loads(line) for line in lines if line.strip()]


@contextlib.contextmanager
def translated(action: str, hint: str = "", state: SandboxState | None = None) -> Iterator[None]:
    """Raise the host's OS errors as the product's: what failed, and what to do. When the sandbox's `state` has
    vanished meanwhile, the cause is that the sandbox is gone, whatever the error."""
    try:
        yield
    except OSError as exc:
        if state is not None and not state.path.exists():
            raise SandboxError(
                f"Cannot {action}: the sandbox is gone (killed or past its TTL).", "Create a new sandbox."
            ) from None
        raise SandboxError(
            f"Cannot {action} ({exc.strerror or one_line(exc)}).",
            hint or "See the sandbox's logs.",
        ) from None
