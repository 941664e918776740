"""What a session needs before anything starts: checked settings, a checked MCP config, the sandbox's envs.

MCP configs travel through Prefect with `${NAME}` references only; they are resolved here, inside the task that
creates the sandbox. A rehearsal substitutes stand-in endpoints and dummy credentials through `StandIns`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from agentbox.errors import ConfigError
from agentbox.gateway.catalog import CatalogEntry, expected_tools, load_catalog, validate_config
from agentbox.settings import Settings, references_in, resolve_references

_SECRET_FIELD = re.compile(r"(?i)(token|secret|password|apikey|api_key|accesskey|pat$|credential)")
_WHOLE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


class StandIns(BaseModel):
    """Local stand-ins replacing the remote services of a run (a rehearsal). Holds dummies, never real secrets."""

    label: str = "REHEARSAL"
    anthropic_base_url: str
    catalog_file: str
    values: dict[str, str]  # dummy values for ${NAME} references


def rehearsal_backend(backend: str | None) -> str:
    """A rehearsal's stand-ins live on this machine, where only a local sandbox can reach them."""
    if backend not in (None, "local"):
        raise ConfigError(
            f"A rehearsal runs on the local backend, not '{backend}': its stand-ins live on this machine.",
            "Drop --backend (or pass --backend local) for a rehearsal.",
        )
    return "local"


def catalog_for(settings: Settings, stand_ins: StandIns | None) -> dict[str, CatalogEntry]:
    return load_catalog(stand_ins.catalog_file if stand_ins else settings.local_mcp_catalog)


def catalog_file_for(settings: Settings, stand_ins: StandIns | None) -> str | None:
    if stand_ins:
        return stand_ins.catalog_file
    return str(settings.local_mcp_catalog) if settings.local_mcp_catalog else None


def literal_secrets(mcp: dict[str, Any]) -> list[str]:
    """Secret-looking fields given as literal values instead of `${NAME}` references."""
    found = []
    for key, values in mcp.items():
        for name, value in (values or {}).items() if isinstance(values, dict) else []:
            if _SECRET_FIELD.search(name) and isinstance(value, str) and not _WHOLE_REFERENCE.match(value):
                found.append(f"{key}.{name}")
    return found


def preflight(settings: Settings, mcp: dict[str, Any], backend: str, stand_ins: StandIns | None = None) -> None:
    """Every check that needs no sandbox, with one error naming every problem of a kind."""
    if backend == "e2b":
        from agentbox.sandboxes import e2b

        if not isinstance(mcp, dict) or not mcp:
            validate_config(mcp, {})  # the same message for a config that is not an object of servers
        e2b.validate_config(mcp)
    else:
        validate_config(mcp, catalog_for(settings, stand_ins))
    literal = literal_secrets(mcp)
    if literal:
        raise ConfigError(
            f"The MCP config holds literal secrets ({', '.join(literal)}); they would be stored by Prefect.",
            'Put each in an environment variable and write "${NAME}" instead.',
        )
    needed = set(references_in(mcp))
    if stand_ins:
        unknown = sorted(needed - set(stand_ins.values))
        if unknown:
            raise ConfigError(f"The rehearsal has no stand-in for {', '.join(unknown)}.", "Use catalog servers it covers.")
        return
    needed.add("ANTHROPIC_API_KEY")
    if backend == "e2b":
        needed.add("E2B_API_KEY")
    settings.require(*sorted(needed))


def resolve_config(settings: Settings, mcp: dict[str, Any], stand_ins: StandIns | None = None) -> dict[str, Any]:
    """The MCP config with every reference replaced by its value (holds secrets: hand it only to the sandbox)."""
    lookup = stand_ins.values.__getitem__ if stand_ins else settings.resolve_reference
    return resolve_references(mcp, lookup)  # type: ignore[return-value]


def sandbox_envs(settings: Settings, stand_ins: StandIns | None = None) -> dict[str, str]:
    """Environment of every command in the sandbox: what Claude Code needs to reach the model."""
    envs = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "MCP_TIMEOUT": str(settings.mcp_timeout_ms)}
    if stand_ins:
        envs.update(ANTHROPIC_API_KEY="rehearsal-anthropic-key", ANTHROPIC_BASE_URL=stand_ins.anthropic_base_url)
        return envs
    envs["ANTHROPIC_API_KEY"] = settings.resolve_reference("ANTHROPIC_API_KEY")
    if settings.anthropic_base_url:
        envs["ANTHROPIC_BASE_URL"] = settings.anthropic_base_url
    return envs


def expected_server_tools(settings: Settings, mcp: dict[str, Any], stand_ins: StandIns | None = None) -> dict[str, list[str]]:
    return expected_tools(list(mcp), catalog_for(settings, stand_ins))
