"""Context compaction: drop whole old turns when a run's context nears its budget.

The one place the append-only transcript is rebuilt: whole assistant turns (a call never without its
result) are removed from the oldest on, a note says how many, and the shortened message list is
rendered afresh into a new transcript epoch, so backends with a cache know to start over.
"""

from __future__ import annotations

from collections.abc import Callable

from agentkit.limits import Limits
from agentkit.messages import AssistantMessage, Message, Transcript, UserMessage
from agentkit.session import RunState

COMPACT_NOTE = (
    "[agentkit] {count} earlier assistant turns and their tool results were removed to keep the "
    "conversation within its context budget."
)


def _size(m: Message) -> int:
    """Characters a message takes in the prompt (tool calls with their markup, roughly)."""
    if isinstance(m, AssistantMessage):
        n = len(m.content) + len(m.reasoning_content or "")
        return n + sum(len(c.arguments_json()) + len(c.name) + 80 for c in m.tool_calls)
    return len(m.content) + 40


def compact(state: RunState, limits: Limits, render: Callable[[list[Message]], str]) -> int:
    """Shorten `state` in place if its context passed `compact_at` of the budget; turns dropped."""
    budget = limits.context_budget_tokens
    if budget is None or state.usage.context_tokens <= budget * limits.compact_at:
        return 0
    msgs = state.messages
    first_user = next((i for i, m in enumerate(msgs) if isinstance(m, UserMessage)), None)
    if first_user is None:
        return 0
    starts = [i for i in range(first_user + 1, len(msgs)) if isinstance(msgs[i], AssistantMessage)]
    if len(starts) < 2:
        return 0
    per_char = state.usage.context_tokens / max(state.transcript.n_chars, 1)
    total = state.usage.context_tokens
    target = budget * limits.compact_to
    drop = 0
    while drop < len(starts) - 1 and total > target:
        end = starts[drop + 1]
        total -= int(sum(_size(m) for m in msgs[starts[drop] : end]) * per_char)
        drop += 1
    if drop == 0:
        return 0
    kept = [*msgs[: first_user + 1], UserMessage(COMPACT_NOTE.format(count=drop)), *msgs[starts[drop] :]]
    state.messages = kept
    transcript = Transcript(state.transcript.epoch + 1)
    transcript.append(render(kept))
    state.transcript = transcript
    state.usage.context_tokens = int(transcript.n_chars * per_char)
    return drop
