"""The product's own errors: one line that says what failed and what to do.

Every error carries `hint` (the next step for the user) and never a secret value, so the CLIs can print
`str(error)` as-is and Prefect can store it.
"""

from __future__ import annotations


class AgentboxError(Exception):
    """Base class: `message` says what failed, `hint` what to do about it."""

    retryable = False

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}".strip() if hint else message)


class ConfigError(AgentboxError):
    """Settings, parameters or the MCP config are wrong; nothing was started."""


class SandboxError(AgentboxError):
    """The sandbox could not be created, reached or used."""


class SandboxUnavailable(SandboxError):
    """The sandbox service is busy, rate-limited or erring (429/5xx/timeouts): worth retrying."""

    retryable = True


class SandboxCommandTimeout(SandboxError):
    """A command inside the sandbox ran past its own timeout and was killed."""


class GatewayAuthError(AgentboxError):
    """The gateway refused our token (401/403): retrying cannot help."""


class GatewayNotReady(AgentboxError):
    """The gateway did not answer yet, or not with every expected tool: worth retrying until a deadline."""

    retryable = True


class GatewayUpstreamError(AgentboxError):
    """The gateway says one of its MCP servers failed to start: retrying cannot help."""


class ClaudeError(AgentboxError):
    """Claude Code could not be registered or its run failed."""
