"""The E2B backend: cloud sandboxes through the real `e2b` SDK (`AsyncSandbox`).

E2B runs the Docker MCP Gateway inside the sandbox (`create(mcp=...)`). The SDK's own MCP URL cannot be pointed
anywhere else, so the URL follows `E2B_MCP_URL`, a template with `{sandbox_id}`, `{domain}` and `{port}` whose
default is E2B's; that also serves self-hosted E2B-compatible deployments. The control plane and envd addresses
follow the SDK's settings (`E2B_DOMAIN`, `E2B_API_URL`, `E2B_SANDBOX_URL`). E2B's exceptions become the product's
errors, each saying what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from urllib.parse import urlsplit
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, get_type_hints

from e2b import (
    AsyncSandbox,
    AuthenticationException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
    ServiceBusyException,
    TimeoutException,
)

from e2b.sandbox.mcp import McpServer
from e2b.sandbox.network import ALL_TRAFFIC

from agentbox.errors import (
    ConfigError,
    GatewayError,
    SandboxCommandTimeout,
    SandboxError,
    SandboxUnavailable,
    one_line,
)
from agentbox.gateway.catalog import check_config_shape, expected_tools, field_problems, load_catalog
from agentbox.gateway.catalog import unknown_server
from agentbox.claude import MODEL_KEY_ENV
from agentbox.sandboxes.e2b_streams import FollowedCommand
from agentbox.sandboxes.base import (
    CommandResult,
    Network,
    OutputCallback,
    SandboxBackend,
    SandboxHandle,
    SandboxInfo,
)

if TYPE_CHECKING:
    from agentbox.telemetry import Telemetry
    from agentbox.settings import Settings

KEY_HINT = "Check E2B_API_KEY (https://e2b.dev/dashboard)."


_CUSTOM_SERVER = re.compile(r"^github/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_CUSTOM_FIELDS = frozenset({"run_cmd", "install_cmd", "envs"})
# The hosts each catalog server's gateway-side process must reach (E2B's egress policy covers the whole sandbox).
UPSTREAM_HOSTS = {"notion": ["api.notion.com"], "githubOfficial": ["api.github.com", "uploads.github.com"]}
PLACEHOLDER_KEY = "agentbox-placeholder-e2b-egress-rules-add-the-real-one"
INPUT_TRIES = 4  # sends of one line of a command's input, before its failure ends the command


def catalog_servers() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """E2B's MCP catalog as the SDK knows it: server key → (required, optional) config fields, from its TypedDicts."""
    return {
        key: (getattr(cls, "__required_keys__", frozenset()), getattr(cls, "__optional_keys__", frozenset()))
        for key, cls in get_type_hints(McpServer).items()
    }


def validate_config(config: Any) -> None:
    """Refuse, before any sandbox exists, keys E2B does not know (naming the nearest), missing and unknown fields."""
    check_config_shape(config)
    servers = catalog_servers()
    problems = []
    for key, values in config.items():
        if _CUSTOM_SERVER.match(key):
            required, known = frozenset({"run_cmd"}), _CUSTOM_FIELDS
        elif key in servers:
            required, optional = servers[key]
            known = required | optional
        else:
            problems.append(unknown_server(key, servers, "E2B MCP server"))
            continue
        problems += field_problems(key, values, required, known)
    if problems:
        raise ConfigError(
            f"Invalid MCP config: {'; '.join(problems)}.",
            "Keys come from E2B's MCP catalog (e2b.sandbox.mcp), or 'github/<owner>/<repo>' with a run_cmd.",
        )


class E2BSandboxes(SandboxBackend):
    """Sandboxes in E2B's cloud (or an E2B-compatible deployment)."""

    name = "e2b"
    required_settings = ("E2B_API_KEY",)

    def __init__(self, api_key: str, mcp_url: str, internal_mcp_url: str, template: str | None = None,
                 model_key_via_rules: bool = False) -> None:
        self._api_key = api_key
        self.mcp_url, self.internal_mcp_url = mcp_url, internal_mcp_url
        self.template = template
        self.model_key_via_rules = model_key_via_rules
        self._open: dict[str, AsyncSandbox] = {}

    @classmethod
    def options(cls, settings: Settings) -> dict[str, Any]:
        return {
            "mcp_url": settings.e2b_mcp_url,
            "internal_mcp_url": settings.e2b_mcp_internal_url,
            "template": settings.e2b_template,
            "model_key_via_rules": settings.e2b_model_key_via_rules,
        }

    @classmethod
    def open(cls, options: dict[str, Any], settings: Settings) -> E2BSandboxes:
        return cls(settings.e2b_api_key.get_secret_value(), **options)

    @classmethod
    def check_mcp_config(cls, options: dict[str, Any], mcp: dict[str, Any]) -> None:
        validate_config(mcp)

    @classmethod
    def expected_tools(cls, options: dict[str, Any], mcp: dict[str, Any]) -> dict[str, list[str]]:
        """E2B runs Docker's catalog servers, whose tools the built-in catalog names (others: any tool proves it)."""
        return expected_tools(list(mcp), load_catalog())

    def _urls(self, sandbox: AsyncSandbox) -> tuple[str, str]:
        values = {"sandbox_id": sandbox.sandbox_id, "domain": sandbox.sandbox_domain, "port": AsyncSandbox.mcp_port}
        try:
            return self.mcp_url.format(**values), self.internal_mcp_url.format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise SandboxError(
                f"E2B_MCP_URL or E2B_MCP_INTERNAL_URL is not a valid template ({exc}).",
                "Use the fields {sandbox_id}, {domain} and {port}.",
            ) from None

    async def create(
        self,
        mcp_config: dict,
        envs: dict[str, str],
        ttl_seconds: int,
        metadata: dict[str, str],
        idempotency_key: str | None = None,
        tools: list[str] | None = None,  # E2B starts its gateway itself, with every tool: Claude's allow-list rules
        network: Network | None = None,
        lease_seconds: int | None = None,
        writes: list[str] | None = None,
        secret_patterns: bool = True,  # Docker's gateway decides (--block-secrets, on): E2B passes no flag for it
        telemetry: Telemetry | None = None,  # Claude Code exports from inside; Docker's gateway exports nothing to it
    ) -> SandboxHandle:
        network = network or Network()
        if telemetry:  # Claude Code's telemetry goes straight to the endpoint: the only host tracing adds
            endpoint_host = urlsplit(telemetry.endpoint).hostname or ""
            network = network.model_copy(update={"allow": [*network.allow, endpoint_host]})
        envs, policy = self._network(network, mcp_config, envs)
        async with _translated("create a sandbox"):
            sandbox = await AsyncSandbox.create(
                template=self.template,
                timeout=min(lease_seconds or ttl_seconds, ttl_seconds),  # E2B's timeout is the lease: renewed
                metadata=metadata,
                envs=envs,
                mcp=mcp_config,
                network=policy,
                lifecycle={"on_timeout": "kill"},  # an expired sandbox must not linger paused
                idempotency_key=idempotency_key,
                api_key=self._api_key,
            )
        self._open[sandbox.sandbox_id] = sandbox
        url, internal = self._urls(sandbox)
        try:
            async with _translated("read the sandbox's details", sandbox.sandbox_id):
                info = await sandbox.get_info()
        except BaseException:  # nobody holds a handle to it yet: killed here, or it would live out its lease
            with contextlib.suppress(SandboxError):
                await self.kill(sandbox.sandbox_id)
            raise
        created = info.started_at.astimezone(timezone.utc)
        return SandboxHandle(
            id=sandbox.sandbox_id,
            backend="e2b",
            gateway_url=url,
            internal_gateway_url=internal,
            metadata=dict(info.metadata),
            created_at=created,
            expires_at=created + timedelta(seconds=ttl_seconds),  # the TTL: `renew` never goes past it
        )

    async def renew(self, handle: SandboxHandle, seconds: float) -> datetime:
        now = datetime.now(timezone.utc)
        ends = min(now + timedelta(seconds=seconds), handle.expires_at)
        async with _translated("renew the sandbox's lease", handle.id):
            # E2B's timeout counts from now, and set_timeout can shorten it as well as extend it
            await AsyncSandbox.set_timeout(handle.id, max(1, math.ceil((ends - now).total_seconds())),
                                           api_key=self._api_key)
        return ends

    @classmethod
    def check_network(cls, options: dict[str, Any], network: Network) -> None:
        with_ports = [h for h in network.allow if ":" in h]
        if with_ports:
            raise ConfigError(
                f"E2B's network policy allows hosts, not ports: {', '.join(with_ports)}.",
                "Name the hosts without a port on the e2b backend.",
            )

    def _network(self, network: Network, mcp: dict, envs: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
        """E2B's egress policy for `network`: everything denied but the model API, the MCP servers' APIs and the
        policy's hosts. With `model_key_via_rules`, E2B's egress proxy adds the model key and the sandbox holds a
        placeholder."""
        model_host = urlsplit(network.model_url).hostname or ""
        upstreams = [h for key in mcp for h in UPSTREAM_HOSTS.get(key, [])]
        policy: dict[str, Any] = {
            "deny_out": [ALL_TRAFFIC],
            "allow_out": list(dict.fromkeys([model_host, *upstreams, *network.allow])),
        }
        if self.model_key_via_rules and MODEL_KEY_ENV in envs:
            policy["rules"] = {model_host: [{"transform": {"headers": {"x-api-key": envs[MODEL_KEY_ENV]}}}]}
            envs = {**envs, MODEL_KEY_ENV: PLACEHOLDER_KEY}
        return envs, policy

    async def _sandbox(self, sandbox_id: str) -> AsyncSandbox:
        """The SDK object for a sandbox another task created (tasks share handles, never SDK objects)."""
        if sandbox_id not in self._open:
            async with _translated("reach the sandbox", sandbox_id):
                self._open[sandbox_id] = await AsyncSandbox.connect(sandbox_id, api_key=self._api_key)
        return self._open[sandbox_id]

    async def gateway_token(self, handle: SandboxHandle) -> str:
        sandbox = await self._sandbox(handle.id)
        async with _translated("read the gateway token", handle.id):
            return await sandbox.get_mcp_token()

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
        sandbox = await self._sandbox(handle.id)
        feeding: asyncio.Future | None = None
        command_run = FollowedCommand(sandbox, timeout, on_stdout, on_stderr)  # reconnects when its stream breaks
        try:
            async with _translated("run a command", handle.id):
                process = await command_run.start(command, envs, stdin is not None)
                if stdin is not None:
                    feeding = asyncio.ensure_future(_feed(process, stdin))
                try:
                    exit_code = await _unless_input_fails(command_run, feeding)
                except TimeoutError:
                    with contextlib.suppress(Exception):
                        await command_run.process.kill()
                    raise SandboxCommandTimeout(
                        f"Command in sandbox {handle.id} ran past its {timeout:g} s timeout and was killed."
                    ) from None
        except SandboxCommandTimeout:
            raise
        except SandboxError:
            if handle.expired():
                raise handle.expired_error() from None
            raise
        finally:
            if feeding:
                feeding.cancel()
                await asyncio.gather(feeding, return_exceptions=True)
        if exit_code != 0 and handle.expired():  # killed with its sandbox, not failed by itself
            raise handle.expired_error()
        return CommandResult(exit_code, "".join(command_run.stdout), "".join(command_run.stderr))

    async def write_file(self, handle: SandboxHandle, path: str, data: str | bytes) -> None:
        sandbox = await self._sandbox(handle.id)
        async with _translated(f"write {path}", handle.id):
            await sandbox.files.write(path, data)

    async def kill(self, sandbox_id: str) -> bool:
        self._open.pop(sandbox_id, None)
        async with _translated("kill the sandbox", sandbox_id):
            try:
                return await AsyncSandbox.kill(sandbox_id, api_key=self._api_key)
            except (SandboxNotFoundException, NotFoundException):
                return False  # already gone: the goal is reached

    async def list(self, metadata: dict[str, str] | None = None) -> list[SandboxInfo]:
        query = SandboxQuery(metadata=metadata or None, state=[SandboxState.RUNNING, SandboxState.PAUSED])
        found = []
        async with _translated("list sandboxes"):
            pages = AsyncSandbox.list(query=query, api_key=self._api_key)
            while pages.has_next:
                for item in await pages.next_items():
                    found.append(
                        SandboxInfo(
                            id=item.sandbox_id,
                            metadata=dict(item.metadata or {}),
                            created_at=item.started_at.astimezone(timezone.utc),
                            expires_at=item.end_at.astimezone(timezone.utc),
                        )
                    )
        return found


async def _feed(process: Any, chunks: AsyncIterator[str]) -> None:
    """Send `chunks` to a command's input (envd's SendInput) in order as they come, then close it. A command that
    already ended takes no more and ends the feeding quietly; a send that fails for another reason is tried again
    (a busy or briefly unreachable envd), then raised: a line lost would leave Claude waiting for it."""
    try:
        async for chunk in chunks:
            await _sent(process.send_stdin, chunk)
        await _sent(process.close_stdin)
    except NotFoundException:
        pass


async def _sent(call: Any, *args: Any) -> None:
    for attempt in range(INPUT_TRIES):
        try:
            await call(*args)
            return
        except (NotFoundException, SandboxNotRunningException):
            raise
        except SandboxException:
            if attempt == INPUT_TRIES - 1:
                raise
            await asyncio.sleep(0.2 * 2**attempt)


async def _unless_input_fails(command_run: FollowedCommand, feeding: asyncio.Future | None) -> int:
    """The command's exit code; when its input could not be sent, the command is killed and the failure raised."""
    waiting = asyncio.ensure_future(command_run.wait())
    try:
        if feeding is not None:
            await asyncio.wait({waiting, feeding}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done() and feeding.done() and feeding.exception() is not None:
                with contextlib.suppress(Exception):
                    await command_run.process.kill()
                raise feeding.exception()
        return await waiting
    finally:
        if not waiting.done():
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)


@contextlib.asynccontextmanager
async def _translated(action: str, sandbox_id: str = "") -> AsyncIterator[None]:
    """E2B's exceptions as the product's errors: what failed, and what to do."""
    where = f" {sandbox_id}" if sandbox_id else ""
    try:
        yield
    except (SandboxCommandTimeout, SandboxError):
        raise
    except AuthenticationException:
        raise SandboxError(f"E2B refused the API key while trying to {action}.", KEY_HINT) from None
    except RateLimitException:
        raise SandboxUnavailable(
            f"E2B's rate limit was hit while trying to {action}.",
            "Retry later or lower concurrency.",
        ) from None
    except ServiceBusyException:
        raise SandboxUnavailable(f"E2B is busy (503) while trying to {action}.", "Retry later.") from None
    except (SandboxNotFoundException, SandboxNotRunningException, NotFoundException):
        raise SandboxError(
            f"Sandbox{where} is gone (killed or past its timeout) while trying to {action}.",
            "Create a new sandbox.",
        ) from None
    except TimeoutException as exc:
        raise SandboxUnavailable(
            f"E2B timed out while trying to {action}{where}: {one_line(exc)}.", "Retry; check E2B's status."
        ) from None
    except SandboxException as exc:
        message = one_line(exc)
        if "Failed to start MCP gateway" in message:
            raise GatewayError(
                f"The MCP gateway failed to start in the E2B sandbox: {message}.",
                "Check the MCP config's values (tokens) and server keys.",
            ) from None
        status = getattr(exc, "status_code", None)
        error = SandboxUnavailable if status and status >= 500 else SandboxError
        raise error(f"E2B failed to {action}{where}: {message}.", "See E2B's status page if it persists.") from None
