"""The Sandbox port: what the pipeline needs from a sandbox, whatever runs it.

Tasks hand each other a `SandboxHandle`, a small serialisable model without any secret, and ask a backend to act on
it. So every task can be retried alone, and nothing secret reaches Prefect's database. Backends (local bubblewrap,
E2B cloud) implement `SandboxBackend`; none of them is a mock.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

OutputCallback = Callable[[str], None]

APP_LABEL_KEY = "app"
APP_LABEL = "agentbox"


class SandboxHandle(BaseModel):
    """Everything a task needs to find a sandbox again. Contains no secret by construction."""

    id: str
    backend: Literal["local", "e2b"]
    gateway_url: str = Field(description="The MCP gateway as this process reaches it.")
    internal_gateway_url: str = Field(description="The MCP gateway as processes inside the sandbox reach it.")
    metadata: dict[str, str] = {}
    created_at: datetime
    expires_at: datetime


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
    """A place to create, use and destroy sandboxes that serve an MCP gateway."""

    name: str

    @abc.abstractmethod
    async def create(
        self,
        mcp_config: dict,
        envs: dict[str, str],
        ttl_seconds: int,
        metadata: dict[str, str],
        idempotency_key: str | None = None,
    ) -> SandboxHandle:
        """Start a sandbox whose gateway serves `mcp_config`; it dies by itself after `ttl_seconds`. A retried call
        with the same `idempotency_key` must not start a second sandbox."""

    @abc.abstractmethod
    async def gateway_token(self, handle: SandboxHandle) -> str:
        """The gateway's bearer token (a secret: never log or return it)."""

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
    ) -> CommandResult:
        """Run a shell command inside the sandbox, streaming output; kill it and raise SandboxCommandTimeout
        past `timeout` seconds. A non-zero exit is returned, not raised."""

    @abc.abstractmethod
    async def write_file(self, handle: SandboxHandle, path: str, data: str | bytes) -> None:
        """Write a file inside the sandbox (readable by the sandbox's user)."""

    @abc.abstractmethod
    async def kill(self, sandbox_id: str) -> bool:
        """Destroy the sandbox; True if it was running, False if it was already gone. Never raises for 'gone'."""

    @abc.abstractmethod
    async def list(self, metadata: dict[str, str] | None = None) -> list[SandboxInfo]:
        """Running sandboxes whose metadata contains every given key/value."""

    async def kill_matching(self, metadata: dict[str, str]) -> list[str]:
        """Kill every running sandbox whose metadata contains `metadata`; the ids that were running."""
        return [info.id for info in await self.list(metadata) if await self.kill(info.id)]
