"""Sandbox backends behind one port (`base.SandboxBackend`), found by name in one registry.

The registry maps a backend's name to where its adapter lives, so choosing one never imports the others (the E2B
SDK alone takes a while to import). Nothing outside an adapter knows what a backend needs: its options, its secrets
and the MCP configs it accepts are the adapter's to say.
"""

from __future__ import annotations

import importlib
from typing import Any

from agentbox.errors import ConfigError
from agentbox.sandboxes.base import SandboxBackend, SandboxHandle
from agentbox.settings import Settings

BACKENDS: dict[str, str] = {
    "local": "agentbox.sandboxes.local:LocalSandboxes",
    "e2b": "agentbox.sandboxes.e2b:E2BSandboxes",
}


def register_backend(name: str, adapter: str) -> None:
    """Add a backend: `adapter` is "package.module:Class", a SandboxBackend subclass."""
    BACKENDS[name] = adapter


def backend_class(name: str) -> type[SandboxBackend]:
    if name not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"Unknown sandbox backend '{name}'.", f"Use one of: {known}.")
    module, _, attribute = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def open_backend(name: str, options: dict[str, Any], settings: Settings) -> SandboxBackend:
    """The adapter `name` for these options, its secrets looked up in `settings` (a ConfigError names any missing)."""
    adapter = backend_class(name)
    settings.require(*adapter.required_settings)
    return adapter.open(options, settings)


def get_backend(settings: Settings, name: str | None = None) -> SandboxBackend:
    """The backend `name` (default: the settings' choice) with the options the settings give it."""
    name = name or settings.backend
    return open_backend(name, backend_class(name).options(settings), settings)


def reachable_backends(settings: Settings) -> list[SandboxBackend]:
    """Every backend whose sandboxes this process can list and kill (its required settings are all set): where
    janitors look."""
    reachable = []
    for name in BACKENDS:
        try:
            reachable.append(get_backend(settings, name))
        except ConfigError:
            continue
    return reachable


__all__ = ["BACKENDS", "SandboxBackend", "SandboxHandle", "backend_class", "get_backend", "open_backend",
           "reachable_backends", "register_backend"]
