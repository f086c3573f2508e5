"""Prompt lookup: draft tokens beyond the MTP block's by finding the current n-gram earlier in the sequence.

Agents restate what they have read: file names, numbers, a tool's JSON keys, the closing DSML tags, a
sentence of the task. After the MTP block has drafted d1 (runtime/speculative.py), the last `n` tokens of
[... history, pending, d1] are looked up among the sequence's own earlier tokens, and the tokens that
followed their latest occurrence are proposed as d2, d3, ... The main model verifies them in the same extend
as the MTP drafts, so a wrong proposal costs one more verified position (a few percent of a step on a small
model) and never changes the output: greedy keeps the argmax sequence; sampling treats a proposal as a draft
from a point distribution (accept with probability p(d), else draw from p without d), which keeps the
distribution (runtime/speculative.accept_drafts).

The index maps each n-gram of the history to the position after its latest occurrence; it is extended as
tokens enter the main state (never with drafts: a rolled-back token is not history) and rebuilt from the
most recent half when the history passes `cap` tokens, so its cost per token is O(1) amortized.

One idea: proposing continuations from the sequence's own past.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

LOOKUP_N = 2
"""n-gram length matched. On agentkit-tiny's held-out agent turns (bench/speculative.py), 2 proposes less
and keeps a larger share of what it proposes than 1; 3 matches too rarely."""
HISTORY_CAP = 1 << 16


class TokenLookup:
    """The n-gram index of one sequence's tokens (those its main state holds, as far as they were seen)."""

    def __init__(self, n: int = LOOKUP_N, cap: int = HISTORY_CAP) -> None:
        if n < 1 or cap < 2 * n:
            raise ValueError(f"need n >= 1 and cap >= 2n, got n={n}, cap={cap}")
        self.n, self.cap = n, cap
        self.tokens: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}

    def extend(self, ids: Iterable[int]) -> None:
        """Append tokens that entered the main state."""
        toks, n, after = self.tokens, self.n, self._after
        for t in ids:
            toks.append(int(t))
            if len(toks) >= n:
                after[tuple(toks[-n:])] = len(toks)
        if len(toks) > self.cap:
            keep = toks[-(self.cap // 2) :]
            self.tokens, self._after = [], {}
            self.extend(keep)

    def propose(self, tail: Sequence[int], m: int) -> list[int]:
        """Up to `m` tokens to follow `tail` (tokens after the history, not in it: the pending token and the
        MTP drafts): what followed the latest earlier occurrence of the sequence's last n tokens."""
        if m <= 0:
            return []
        n, toks = self.n, self.tokens
        key = tuple(tail[-n:]) if len(tail) >= n else tuple(toks[len(tail) - n :]) + tuple(tail)
        if len(key) < n:
            return []
        j = self._after.get(key)
        if j is None:
            return []
        out = toks[j : j + m]
        if len(out) < m:  # the occurrence runs into the tail itself (a repetition in progress)
            out += list(tail[: m - len(out)])
        return out

    def copy(self) -> TokenLookup:
        c = TokenLookup(self.n, self.cap)
        c.tokens, c._after = list(self.tokens), dict(self._after)
        return c


__all__ = ["HISTORY_CAP", "LOOKUP_N", "TokenLookup"]
