"""Run limits and usage accounting.

A limit never raises out of a run: when one trips the loop asks the model once for a final answer
without tools and then ends with status ``limit:<name>``, so a user always gets the best answer the
budget allowed plus a clear reason why the run stopped.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per million tokens; cached prompt tokens are billed at their own rate (prefix-cache hits)."""

    input_per_mtok: float = 0.0
    cached_input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        uncached = max(prompt_tokens - cached_tokens, 0)
        return (
            uncached * self.input_per_mtok
            + cached_tokens * self.cached_input_per_mtok
            + completion_tokens * self.output_per_mtok
        ) / 1e6


@dataclass(slots=True)
class Usage:
    """Totals over a run. `prefilled_tokens` counts tokens a backend actually had to process as prompt
    (after any cache hit), which is how session resume proves it re-used the saved KV state."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    prefilled_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: int = 0
    cost_usd: float = 0.0
    context_tokens: int = 0
    decode_steps: int = 0
    """Decode forwards the backend ran after the prompts' (the embedded backend counts them; others 0)."""
    drafted_tokens: int = 0
    """Speculative decoding (embedded backend): tokens drafted, by the MTP block and by prompt lookup."""
    accepted_tokens: int = 0
    """Drafted tokens the model kept (each one a token without a forward of its own)."""
    lookup_drafted_tokens: int = 0
    """Of `drafted_tokens`, those proposed by prompt lookup (the rest the MTP block drafted)."""
    lookup_accepted_tokens: int = 0
    """Of `accepted_tokens`, those proposed by prompt lookup."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (0.0 when nothing was drafted)."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Completion tokens per decode forward (0.0 when the backend does not count forwards)."""
        return self.completion_tokens / self.decode_steps if self.decode_steps else 0.0

    def copy(self) -> Usage:
        return copy.copy(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown usage fields: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Limits:
    """Budgets for one run; None means unlimited.

    A tool whose calls failed `max_tool_failures` + its own `retries` times in a row is not run again in
    this run (the model is told so); the same failing call repeated `identical_failure_threshold` times
    gets a note telling the model to change course.

    `malformed_retries`: how many turns in a row the model may write something the run cannot take as
    written (a tool call the parse policy refuses, a block with no call, a torn call) and get a
    correction; one more and the run ends with status "malformed". `output_retries`: the same for a
    final answer that fails the output schema ("output_invalid"). `empty_retries`: how many empty
    final answers get a note asking for an answer before the run ends with status "empty" (0: at once).

    `context_budget_tokens` is not a stop condition: when the live context grows past
    `compact_at` x budget, whole old turns are dropped until it is under `compact_to` x budget. The
    gap between the two keeps compaction rare, so a remote prefix cache stays valid for long stretches.
    """

    max_steps: int | None = 50
    max_tool_calls: int | None = None
    max_generated_tokens: int | None = None
    max_total_tokens: int | None = None
    max_wall_time_s: float | None = None
    max_cost_usd: float | None = None
    max_tokens_per_step: int | None = None
    context_budget_tokens: int | None = None
    compact_at: float = 0.9
    compact_to: float = 0.5
    output_retries: int = 1
    malformed_retries: int = 2
    empty_retries: int = 1
    identical_failure_threshold: int = 2
    max_tool_failures: int = 3

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_tool_calls", "max_generated_tokens", "max_total_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Limits.{name} must be >= 0, got {value}")
        if not 0.0 < self.compact_to < self.compact_at <= 1.0:
            raise ValueError(
                f"need 0 < compact_to < compact_at <= 1, got compact_to={self.compact_to}, "
                f"compact_at={self.compact_at}"
            )
        if min(self.output_retries, self.malformed_retries, self.empty_retries) < 0:
            raise ValueError("Limits.output_retries, malformed_retries and empty_retries must be >= 0")

    def tripped(self, usage: Usage, steps: int, elapsed_s: float) -> str | None:
        """Name of the first exhausted budget, checked between steps."""
        if self.max_steps is not None and steps >= self.max_steps:
            return "max_steps"
        if self.max_tool_calls is not None and usage.tool_calls >= self.max_tool_calls:
            return "max_tool_calls"
        if self.max_generated_tokens is not None and usage.completion_tokens >= self.max_generated_tokens:
            return "max_generated_tokens"
        if self.max_total_tokens is not None and usage.total_tokens >= self.max_total_tokens:
            return "max_total_tokens"
        if self.max_wall_time_s is not None and elapsed_s >= self.max_wall_time_s:
            return "max_wall_time_s"
        if self.max_cost_usd is not None and usage.cost_usd >= self.max_cost_usd:
            return "max_cost_usd"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        return cls(**data)


__all__ = ["Limits", "Pricing", "Usage"]
