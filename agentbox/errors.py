"""The product's own errors: one line that says what failed and what to do.

Every error carries `hint` (the next step for the user) and never a secret value, so the CLIs can print
`str(error)` as-is and Prefect can store it. Each class says whether a retry can help and which exit code a command
line ends with.
"""

from __future__ import annotations

from typing import Literal, get_args

# Why a session failed, from a fixed set a user can count: whose side the failure was on.
FailureReason = Literal["sandbox provider", "model API", "MCP upstream", "gateway", "agent", "policy", "timeout",
                        "cancelled", "orchestrator"]
FAILURE_REASONS: tuple[str, ...] = get_args(FailureReason)

MAX_DETAIL = 300  # characters of a foreign error's text quoted in ours


def one_line(text: object, *, last: bool = False, limit: int = MAX_DETAIL, empty: str = "no detail") -> str:
    """The first (or `last`) non-blank line of `text` (an exception's message, a log), cut to `limit` characters.

    An exception without a message gives its type name: "TimeoutError" says more than nothing."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return type(text).__name__ if isinstance(text, BaseException) else empty
    line = lines[-1] if last else lines[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


class AgentboxError(Exception):
    """Base class: `message` says what failed, `hint` what to do about it."""

    retryable = False
    exit_code = 1
    reason: FailureReason = "agent"

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}".strip() if hint else message)


class ConfigError(AgentboxError):
    """Settings, parameters or the MCP config are wrong; nothing was started."""

    exit_code = 2
    reason = "policy"  # what the run was told to do was refused before it began


class InvalidValue(ConfigError, ValueError):
    """A value a model's validator refuses: pydantic reports it like any ValueError (a run form, a deployment's
    parameters), and a command line can say it in its own words."""


class RunTimedOut(AgentboxError):
    """The flow run passed its timeout and was stopped (its sandbox is torn down as on any failure)."""

    reason = "timeout"

    @classmethod
    def after(cls, seconds: float) -> RunTimedOut:
        return cls(
            f"The run took longer than its flow timeout ({seconds:g} s) and was stopped; its sandbox was torn down.",
            "Raise FLOW_TIMEOUT_SECONDS if it needs more time (and SANDBOX_TTL_SECONDS above it).",
        )


class LeaseLost(AgentboxError):
    """The run could not keep its leases (its slot of the sandbox limit, lapsed while the Prefect API was
    unreachable): its sandbox was stopped rather than run outside the limit."""

    retryable = True
    reason = "orchestrator"


class SandboxError(AgentboxError):
    """The sandbox could not be created, reached or used."""

    reason = "sandbox provider"


class SandboxUnavailable(SandboxError):
    """The sandbox service is busy, rate-limited or erring (429/5xx/timeouts): worth retrying."""

    retryable = True


class SandboxCommandTimeout(SandboxError):
    """A command inside the sandbox ran past its own timeout and was killed."""

    reason = "timeout"


class SandboxExpired(SandboxError):
    """The sandbox reached its TTL and was destroyed, taking a running command with it."""


class GatewayError(AgentboxError):
    """The sandbox's MCP gateway does not serve what the session needs."""

    reason = "gateway"


class GatewayAuthError(GatewayError):
    """The gateway refused our token (401/403): retrying cannot help."""


class GatewayNotReady(GatewayError):
    """The gateway did not answer yet, or not with every expected tool: worth retrying until a deadline."""

    retryable = True


class GatewayUpstreamError(GatewayError):
    """The gateway says one of its MCP servers failed to start: retrying cannot help."""

    reason = "MCP upstream"


class PolicyViolation(AgentboxError):
    """The agent tried what the run policy forbids (every layer blocked it; the run still fails, so people look)."""

    reason = "policy"


class ClaudeError(AgentboxError):
    """Claude Code could not be registered or its run failed."""


class ModelApiError(ClaudeError):
    """The model API failed Claude Code (5xx, overloaded or rate-limited past Claude Code's own retries)."""

    reason = "model API"


class UpstreamToolError(ClaudeError):
    """The agent could not finish because an MCP server's tool calls failed (its service erred, or it died)."""

    reason = "MCP upstream"


class ApprovalDenied(AgentboxError):
    """A person (or nobody, where silence denies) refused a tool call the run needed approval for."""

    reason = "policy"


class WritesAlreadyMade(AgentboxError):
    """An earlier attempt of this run made writes (or may have) before it stopped: the agent is not run again, so
    nothing is done twice; a person decides what comes next."""

    reason = "policy"

    @classmethod
    def of(cls, summaries: list[str]) -> WritesAlreadyMade:
        return cls(
            f"An earlier attempt of this run stopped after the agent's writes: {'; '.join(summaries)}. The agent is "
            "not run again, so nothing is done twice.",
            "A person must decide: check what was written, then start a new run if more is needed.",
        )


class BudgetExceeded(AgentboxError):
    """The run's spend passed its budget and the agent was stopped, or today's runs spent their daily budget and
    it did not start."""

    reason = "policy"


class DailyBudgetReached(BudgetExceeded):
    """Today's runs of a deployment (outside deployments: of a flow) spent its daily budget: this run did not start."""


class RunCancelled(AgentboxError):
    """The run was cancelled (from the Prefect UI or API) while it waited; its sandbox was torn down."""

    exit_code = 130
    reason = "cancelled"
