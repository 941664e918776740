"""Secrets as this project handles them, in one place: `${NAME}` references, which names hold secrets, redaction,
and the matching the gateway's guard does.

Flows hand MCP configs around with references only, so Prefect stores names, never values; the values are resolved
inside the task that creates the sandbox. Two thresholds, on purpose: whatever we show (logs, errors, artifacts) is
redacted for any secret of `REDACT_MIN_CHARS` or more (a stray `***` costs nothing), while the gateway refuses a tool
call only for secrets of `BLOCK_MIN_CHARS` or more (a refused call costs the agent its work, and a short value such as
a port or "true" would match everywhere and prove nothing).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

REDACT_MIN_CHARS = 4
BLOCK_MIN_CHARS = 8
MASK = "***"

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
_SECRET_NAME = re.compile(r"(?i)(token|secret|password|apikey|api_key|accesskey|credential|pat$|key$)")


def map_strings(value: object, change: Callable[[str], object]) -> object:
    """A JSON-like value with `change` applied to each of its strings (dict keys stay as they are)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {k: map_strings(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, change) for v in value]
    return value


def resolve_references(value: object, lookup: Callable[[str], str]) -> object:
    """Replace every `${NAME}` inside strings of a JSON-like value with `lookup(NAME)`."""
    return map_strings(value, lambda text: _REFERENCE.sub(lambda m: lookup(m.group(1)), text))


def references_in(value: object) -> set[str]:
    """Names of every `${NAME}` in a JSON-like value (to check them all before starting)."""
    if isinstance(value, str):
        return set(_REFERENCE.findall(value))
    if isinstance(value, dict):
        return set().union(*(references_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(references_in(v) for v in value)) if value else set()
    return set()


def is_reference(value: str) -> bool:
    """Whether a whole value is one `${NAME}` reference (a secret field must be one, never a literal)."""
    return bool(_WHOLE_REFERENCE.match(value))


def looks_secret(name: str) -> bool:
    """Whether a field or variable name says its value is a secret: `githubPersonalAccessToken`, `ANTHROPIC_API_KEY`."""
    return bool(_SECRET_NAME.search(name))


def secret_fields(config: object) -> list[tuple[str, str, str]]:
    """(server key, field name, value) of every string field of an MCP config whose name says it is a secret."""
    if not isinstance(config, dict):
        return []
    return [
        (key, name, value)
        for key, values in config.items() if isinstance(values, dict)
        for name, value in values.items()
        if isinstance(value, str) and looks_secret(name)
    ]


def config_secrets(config: dict[str, Any]) -> list[str]:
    """The values of an MCP config's fields whose names say they are secrets."""
    return [value for _, _, value in secret_fields(config)]


class SecretMatcher:
    """Finds and masks a set of secret values in text, longest first (so a secret that contains another is masked
    whole); values shorter than `min_chars` are ignored."""

    def __init__(self, secrets: Iterable[str], min_chars: int) -> None:
        self.values = sorted({s for s in secrets if s and len(s) >= min_chars}, key=len, reverse=True)

    def found_in(self, text: str) -> bool:
        return any(value in text for value in self.values)

    def redact(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return text


def redact(text: str, secrets: list[str]) -> str:
    """Replace every secret value in `text` with `***` (a last line of defence for logs and error messages)."""
    return SecretMatcher(secrets, REDACT_MIN_CHARS).redact(text)


def redact_value(value: Any, secrets: list[str]) -> Any:
    """`redact` through a JSON value's strings."""
    matcher = SecretMatcher(secrets, REDACT_MIN_CHARS)
    return map_strings(value, matcher.redact)
