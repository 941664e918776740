"""The Sandbox port: what the pipeline needs from a sandbox, whatever runs it.

Tasks hand each other a `SandboxHandle`, a small serialisable model without any secret, and ask a backend to act on
it. So every task can be retried alone, and nothing secret reaches Prefect's database. Backends (local bubblewrap,
E2B cloud) implement `SandboxBackend`; none of them is a mock.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from agentbox.errors import SandboxExpired
from agentbox.sandboxes.registry import backend_class
from agentbox.telemetry.config import Telemetry, claude_code_env

if TYPE_CHECKING:
    from agentbox.settings import Settings

OutputCallback = Callable[[str], None]

APP_LABEL_KEY = "app"
APP_LABEL = "agentbox"
SESSION_LABEL_KEY = "agentbox_session"  # one session of a batch run (a run's sessions share its flow run id)
SLOT_LEASE_LABEL_KEY = "agentbox_slot_lease"  # the sandbox limit's lease the session holds, freed by hooks and reaper
DEFAULT_MODEL_URL = "https://api.anthropic.com"


class Network(BaseModel, frozen=True):
    """Where a sandbox's programs may connect: always its gateway and the model API, and the hosts in `allow`
    (host, host:port, *.domain). Names in `resolve` are pinned to an address (like curl's --resolve)."""

    model_url: str = DEFAULT_MODEL_URL
    allow: list[str] = []
    resolve: dict[str, str] = {}


class SandboxHandle(BaseModel):
    """Everything a task needs to find a sandbox again. Contains no secret by construction."""

    id: str
    backend: str = Field(description="The registered name of the backend that runs it.")
    gateway_url: str = Field(description="The MCP gateway as this process reaches it.")
    internal_gateway_url: str = Field(description="The MCP gateway as processes inside the sandbox reach it.")
    metadata: dict[str, str] = {}
    created_at: datetime
    expires_at: datetime

    @field_validator("backend")
    @classmethod
    def _registered(cls, name: str) -> str:
        backend_class(name)  # a ConfigError naming the known backends
        return name

    def expired(self) -> bool:
        return datetime.now(timezone.utc) >= self.expires_at

    def expired_error(self) -> SandboxExpired:
        """What to say when a command dies because the sandbox reached its TTL (not a crash of the command)."""
        ttl = (self.expires_at - self.created_at).total_seconds()
        return SandboxExpired(
            f"Sandbox {self.id} reached its TTL ({ttl:.0f} s, at {self.expires_at:%H:%M:%S} UTC) and was destroyed "
            "while a command ran in it.",
            "Raise SANDBOX_TTL_SECONDS (it must outlive the flow's timeout) or shorten the run.",
        )


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    metadata: dict[str, str]
    created_at: datetime
    expires_at: datetime


class SandboxBackend(abc.ABC):
    """A place to create, use and destroy sandboxes that serve an MCP gateway.

    An adapter also says, before any sandbox exists, what it needs: its non-secret options (resolved from settings
    once, carried by the session plan), the secret settings it requires, and whether an MCP config suits it."""

    name: ClassVar[str]
    required_settings: ClassVar[tuple[str, ...]] = ()  # secrets it cannot work without, e.g. ("E2B_API_KEY",)
    gateway_filters_tools: ClassVar[bool] = False  # whether its gateway serves only the `tools` given to create
    gateway_refuses_repeats: ClassVar[bool] = False  # whether its gateway refuses a write made twice (`writes`)
    gateway_scans_by_policy: ClassVar[bool] = False  # whether `secret_patterns` turns its gateway's scanning off

    @classmethod
    @abc.abstractmethod
    def options(cls, settings: Settings) -> dict[str, Any]:
        """The adapter's non-secret configuration, as plain JSON (it travels in the plan through Prefect)."""

    @classmethod
    @abc.abstractmethod
    def open(cls, options: dict[str, Any], settings: Settings) -> SandboxBackend:
        """An adapter for `options`, with the secrets it requires looked up in `settings`."""

    @classmethod
    @abc.abstractmethod
    def check_mcp_config(cls, options: dict[str, Any], mcp: dict[str, Any]) -> None:
        """Raise a ConfigError naming every server key or field this backend cannot serve."""

    @classmethod
    @abc.abstractmethod
    def expected_tools(cls, options: dict[str, Any], mcp: dict[str, Any]) -> dict[str, list[str]]:
        """Per server key, the tool names whose presence proves the gateway serves it."""

    @classmethod
    def check_network(cls, options: dict[str, Any], network: Network) -> None:
        """Raise a ConfigError if this backend cannot enforce `network` as it is (never weaken it in silence)."""

    @abc.abstractmethod
    async def create(
        self,
        mcp_config: dict,
        envs: dict[str, str],
        ttl_seconds: int,
        metadata: dict[str, str],
        idempotency_key: str | None = None,
        tools: list[str] | None = None,
        network: Network | None = None,
        lease_seconds: int | None = None,
        writes: list[str] | None = None,
        secret_patterns: bool = True,
        telemetry: Telemetry | None = None,
    ) -> SandboxHandle:
        """Start a sandbox whose gateway serves `mcp_config` (only `tools` of it, where `gateway_filters_tools`); it
        dies by itself after `ttl_seconds` (the handle's `expires_at`), and with a `lease_seconds`, already that long
        after its creation unless `renew` keeps it alive. Its programs reach only what `network` allows (None:
        `Network()`, the gateway and the model API), and find the model where `envs` says (ANTHROPIC_BASE_URL,
        ANTHROPIC_API_KEY; a backend may swap those for a proxy's address and a placeholder). A retried call with
        the same `idempotency_key` must not start a second sandbox. A gateway that can (`gateway_refuses_repeats`)
        refuses a second call, with the same arguments, of a tool that `writes` (the run policy's: None, by verb). Its
        gateway scans tool calls for credentials of known formats unless `secret_patterns` is False (where it can).
        With `telemetry` (tracing on), its network lets Claude Code's telemetry out to the endpoint, and its gateway
        and egress proxy, where it runs its own, export their spans there under `telemetry.traceparent`."""

    def claude_telemetry_env(self, telemetry: Telemetry) -> dict[str, str]:
        """Claude Code's variables for exporting its telemetry from inside this backend's sandboxes (`create` was
        given `telemetry`): straight to the endpoint, its headers in the sandbox's environment."""
        return claude_code_env(telemetry, telemetry.endpoint, with_headers=True)

    @abc.abstractmethod
    async def renew(self, handle: SandboxHandle, seconds: float) -> datetime:
        """Keep the sandbox alive `seconds` from now, never past its TTL (`handle.expires_at`); when it will die now.
        SandboxError when it is gone. A run renews its sandbox's lease while it lives: however it dies, the sandbox
        follows within the lease."""

    @abc.abstractmethod
    async def gateway_token(self, handle: SandboxHandle) -> str:
        """The gateway's bearer token (a secret: never log or return it)."""

    async def claude_gateway_token(self, handle: SandboxHandle) -> str:
        """The token Claude Code inside is registered with: the gateway's own, or a placeholder where the backend
        adds the real one on the way out (then no copy of it exists in the sandbox)."""
        return await self.gateway_token(handle)

    @abc.abstractmethod
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
        """Run a shell command inside the sandbox, streaming output; kill it and raise SandboxCommandTimeout
        past `timeout` seconds, and SandboxExpired when the sandbox reached its TTL under it. A non-zero exit is
        returned, not raised. `stdin`, when given, is written to the command's input as it comes (a conversation:
        Claude Code's control protocol), and the input is closed when it ends; without it the command reads none."""

    @abc.abstractmethod
    async def write_file(self, handle: SandboxHandle, path: str, data: str | bytes) -> None:
        """Write a file inside the sandbox (readable by the sandbox's user)."""

    @abc.abstractmethod
    async def kill(self, sandbox_id: str) -> bool:
        """Destroy the sandbox; True if it was running, False if it was already gone. Never raises for 'gone'."""

    @abc.abstractmethod
    async def list(self, metadata: dict[str, str] | None = None) -> list[SandboxInfo]:
        """Running sandboxes whose metadata contains every given key/value."""

    async def gateway_calls(self, handle: SandboxHandle) -> list[dict[str, Any]] | None:
        """The gateway's call log (one dict per tools/call), or None where this backend's gateway keeps none that
        can be read."""
        return None

    async def egress_log(self, handle: SandboxHandle) -> list[dict[str, Any]] | None:
        """The egress proxy's decisions (one dict per connection it allowed or blocked), or None where this backend
        keeps none that can be read."""
        return None

    async def kill_matching(self, metadata: dict[str, str]) -> list[str]:
        """Kill every running sandbox whose metadata contains `metadata`; the ids that were running."""
        return [info.id for info in await self.list(metadata) if await self.kill(info.id)]
