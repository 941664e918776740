"""Credentials of known formats, found by pattern: what the guard refuses in a tool call's arguments and redacts in
its result, besides the run's own secret values (which it knows).

A token the agent reads somewhere (a GitHub or cloud key pasted in a Notion page) is no secret of this run, yet it
must not leave through `create_issue`. Docker's gateway scans for 88 patterns from Trivy. This scanner is MongoDB's
Kingfisher (`kingfisher-secret-scanner`, in-process Rust): its catalog is Betterleaks' (gitleaks' successor) plus
Google's Veles detectors, about 440 reported credential formats, none guessed by entropy; about 0.15 ms per 10 kB.
One rule of ours adds a lone AWS access key id (rules/). Findings marked invisible are parts of composite rules
(client ids, tenant ids: plain UUIDs would match) and are ignored, except the secret half of an AWS key pair.

Compiling the catalog takes about 3.5 s; with its cache warm, 0.35 s. `make setup` warms the cache in the
environment (`python -m agentbox.gateway.patterns`), which sandboxes mount read-only.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kingfisher_sdk import Rules, Scanner

RULES_DIR = Path(__file__).with_name("rules")
CACHE_DIR = Path(sys.prefix) / "share" / "agentbox" / "kingfisher-rules"
ALSO_SECRET = {"betterleaks.aws-secret-access-key"}  # invisible parts that are secrets on their own
MASK = "***"


@dataclass(frozen=True, order=True)
class Credential:
    """Where one credential is in a text (str indices, end excluded) and the rule that matched it."""

    start: int
    end: int
    rule: str


def rule_name(rule_id: str) -> str:
    """A rule's short name, for people: `betterleaks.github-pat` -> `github-pat`."""
    for prefix in ("betterleaks.", "custom.", "kingfisher.", "veles.secrets/"):
        if rule_id.startswith(prefix):
            return rule_id[len(prefix):]
    return rule_id


class CredentialPatterns:
    """The compiled catalog, shared by every call (the scanner releases the GIL while it scans)."""

    def __init__(self) -> None:
        with contextlib.suppress(OSError):  # a read-only environment: its cache is warm, or compiling takes longer
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
        rules = Rules(sorted(RULES_DIR.glob("*.yaml")), confidence="medium",
                      cache_dir=CACHE_DIR if CACHE_DIR.is_dir() else None)
        self.cache_status = rules.cache_status
        self.scanner = Scanner(rules)

    def find(self, text: str) -> list[Credential]:
        data = text.encode()
        found = [f for f in self.scanner.scan(data) if f.visible or f.rule_id in ALSO_SECRET]
        if not found:
            return []
        ascii_only = len(data) == len(text)

        def index(offset: int) -> int:  # the scanner's offsets are UTF-8 bytes
            return offset if ascii_only else len(data[:offset].decode(errors="ignore"))

        return sorted(Credential(index(f.location["start_offset"]), index(f.location["end_offset"]),
                                 rule_name(f.rule_id)) for f in found)

    def redact(self, text: str) -> tuple[str, list[str]]:
        """`text` with every credential masked, and the rules that matched (none: `text` unchanged)."""
        found = self.find(text)
        if not found:
            return text, []
        parts, end = [], 0
        for credential in found:  # sorted by start; overlapping matches are masked as one
            if credential.start >= end:
                parts += [text[end:credential.start], MASK]
            end = max(end, credential.end)
        parts.append(text[end:])
        return "".join(parts), sorted({c.rule for c in found})


@functools.lru_cache(maxsize=1)
def credential_patterns() -> CredentialPatterns:
    """The process's one compiled catalog (a warm spare compiles it while it waits for its options)."""
    return CredentialPatterns()


def main() -> int:
    """Compile the catalog into the environment's cache (`make setup` runs this), and say what it took."""
    started = time.monotonic()
    patterns = CredentialPatterns()
    for entry in CACHE_DIR.glob("*"):  # readable by whoever runs a gateway from this environment
        with contextlib.suppress(OSError):
            entry.chmod(0o644)
    print(f"credential patterns: {len(patterns.scanner.rules)} rules, cache {patterns.cache_status} "
          f"({CACHE_DIR}), {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
