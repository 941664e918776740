"""The registry of sandbox backends: a backend's name to where its adapter lives, so choosing one never imports the
others (the E2B SDK alone takes a while to import). Nothing outside an adapter knows what a backend needs: its
options, its secrets and the MCP configs it accepts are the adapter's to say. Everyone who offers a choice of backend
(the settings, the run form, the command lines) asks `backend_names()` when it needs the choices, so a backend
registered before then is offered."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agentbox.errors import ConfigError

if TYPE_CHECKING:
    from agentbox.sandboxes.base import SandboxBackend
    from agentbox.settings import Settings

AUTO_BACKEND = "auto"  # a run's choice that follows the settings (SANDBOX_BACKEND, else by the credentials present)
BACKENDS: dict[str, str] = {
    "local": "agentbox.sandboxes.local:LocalSandboxes",
    "e2b": "agentbox.sandboxes.e2b:E2BSandboxes",
}


def register_backend(name: str, adapter: str) -> None:
    """Add a backend: `adapter` is "package.module:Class", a SandboxBackend subclass."""
    BACKENDS[name] = adapter


def backend_names() -> list[str]:
    """The registered backends' names, in registration order."""
    return list(BACKENDS)


def backend_choices() -> list[str]:
    """What a run may choose: "auto" and every registered backend, as they are now."""
    return [AUTO_BACKEND, *BACKENDS]


def backend_named(choice: str | None) -> str | None:
    """The backend a run's choice names; None for auto, where the settings decide."""
    return None if choice in (None, AUTO_BACKEND) else choice


def backend_class(name: str) -> type[SandboxBackend]:
    """The adapter class of a registered backend (imported now); a ConfigError naming the known ones otherwise."""
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
