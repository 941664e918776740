"""The session plan: what one session will do, decided once when its flow run starts, before anything is created.

`plan_session` checks everything that needs no sandbox (the backend, the prompt, the MCP config, literal secrets,
the TTL against the flow's timeout, every missing setting in one message) and returns a `SessionPlan`: backend and
its options, timeouts, TTL, expected tools, Claude's options, the concurrency limit and the run's labels. The plan
holds no secret (MCP configs keep their `${NAME}` references), so every task can take it as a parameter; tasks look
up only secrets, through `SessionPlan.read_settings`. A rehearsal's stand-ins are settings overrides carried by the
plan, so the same code runs against them.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from pydantic import BaseModel, Field

from agentbox.claude import GATEWAY_NAME, MODEL_KEY_ENV, MODEL_URL_ENV, ClaudeOptions
from agentbox.errors import ConfigError, one_line
from agentbox.policy import RunPolicy, parse_policy
from agentbox.sandboxes import SandboxBackend, backend_class, open_backend
from agentbox.sandboxes.base import DEFAULT_MODEL_URL, Network
from agentbox.secrets import is_reference, references_in, resolve_references, secret_fields
from agentbox.settings import Settings, load_settings

MAX_PROMPT_CHARS = 100_000


class StandIns(BaseModel, frozen=True):
    """Local stand-ins replacing a run's remote services (a rehearsal): settings overrides that point the run at
    them (the model's URL, a catalog of MCP servers aimed at fake APIs, dummy credentials). No real secret."""

    settings: dict[str, str]


class Timeouts(BaseModel, frozen=True):
    """Seconds each bounded part of a session may take."""

    flow: float = Field(description="The flow run's own timeout: the one Prefect applies.")
    claude: float = Field(description="Claude Code's own work, killed past this (waits for people come on top).")
    approvals: float = Field(0.0, description="How long the run may wait for people, in all; 0 when none is asked.")
    gateway_ready: float = Field(description="Until the gateway lists every expected tool, across retries.")
    registration: float = Field(90.0, description="Each `claude mcp` command of the registration.")


class SessionPlan(BaseModel, frozen=True):
    """Everything a session's tasks need to know, decided once; no secret inside."""

    workflow: str
    rehearsal: bool = False
    backend: str
    backend_options: dict[str, Any] = Field(description="The backend's non-secret configuration.")
    prompt: str
    mcp: dict[str, Any] = Field(description="MCP servers, secrets as ${NAME} references.")
    expected_tools: dict[str, list[str]]
    claude: ClaudeOptions
    policy: RunPolicy = Field(default_factory=RunPolicy)
    timeouts: Timeouts
    ttl_seconds: int
    lease_seconds: int | None = Field(None, description="The sandbox's lease, renewed while the run lives; None: "
                                      "it lives its whole TTL.")
    concurrency_limit: str = Field(description="Global limit each session holds a slot of; empty: none.")
    daily_budget_usd: float | None = Field(None, description="What the runs of its deployment may spend per day.")
    anthropic_base_url: str | None = None
    egress_resolve: dict[str, str] = Field(default_factory=dict, description="Names pinned to addresses.")
    mcp_timeout_ms: int
    metadata: dict[str, str] = Field(default_factory=dict, description="Labels that let janitors find its sandbox.")
    stand_ins: StandIns | None = None

    def read_settings(self) -> Settings:
        """The settings the tasks look secrets up in: the environment's, with a rehearsal's stand-ins over them."""
        return load_settings(**(self.stand_ins.settings if self.stand_ins else {}))

    def secret_values(self, settings: Settings) -> list[str]:
        """Every secret this session handles, for `redact`: the settings' and those its MCP references name."""
        return [*settings.secret_values(), *(settings.resolve_reference(n) for n in sorted(references_in(self.mcp)))]

    def sandboxes(self, settings: Settings) -> SandboxBackend:
        return open_backend(self.backend, self.backend_options, settings)

    def resolved_mcp(self, settings: Settings) -> dict[str, Any]:
        """The MCP config with every reference replaced by its value (holds secrets: hand it only to the sandbox)."""
        return resolve_references(self.mcp, settings.resolve_reference)  # type: ignore[return-value]

    def sandbox_envs(self, settings: Settings) -> dict[str, str]:
        """Environment of every command in the sandbox: what Claude Code needs to reach the model."""
        envs = {
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "MCP_TIMEOUT": str(self.mcp_timeout_ms),
            # the stream-json input mode starts without waiting for MCP servers: a first turn would lack their tools
            "MCP_CONNECTION_NONBLOCKING": "false",
            MODEL_KEY_ENV: settings.resolve_reference(MODEL_KEY_ENV),
        }
        if self.anthropic_base_url:
            envs[MODEL_URL_ENV] = self.anthropic_base_url
        return envs

    def network(self) -> Network:
        """Where the sandbox's programs may connect: the model API, the gateway, and the policy's hosts."""
        return Network(model_url=self.anthropic_base_url or DEFAULT_MODEL_URL, allow=self.policy.egress,
                       resolve=self.egress_resolve)


def plan_session(
    settings: Settings,
    prompt: str,
    mcp: Any,
    *,
    workflow: str = "agent-session",
    backend: str | None = None,
    allowed_tools: list[str] | None = None,
    bypass_permissions: bool = False,
    flow_timeout_seconds: float | None = None,
    metadata: dict[str, str] | None = None,
    stand_ins: StandIns | None = None,
    policy: RunPolicy | None = None,
    default_policy: RunPolicy | None = None,
    output_schema: dict[str, Any] | None = None,
) -> SessionPlan:
    """Check everything that needs no sandbox, one error naming every problem of a kind, and decide the session.

    `flow_timeout_seconds` is the timeout of the flow run that will carry the session (default: the configured
    one); the sandbox's TTL must outlive it. The run policy is the run's own `policy`, else the one the settings
    give, else the workflow's `default_policy`. `allowed_tools`, when given, is Claude's list as is."""
    if stand_ins:
        settings = load_settings(**stand_ins.settings)
        uncovered = sorted(n for n in references_in(mcp) if n.lower() not in stand_ins.settings)
        if uncovered:  # it would be read from the real environment, and handed to a rehearsal
            raise ConfigError(
                f"The rehearsal has no stand-in for {', '.join(uncovered)}.", "Use catalog servers it covers."
            )
    name = backend or settings.backend
    adapter = backend_class(name)
    options = adapter.options(settings)
    check_prompt(prompt)
    adapter.check_mcp_config(options, mcp)
    check_no_literal_secrets(mcp)
    flow_timeout = flow_timeout_seconds or settings.flow_timeout_seconds
    if settings.sandbox_ttl_seconds <= flow_timeout:
        raise ConfigError(
            f"SANDBOX_TTL_SECONDS ({settings.sandbox_ttl_seconds}) must be larger than the flow run's timeout "
            f"({flow_timeout:g} s), or the sandbox could die mid-run.",
            "Raise SANDBOX_TTL_SECONDS or lower FLOW_TIMEOUT_SECONDS.",
        )
    settings.require("ANTHROPIC_API_KEY", *adapter.required_settings, *sorted(references_in(mcp)))
    policy = layered_policy(default_policy, settings_policy(settings), policy)
    adapter.check_network(options, Network(allow=policy.egress))
    check_approvals_are_asked(policy, allowed_tools, bypass_permissions)
    waits = float(policy.approval_timeout_seconds) if policy.require_approval else 0.0
    check_room_for_approvals(waits, settings.claude_timeout_seconds, flow_timeout)
    if output_schema is not None and (problem := output_schema_problem(output_schema)):
        raise ConfigError(f"Invalid output schema: {problem}.", "Pass a JSON Schema object, e.g. "
                          '{"type": "object", "properties": {"summary": {"type": "string"}}}.')
    claude = ClaudeOptions(max_turns=settings.claude_max_turns, model=settings.claude_model,
                           bypass_permissions=bypass_permissions, max_budget_usd=policy.budget_usd,
                           json_schema=output_schema,
                           allowed_tools=tuple(allowed_tools) if allowed_tools else policy.claude_tools())
    return SessionPlan(
        workflow=workflow,
        rehearsal=stand_ins is not None,
        backend=name,
        backend_options=options,
        prompt=prompt,
        mcp=mcp,
        expected_tools=allowed_expected_tools(adapter.expected_tools(options, mcp), policy),
        claude=claude,
        policy=policy,
        timeouts=Timeouts(
            flow=flow_timeout, claude=settings.claude_timeout_seconds, approvals=waits,
            gateway_ready=settings.gateway_ready_timeout_seconds,
        ),
        ttl_seconds=settings.sandbox_ttl_seconds,
        lease_seconds=min(settings.sandbox_lease_seconds, settings.sandbox_ttl_seconds),
        concurrency_limit=settings.sandbox_concurrency_limit,
        daily_budget_usd=None if stand_ins else settings.daily_budget_usd,  # a rehearsal spends nothing
        anthropic_base_url=settings.anthropic_base_url,
        egress_resolve=parse_resolve(settings.egress_resolve),
        mcp_timeout_ms=settings.mcp_timeout_ms,
        metadata=metadata or {},
        stand_ins=stand_ins,
    )


POLICY_FIELDS = ("tools", "allow_commands", "egress", "require_approval", "approval_timeout_seconds", "on_silence",
                 "budget_usd", "writes")
POLICY_SETTINGS = {name: f"POLICY_{name.upper()}" for name in POLICY_FIELDS}


def settings_policy(settings: Settings) -> RunPolicy | None:
    """The policy the POLICY_* settings set (only the fields they set)."""
    return parse_policy(POLICY_SETTINGS, "See the configuration table in the README.",
                        **{name: getattr(settings, f"policy_{name}") for name in POLICY_FIELDS})


SETUP_ROOM_SECONDS = 300  # creating the sandbox, the gateway's readiness, registration and teardown


def check_room_for_approvals(waits: float, claude_timeout: float, flow_timeout: float) -> None:
    """A run that may wait for people must be allowed to: its flow timeout must hold the wait and Claude's work."""
    if waits and flow_timeout < waits + claude_timeout + SETUP_ROOM_SECONDS:
        raise ConfigError(
            f"The run may wait {waits:g} s for approvals, plus {claude_timeout:g} s of Claude's work, but the flow "
            f"times out after {flow_timeout:g} s.",
            f"Raise FLOW_TIMEOUT_SECONDS to at least {waits + claude_timeout + SETUP_ROOM_SECONDS:g} (and "
            "SANDBOX_TTL_SECONDS above it), or lower the policy's approval_timeout_seconds.",
        )


def check_approvals_are_asked(policy: RunPolicy, allowed_tools: list[str] | None, bypass_permissions: bool) -> None:
    """Claude Code asks its host only about tools it was not allowed in advance: a run whose Claude may call a tool
    that needs a person's approval unasked would never ask anyone."""
    if not policy.require_approval:
        return
    patterns, no_approval = ", ".join(policy.require_approval), "or require no approval (--require-approval '')."
    if bypass_permissions:
        raise ConfigError(f"Calls of {patterns} need a person's approval, but bypassing permissions lets Claude Code "
                          "make them unasked.", f"Drop bypass_permissions, {no_approval}")
    prefix = f"mcp__{GATEWAY_NAME}"
    unasked = [t for t in allowed_tools or [] if t == prefix
               or (t.startswith(prefix + "__") and policy.needs_approval(t.removeprefix(prefix + "__")))]
    if unasked:
        raise ConfigError(f"Calls of {patterns} need a person's approval, but the allowed tools let Claude Code make "
                          f"them unasked ({', '.join(unasked)}).", f"Leave those out of allowed_tools, {no_approval}")


def parse_resolve(text: str) -> dict[str, str]:
    """EGRESS_RESOLVE's 'name=address,...' as a dict; a bad entry is one ConfigError."""
    pinned = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, address = entry.partition("=")
        try:
            ipaddress.ip_address(address.strip())
        except ValueError:
            raise ConfigError(f"Invalid EGRESS_RESOLVE entry '{entry[:80]}'.", "Write name=address, e.g. "
                              "pypi.internal=10.0.0.5, separated by commas.") from None
        pinned[name.strip().lower()] = address.strip()
    return pinned


def layered_policy(*layers: RunPolicy | None) -> RunPolicy:
    """Each layer's explicitly set fields over the ones before: workflow, then settings, then the run."""
    policy = RunPolicy()
    for layer in layers:
        if layer is not None:
            policy = layer.over(policy)
    return policy.resolved()


def allowed_expected_tools(expected: dict[str, list[str]], policy: RunPolicy) -> dict[str, list[str]]:
    """What readiness waits for: the expected tools the policy lets the gateway serve. A server none of whose proving
    tools is allowed is not waited for: a gateway that filters will never list them."""
    if policy.tools is None:
        return expected
    allowed = set(policy.tools)
    kept = {server: [t for t in tools if t in allowed] for server, tools in expected.items()}
    return {server: tools for server, tools in kept.items() if tools}


MAX_OUTPUT_SCHEMA_BYTES = 50_000


def output_schema_problem(schema: Any) -> str | None:
    """What is wrong with a JSON Schema asked of the agent's answer, if anything."""
    import jsonschema

    if not isinstance(schema, dict):
        return "the output schema must be a JSON object (a JSON Schema)"
    if len(json.dumps(schema)) > MAX_OUTPUT_SCHEMA_BYTES:
        return f"the output schema is over {MAX_OUTPUT_SCHEMA_BYTES:,} bytes"
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"the output schema is not a valid JSON Schema ({one_line(exc.message, limit=200)})"
    return None


def check_prompt(prompt: Any) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("The prompt is empty.", "Say what Claude Code should do.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ConfigError(
            f"The prompt is {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,} are accepted.",
            "Shorten it, or let the agent read long material through its tools.",
        )


def check_no_literal_secrets(mcp: dict[str, Any]) -> None:
    """Secret-looking fields must be `${NAME}` references: a literal value would be stored by Prefect."""
    literal = [f"{key}.{name}" for key, name, value in secret_fields(mcp) if not is_reference(value)]
    if literal:
        raise ConfigError(
            f"The MCP config holds literal secrets ({', '.join(literal)}); they would be stored by Prefect.",
            'Put each in an environment variable and write "${NAME}" instead.',
        )


def rehearsal_backend(backend: str | None) -> str:
    """A rehearsal's stand-ins live on this machine, where only a local sandbox can reach them."""
    if backend not in (None, "local"):
        raise ConfigError(
            f"A rehearsal runs on the local backend, not '{backend}': its stand-ins live on this machine.",
            "Drop --backend (or pass --backend local) for a rehearsal.",
        )
    return "local"
