"""The catalog: how each MCP server key of an E2B-style config starts on this host.

A config is `{"<key>": {<that server's settings>}}`, exactly E2B's format. The catalog maps each key to a command
(stdio) or a URL (Streamable HTTP), with `{{field}}` templates filled from the server's settings, the way Docker's
catalog does. The built-in catalog ships with the package; `LOCAL_MCP_CATALOG` names a file that adds or overrides
entries. `tools` lists tool names that prove the server is up: the readiness probe waits for them.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from agentbox.errors import ConfigError

BUILTIN_CATALOG = Path(__file__).with_name("catalog.json")
_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
MAX_CONFIG_BYTES = 32_768  # an MCP config is a few keys and references: far larger is a mistake (or an attack)
EXAMPLE_CONFIG = '{"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}}'


class CatalogEntry(BaseModel):
    """One server: either `command` (+ `env`) or `url` (+ `headers`)."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    command: list[str] | None = None
    env: dict[str, str] = {}
    url: str | None = None
    headers: dict[str, str] = {}
    tools: list[str] = []

    @model_validator(mode="after")
    def _one_transport(self) -> CatalogEntry:
        if bool(self.command) == bool(self.url):
            raise ValueError("needs exactly one of 'command' (a non-empty argv list) or 'url'")
        return self

    def templates(self) -> list[str]:
        return [*(self.command or []), *self.env.values(), self.url or "", *self.headers.values()]

    def required_fields(self) -> list[str]:
        """Config fields the templates use, in order of first use."""
        return list(dict.fromkeys(f for t in self.templates() for f in _FIELD.findall(t)))


@dataclass(frozen=True)
class Upstream:
    """A server ready to start: the catalog entry with its templates filled in. Holds secrets: never log it."""

    key: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tools: tuple[str, ...] = ()

    def __repr__(self) -> str:  # secrets live in env/headers
        return f"Upstream(key={self.key!r}, {'command=' + repr(self.command[0]) if self.command else 'url=...'})"


def load_catalog(extra: Path | str | None = None) -> dict[str, CatalogEntry]:
    """The built-in catalog, with the entries of `extra` added or overriding."""
    entries = _read_catalog_file(BUILTIN_CATALOG)
    if extra:
        entries.update(_read_catalog_file(Path(extra)))
    return entries


def _read_catalog_file(path: Path) -> dict[str, CatalogEntry]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"MCP catalog file {path} does not exist.",
            "Fix LOCAL_MCP_CATALOG or create the file.",
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"MCP catalog file {path} is not valid JSON ({exc.msg} at line {exc.lineno}).",
            "Fix the file.",
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"MCP catalog file {path} must hold a JSON object of server keys.", "Fix the file.")
    entries = {}
    for key, value in raw.items():
        try:
            entries[key] = CatalogEntry.model_validate(value)
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"MCP catalog {path}: entry '{key}' is invalid ({why}).", "Fix the file.") from None
    return entries


def read_config_argument(value: str, option: str) -> Any:
    """An MCP config given on a command line: JSON, or `@path` to a JSON file (keeps secrets out of `ps`)."""
    try:
        if value.startswith("@"):
            with Path(value[1:]).open("rb") as file:
                text = file.read(MAX_CONFIG_BYTES + 1).decode("utf-8", errors="replace")
        else:
            text = value
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the {option} file {value[1:]} ({exc.strerror}).",
            f"Fix the {option} path.",
        ) from None
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{option} is larger than an MCP config may be (at most {MAX_CONFIG_BYTES:,} bytes).",
            "Keep server settings short; pass secrets as ${NAME} references.",
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{option} is not valid JSON ({exc.msg} at line {exc.lineno}).",
            "Pass a JSON object or @file.",
        ) from None


def unknown_server(key: str, known: Iterable[str], label: str = "MCP server") -> str:
    """'unknown MCP server 'x'', with the nearest known key when there is one (a typo is the usual cause)."""
    near = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown {label} '{key}'" + (f" (did you mean '{near[0]}'?)" if near else "")


def check_config_shape(config: Any) -> None:
    """A non-empty JSON object of server keys, of bounded size: the checks every backend shares."""
    if not isinstance(config, dict) or not config:
        raise ConfigError(
            f"The MCP config must be a non-empty JSON object of server keys, e.g. {EXAMPLE_CONFIG}.",
            "Fix the MCP config.",
        )
    size = len(json.dumps(config, ensure_ascii=False).encode())
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"The MCP config is {size:,} bytes; at most {MAX_CONFIG_BYTES:,} are accepted.",
            "Keep server settings short; pass secrets as ${NAME} references.",
        )


def field_problems(key: str, values: Any, required: Iterable[str], known: Iterable[str] | None) -> list[str]:
    """What is wrong with one server's settings: not an object, required fields missing, and, unless `known` is
    None, fields it does not have."""
    if not isinstance(values, dict):
        return [f"server '{key}' needs an object of settings, got {type(values).__name__}"]
    problems = []
    missing = [f for f in required if not values.get(f)]
    if missing:
        problems.append(f"server '{key}' is missing {', '.join(repr(m) for m in missing)}")
    known = list(values if known is None else known)
    unknown = [f for f in values if f not in known]
    if unknown:
        has = f"it has {', '.join(repr(k) for k in known)}" if known else "it takes none"
        problems.append(f"server '{key}' has no field {', '.join(repr(u[:40]) for u in unknown)} ({has})")
    return problems


def validate_config(config: Any, catalog: dict[str, CatalogEntry], allow_unknown_fields: bool = True) -> None:
    """Refuse, before anything starts, a config with unknown keys or missing fields; names every problem.

    The gateway ignores fields no template uses, as Docker's does; a session's plan refuses them
    (`allow_unknown_fields=False`), since there they are a typo or junk that Prefect would store."""
    check_config_shape(config)
    problems = []
    for key, values in config.items():
        if key not in catalog:
            problems.append(unknown_server(key, catalog))
            continue
        fields = catalog[key].required_fields()
        problems += field_problems(key, values, fields, None if allow_unknown_fields else fields)
    if problems:
        known = ", ".join(sorted(catalog))
        raise ConfigError(f"Invalid MCP config: {'; '.join(problems)}.", f"Known servers: {known}.")


def render(key: str, values: dict[str, Any], entry: CatalogEntry) -> Upstream:
    """Fill the entry's `{{field}}` templates with the server's settings."""

    def fill(template: str) -> str:
        return _FIELD.sub(lambda m: str(values[m.group(1)]), template)

    return Upstream(
        key=key,
        command=[fill(a) for a in entry.command] if entry.command else None,
        env={k: fill(v) for k, v in entry.env.items()},
        url=fill(entry.url) if entry.url else None,
        headers={k: fill(v) for k, v in entry.headers.items()},
        tools=tuple(entry.tools),
    )


def upstreams(config: dict[str, Any], catalog: dict[str, CatalogEntry]) -> list[Upstream]:
    validate_config(config, catalog)
    return [render(key, values, catalog[key]) for key, values in config.items()]


def expected_tools(server_keys: list[str], catalog: dict[str, CatalogEntry]) -> dict[str, list[str]]:
    """For each server, the tool names whose presence proves it is up (empty when the catalog names none)."""
    return {key: list(catalog[key].tools) if key in catalog else [] for key in server_keys}
