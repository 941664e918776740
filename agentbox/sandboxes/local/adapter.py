"""The local backend's adapter: the Sandbox port (`base.SandboxBackend`) over sandboxes on this host."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentbox.errors import SandboxCommandTimeout, SandboxError
from agentbox.gateway.catalog import expected_tools, load_catalog, validate_config
from agentbox.host import kill_group
from agentbox.sandboxes.base import (
    CommandResult,
    Network,
    OutputCallback,
    SandboxBackend,
    SandboxHandle,
    SandboxInfo,
)
from agentbox.sandboxes.local import spare as spares
from agentbox.sandboxes.local.bwrap import (
    DEFAULT_MAX_MEMORY_MIB,
    DEFAULT_MAX_PROCESSES,
    base_env,
    check_bubblewrap,
    host_path,
)
from agentbox.sandboxes.local.network import PLACEHOLDER, TELEMETRY_INSIDE
from agentbox.sandboxes.local.owners import sandbox_uid, write_owned
from agentbox.sandboxes.local.prepare import make_state, prepare_sandbox
from agentbox.sandboxes.local.processes import abandon, command_argv, feed, kill_state, pump, start_supervisor
from agentbox.sandboxes.local.state import ID_PREFIX, SandboxState, translated
from agentbox.telemetry.config import Telemetry, claude_code_env

if TYPE_CHECKING:
    from agentbox.settings import Settings


class LocalSandboxes(SandboxBackend):
    """Sandboxes as bubblewrap processes on this host; state lives under `root`."""

    name = "local"
    gateway_filters_tools = True
    gateway_refuses_repeats = True
    gateway_scans_by_policy = True

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
        lease_seconds: int | None = None,
        writes: list[str] | None = None,
        secret_patterns: bool = True,
        telemetry: Telemetry | None = None,
    ) -> SandboxHandle:
        await check_bubblewrap()
        if self.root.is_dir():
            await asyncio.to_thread(self.sweep)
        spare = spares.claim_spare(self.root) if self.warm_spare else None
        while True:
            state = spare or SandboxState.new(self.root)
            try:
                with translated(f"create a local sandbox under {self.root}",
                                "Check LOCAL_SANDBOX_ROOT and disk space."):
                    if not spare:
                        make_state(state)
                    info = prepare_sandbox(state, mcp_config, envs, ttl_seconds, metadata, tools,
                                           network or Network(), self.catalog_file, lease_seconds, writes,
                                           secret_patterns, telemetry)
                    if spare:
                        await spares.Spare(state).wake()
                    else:
                        await start_supervisor(state)
                break
            except SandboxError:
                await asyncio.shield(asyncio.to_thread(abandon, state, spare is not None))
                if not spare:
                    raise
                spare = None  # a spare that failed to wake: start a sandbox of its own instead
            except BaseException:
                await asyncio.shield(asyncio.to_thread(abandon, state, spare is not None))
                raise
        url = f"http://127.0.0.1:{info['gateway_port']}/mcp"
        return SandboxHandle(
            id=state.id,
            backend="local",
            gateway_url=url,
            internal_gateway_url=url,
            metadata=info["metadata"],
            created_at=datetime.fromisoformat(info["created_at"]),
            expires_at=datetime.fromisoformat(info["expires_at"]),
        )

    async def renew(self, handle: SandboxHandle, seconds: float) -> datetime:
        state = SandboxState.of(self.root, handle.id)
        state.require_running()
        ends = min(datetime.now(timezone.utc) + timedelta(seconds=seconds), handle.expires_at)
        with translated(f"renew the lease of {handle.id}", state=state):
            state.write_lease(ends)  # the supervisor reads it when the end it knew comes
        return ends

    def sweep(self) -> list[str]:
        """Remove what creators killed mid-create left under the root (a state without a supervisor, with the
        servers' credentials in its files); the ids removed. Every create and list sweeps, as does the reaper."""
        swept = []
        for state in map(SandboxState, sorted(self.root.glob(f"{ID_PREFIX}*"))):
            if state.abandoned():
                kill_state(state)
                swept.append(state.id)
        return swept

    async def gateway_token(self, handle: SandboxHandle) -> str:
        state = SandboxState.of(self.root, handle.id)
        with translated(f"read the gateway token of {handle.id}", state=state):
            return state.token_file.read_text()

    async def claude_gateway_token(self, handle: SandboxHandle) -> str:
        return PLACEHOLDER  # the egress proxy puts the real one on every request to the gateway

    def claude_telemetry_env(self, telemetry: Telemetry) -> dict[str, str]:
        """Through the egress proxy's telemetry service, which adds the endpoint's headers: none in the sandbox."""
        return claude_code_env(telemetry, f"http://{TELEMETRY_INSIDE}", with_headers=False)

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
        state = SandboxState.of(self.root, handle.id)
        info = state.require_running()
        with translated(f"run a command in {handle.id}", state=state):
            env = {**base_env(), **json.loads(state.env_file.read_text()), **(envs or {})}
            proc = await asyncio.create_subprocess_exec(
                *command_argv(state, info.get("routes", []), command, self.max_processes, self.max_memory_mib),
                env=env, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
            )
            marker = state.command_marker(proc.pid)
            marker.touch()
        out: list[str] = []
        err: list[str] = []
        parts = [
            asyncio.ensure_future(pump(proc.stdout, out, on_stdout)),
            asyncio.ensure_future(pump(proc.stderr, err, on_stderr)),
            asyncio.ensure_future(proc.wait()),
        ]
        feeding = asyncio.ensure_future(feed(proc.stdin, stdin)) if stdin is not None else None
        try:
            _, pending = await asyncio.wait(parts, timeout=timeout)
            if pending:
                raise SandboxCommandTimeout(
                    f"Command in sandbox {handle.id} ran past its {timeout:g} s timeout and was killed."
                )
        finally:
            if proc.returncode is None:  # timed out, or this task was cancelled: the process goes too
                kill_group(proc.pid)
            for part in [*parts, *([feeding] if feeding else [])]:
                part.cancel()
            await asyncio.shield(asyncio.gather(*parts, *([feeding] if feeding else []), return_exceptions=True))
            await asyncio.shield(proc.wait())
            marker.unlink(missing_ok=True)
        if proc.returncode != 0 and handle.expired():  # the supervisor killed it with the sandbox
            raise handle.expired_error()
        return CommandResult(proc.returncode, "".join(out), "".join(err))

    async def write_file(self, handle: SandboxHandle, path: str, data: str | bytes) -> None:
        state = SandboxState.of(self.root, handle.id)
        state.require_running()
        target = host_path(state, path)
        with translated(f"write {path} in {handle.id}", state=state):
            write_owned(target, data.encode() if isinstance(data, str) else data, sandbox_uid(handle.id))

    async def gateway_calls(self, handle: SandboxHandle) -> list[dict[str, Any]] | None:
        state = SandboxState.of(self.root, handle.id)
        return state.read_audit(state.call_log, "gateway's call log")

    async def egress_log(self, handle: SandboxHandle) -> list[dict[str, Any]] | None:
        state = SandboxState.of(self.root, handle.id)
        return state.read_audit(state.egress_audit, "egress log")

    async def kill(self, sandbox_id: str) -> bool:
        state = SandboxState.of(self.root, sandbox_id)
        killed = await asyncio.to_thread(kill_state, state)
        if self.warm_spare:  # now, when the session no longer needs the CPU, for the next create to claim
            with contextlib.suppress(SandboxError, OSError):
                self.make_spare()
        return killed

    async def list(self, metadata: dict[str, str] | None = None) -> list[SandboxInfo]:
        found: list[SandboxInfo] = []
        if not self.root.is_dir():
            return found
        await asyncio.to_thread(self.sweep)
        for state in map(SandboxState, sorted(self.root.iterdir())):
            info = state.read_info()
            alive = info and state.supervisor_alive()
            if not (alive or (info and state.is_starting(info))):
                continue
            if all(info["metadata"].get(k) == v for k, v in (metadata or {}).items()):
                found.append(
                    SandboxInfo(
                        id=info["id"],
                        metadata=info["metadata"],
                        created_at=datetime.fromisoformat(info["created_at"]),
                        expires_at=state.ends_at(info),
                    )
                )
        return found

    # -- warm spares (LOCAL_WARM_GATEWAY, see `spare`) ---------------------------------------------------------

    def make_spare(self) -> None:
        """Start a warm spare under the root unless one waits already: the next create claims it and skips the
        gateway's imports."""
        spares.make_spare(self.root)

    def discard_spares(self) -> int:
        """Stop every warm spare under the root; how many there were."""
        return spares.discard_spares(self.root)
