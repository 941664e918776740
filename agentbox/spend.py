"""What a run has spent on the model so far, from the token usage Claude Code reports as each call starts.

Claude Code's own `--max-budget-usd` is checked after each model call, and its stream gives a cost only at the end,
so a hard stop needs a running figure: each assistant message carries its call's usage (one per message id; the
stream repeats it for every content block), priced by model family in USD per million tokens. An unknown model is
priced as the dearest, so the estimate errs towards stopping early. Cache writes cost 1.25x input, reads 0.1x.
"""

from __future__ import annotations

from typing import Any

# (input, output) USD per million tokens, by the family named in the model id
PRICES = {"opus": (5.0, 25.0), "sonnet": (3.0, 15.0), "haiku": (1.0, 5.0)}
DEAREST = max(PRICES.values())
CACHE_WRITE, CACHE_READ = 1.25, 0.1


def price_of(model: str) -> tuple[float, float]:
    return next((price for family, price in PRICES.items() if family in model.lower()), DEAREST)


def call_cost(model: str, usage: dict[str, Any]) -> float:
    """USD of one model call's usage."""
    input_price, output_price = price_of(model)

    def tokens(name: str) -> float:
        value = usage.get(name)
        return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0

    inputs = (tokens("input_tokens") + CACHE_WRITE * tokens("cache_creation_input_tokens")
              + CACHE_READ * tokens("cache_read_input_tokens"))
    return (inputs * input_price + tokens("output_tokens") * output_price) / 1_000_000


TOKEN_KINDS = {"input_tokens": "input", "output_tokens": "output", "cache_read_input_tokens": "cache_read",
               "cache_creation_input_tokens": "cache_creation"}


class Spend:
    """The running estimate of one run: the largest usage seen per message, summed."""

    def __init__(self) -> None:
        self._calls: dict[str, float] = {}
        self._tokens: dict[str, dict[str, int]] = {}

    def add(self, message_id: str, model: str, usage: dict[str, Any]) -> float:
        """Count a message's usage (again, if it grew); the run's estimate so far."""
        key = message_id or f"anonymous-{len(self._calls)}"
        self._calls[key] = max(self._calls.get(key, 0.0), call_cost(model, usage))
        seen = self._tokens.setdefault(key, {})
        for name, kind in TOKEN_KINDS.items():
            if isinstance(value := usage.get(name), int) and value > seen.get(kind, 0):
                seen[kind] = value
        return self.usd

    def tokens(self) -> dict[str, int]:
        """The run's tokens so far, by kind (input, output, cache_read, cache_creation)."""
        totals = dict.fromkeys(TOKEN_KINDS.values(), 0)
        for seen in self._tokens.values():
            for kind, count in seen.items():
                totals[kind] += count
        return totals

    @property
    def usd(self) -> float:
        return sum(self._calls.values())
