"""Sandbox backends behind one port (`base.SandboxBackend`), found by name in one registry (`registry`)."""

from agentbox.sandboxes.base import SandboxBackend, SandboxHandle
from agentbox.sandboxes.registry import (
    BACKENDS,
    backend_class,
    backend_names,
    get_backend,
    open_backend,
    reachable_backends,
    register_backend,
)

__all__ = ["BACKENDS", "SandboxBackend", "SandboxHandle", "backend_class", "backend_names", "get_backend",
           "open_backend", "reachable_backends", "register_backend"]
