"""Sandbox backends behind one port (base.SandboxBackend), chosen by settings."""

from __future__ import annotations

from agentbox.errors import ConfigError
from agentbox.sandboxes.base import SandboxBackend, SandboxHandle
from agentbox.settings import Settings


def get_backend(settings: Settings, name: str | None = None, catalog_file: str | None = None) -> SandboxBackend:
    """The backend named `name`, else the one the settings choose. `catalog_file` overrides LOCAL_MCP_CATALOG."""
    name = name or settings.backend
    if name == "local":
        from agentbox.sandboxes.local import LocalSandboxes

        return LocalSandboxes(settings.local_sandbox_root, catalog_file or settings.local_mcp_catalog)
    if name == "e2b":
        from agentbox.sandboxes.e2b import E2BSandboxes

        settings.require("E2B_API_KEY")
        return E2BSandboxes(
            settings.e2b_api_key.get_secret_value(),
            settings.e2b_mcp_url,
            settings.e2b_mcp_internal_url,
            settings.e2b_template,
        )
    raise ConfigError(f"Unknown sandbox backend '{name}'.", "Use 'local' or 'e2b'.")


def reachable_backends(settings: Settings) -> list[str]:
    """Backends whose sandboxes this process can list and kill (janitors look in all of them)."""
    return ["local", "e2b"] if settings.e2b_api_key else ["local"]


__all__ = ["SandboxBackend", "SandboxHandle", "get_backend", "reachable_backends"]
