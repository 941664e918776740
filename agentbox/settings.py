"""Every knob and secret of the product, read once from the environment and `.env`.

Secrets are `SecretStr`, so a repr, a log line or a Prefect result never shows them. Which secrets a run needs
depends on what it does (a rehearsal needs none), so presence is checked by `require()`, which names every missing
variable in one message before anything is created or paid for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentbox.errors import ConfigError
from agentbox.sandboxes.registry import backend_names

ENV_FILE = ".env"
WHERE = f"the environment or in {ENV_FILE} (see .env.example)"


class Settings(BaseSettings):
    """The product's configuration; field names are the environment variable names, case-insensitive."""

    model_config = SettingsConfigDict(
        env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    # Secrets: only ever read through this object.
    e2b_api_key: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    notion_integration_token: SecretStr | None = None
    github_token: SecretStr | None = None

    anthropic_base_url: str | None = Field(None, description="Passed to Claude in the sandbox (a proxy or gateway).")
    sandbox_backend: str | None = Field(
        None, description="Where sandboxes run, a registered backend; default: e2b when E2B_API_KEY is set, else local."
    )
    e2b_mcp_url: str = Field(
        "https://{port}-{sandbox_id}.{domain}/mcp",
        description="The gateway URL of an E2B sandbox: a template with {sandbox_id}, {domain} and {port}.",
    )
    e2b_mcp_internal_url: str = Field(
        "http://localhost:{port}/mcp",
        description="The same gateway as Claude reaches it from inside the sandbox (same template fields).",
    )
    e2b_template: str | None = Field(None, description="E2B template; unset: E2B's 'mcp-gateway'.")
    e2b_model_key_via_rules: bool = Field(
        False, description="Give the model key to E2B's egress proxy (network rules) instead of the sandbox's "
        "environment. Off until checked against the real E2B."
    )
    local_mcp_catalog: Path | None = Field(None, description="Extra catalog file: adds or overrides MCP servers.")
    local_sandbox_root: Path = Field(
        Path.home() / ".cache" / "agentbox" / "sandboxes", description="Where local sandboxes keep their state."
    )
    local_max_processes: int = Field(
        1024, ge=16, description="Processes one local sandbox may run at once (enforced when run as root)."
    )
    local_max_memory_mib: int = Field(4096, ge=256, description="Address space of each process in a local sandbox.")
    local_warm_gateway: bool = Field(
        False, description="Keep one warm spare gateway (imports done, no options, no secrets) for the next local "
        "sandbox to claim: a sandbox's gateway is then ready about a second sooner. A spare nobody claims stops "
        "after 10 minutes."
    )

    claude_model: str | None = Field(None, description="Model for Claude Code; unset = the CLI's default.")
    claude_max_turns: int = Field(12, ge=1, le=200)
    claude_timeout_seconds: float = Field(
        600, gt=0, description="Kills the headless `claude` run past this (approval waits come on top)."
    )
    mcp_timeout_ms: int = Field(30_000, ge=1000, description="Claude's wait for MCP servers at start.")
    gateway_ready_timeout_seconds: float = Field(120, gt=0, description="Deadline for the gateway to list its tools.")
    flow_timeout_seconds: float = Field(
        5400, gt=0, description="A flow run's timeout; it makes room for the longest wait for a person's approval.")
    flow_retries: int = Field(
        0, ge=0, le=10, description="How often Prefect runs a failed flow run again; an agent run that completed and "
        "acted is reused by the retry, never run twice.")
    sandbox_concurrency_limit: str = Field(
        "agentbox-sandboxes",
        description="Prefect global concurrency limit each session holds a slot of (deployments.bootstrap creates "
        "it); empty runs sessions without a limit.",
    )
    policy_tools: str | None = Field(
        None, description="Default run policy: comma-separated gateway tools the agent may call (empty: none)."
    )
    policy_allow_commands: bool | None = Field(None, description="Default run policy: let the agent run commands.")
    policy_egress: str | None = Field(
        None, description="Default run policy: comma-separated hosts (host, host:port, *.domain) the sandbox may "
        "reach besides the model API and the gateway."
    )
    policy_require_approval: str | None = Field(
        None, description="Default run policy: comma-separated gateway tools (names or patterns) a person must "
        "approve before each call (empty: none)."
    )
    policy_approval_timeout_seconds: int | None = Field(
        None, description="Default run policy: how long a run waits for people, over all its approvals."
    )
    policy_writes: str | None = Field(
        None, description="Default run policy: comma-separated gateway tools (names or patterns) that write: "
        "journaled, never done twice by a retried run (empty: none; unset: by the workflow, else by verb)."
    )
    policy_on_silence: str | None = Field(
        None, description="Default run policy: deny or approve a call nobody answered in time."
    )
    policy_budget_usd: float | None = Field(
        None, description="Default run policy: the most a run may spend on the model, in USD."
    )
    daily_budget_usd: float | None = Field(
        None, gt=0, description="The most the runs of one deployment (outside deployments: of one flow) may spend on "
        "the model per UTC day, as their recorded spend; a run that would start past it is refused."
    )
    notify_urls: SecretStr | None = Field(
        None, description="Where deployments.bootstrap points the server's notifications when --notify is not "
        "given: comma-separated Slack or Microsoft Teams incoming-webhook URLs, or any http(s) webhook URL."
    )
    notify_success: bool = Field(False, description="Notify of runs that succeed too (deployments.bootstrap).")
    egress_resolve: str = Field(
        "", description="Names the egress proxy resolves to fixed addresses, like curl --resolve: "
        "'name=address,...'. Pinned names may resolve to loopback or private addresses; others may not."
    )
    sandbox_ttl_seconds: int = Field(
        5700, ge=60, description="The sandbox dies by itself after this; must outlive the flow timeout."
    )
    sandbox_lease_seconds: int = Field(
        90, ge=5, le=3600, description="A sandbox dies this long after its run last renewed its lease (the run "
        "renews it while it lives, also while it waits for a person): however the run dies, its sandbox follows "
        "within about this time. Never past SANDBOX_TTL_SECONDS."
    )

    # Tracing (agentbox/telemetry): the standard OpenTelemetry variables, read for every layer of a run.
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="The OTLP/HTTP endpoint (base URL, e.g. http://tempo:4318) the orchestrator, the gateway, "
        "the egress proxy and Claude Code export a run's telemetry to; unset: tracing is off."
    )
    otel_exporter_otlp_headers: SecretStr | None = Field(
        None, description="Headers sent to that endpoint, 'key=value,...' (an API key: kept secret)."
    )
    otel_exporter_otlp_protocol: Literal["http/protobuf", "http/json"] = Field(
        "http/protobuf", description="OTLP over HTTP, protobuf or JSON (for Claude Code; the others use protobuf)."
    )
    otel_service_name: str = Field("agentbox", description="service.name of the orchestrator's telemetry.")
    otel_resource_attributes: str | None = Field(
        None, description="Attributes every layer's telemetry carries besides the run's, 'key=value,...'."
    )
    otel_metrics_exporter: Literal["otlp", "none"] = Field(
        "otlp", description="Export metrics (the run's cost and tokens, Claude Code's metrics) too."
    )
    otel_logs_exporter: Literal["otlp", "none"] = Field("otlp", description="Export Claude Code's events too.")
    otel_sdk_disabled: bool = Field(False, description="Turn tracing off even with an endpoint set.")

    @field_validator("sandbox_backend")
    @classmethod
    def _registered_backend(cls, name: str | None) -> str | None:
        if name and name not in backend_names():
            raise ValueError(f"must be one of the registered backends: {', '.join(sorted(backend_names()))}")
        return name or None

    @field_validator("sandbox_ttl_seconds")
    @classmethod
    def _ttl_outlives_flow(cls, ttl: int, info: ValidationInfo) -> int:
        """A field validator, not a model one, so it is reported together with any other bad field."""
        flow_timeout = info.data.get("flow_timeout_seconds")
        if flow_timeout is not None and ttl <= flow_timeout:
            raise ValueError("must be larger than FLOW_TIMEOUT_SECONDS, so a sandbox never dies mid-run")
        return ttl

    @property
    def backend(self) -> str:
        """The configured backend, or the default that follows from the credentials present."""
        if self.sandbox_backend:
            return self.sandbox_backend
        return "e2b" if self.e2b_api_key else "local"

    def require(self, *names: str) -> None:
        """Raise one ConfigError naming every variable among `names` that is unset or empty."""
        missing = sorted({n.upper() for n in names if self._lookup(n) is None})
        if missing:
            plural = len(missing) > 1
            raise ConfigError(
                f"Missing setting{'s' if plural else ''} {', '.join(missing)}.",
                f"Set {'them' if plural else 'it'} in {WHERE}.",
            )

    def resolve_reference(self, name: str) -> str:
        """Value of a `${NAME}` reference: a settings field first, else the environment, else `.env`."""
        value = self._lookup(name)
        if value is None:
            self.require(name)
        return value

    def secret_values(self) -> list[str]:
        """Every secret's value, for `redact`."""
        values = [getattr(self, n) for n, f in type(self).model_fields.items() if f.annotation == SecretStr | None]
        return [v.get_secret_value() for v in values if v is not None]

    def _lookup(self, name: str) -> str | None:
        field = name.lower()
        if field in type(self).model_fields:
            value = getattr(self, field)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            return str(value) if value is not None and str(value).strip() else None
        value = os.environ.get(name) or dotenv_values(ENV_FILE).get(name)
        return value if value and value.strip() else None


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning pydantic's multi-line error into one line that names every bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper()
            problems.append(f"{name}: {err['msg']}" if name else err["msg"])
        raise ConfigError(
            f"Invalid settings: {'; '.join(problems)}.",
            f"Fix {'them' if len(problems) > 1 else 'it'} in {WHERE}.",
        ) from None


def configured_flow_timeout() -> float:
    """FLOW_TIMEOUT_SECONDS for the flow decorators, read when their module is imported: by the CLI, a runner, or a
    worker's flow-run process (with that worker's environment), so every path applies the configured timeout. Bad
    settings fall back to the default here; the run's plan reports them before anything starts."""
    try:
        return load_settings().flow_timeout_seconds
    except ConfigError:
        return Settings.model_fields["flow_timeout_seconds"].default


def configured_flow_retries() -> int:
    """FLOW_RETRIES for the flow decorators, read at import like `configured_flow_timeout`."""
    try:
        return load_settings().flow_retries
    except ConfigError:
        return Settings.model_fields["flow_retries"].default
