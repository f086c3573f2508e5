"""Prompt lookup (runtime/lookup.py): the index proposes what followed the latest earlier occurrence of the
current n-gram, checked against a brute-force search on random sequences, across its history cap."""

from __future__ import annotations

import random

import pytest
from agentkit.runtime.lookup import TokenLookup


def brute(seq: list[int], tail: list[int], n: int, m: int) -> list[int]:
    """The continuation of the latest occurrence, inside `seq`, of the last n tokens of seq + tail."""
    full = seq + tail
    key = full[-n:]
    if len(key) < n:
        return []
    for end in range(len(seq), n - 1, -1):  # n-grams wholly inside seq, latest first
        if seq[end - n : end] == key:
            return full[end : end + m]
    return []


@pytest.mark.parametrize("n", [1, 2, 3])
def test_proposals_equal_a_brute_force_search(n: int) -> None:
    rng = random.Random(n)
    for _ in range(300):
        vocab = rng.choice([3, 6, 20])
        seq = [rng.randrange(vocab) for _ in range(rng.randrange(0, 60))]
        lk = TokenLookup(n=n)
        cut = rng.randrange(0, len(seq) + 1)  # extended in two pieces, as a prompt then a verify would
        lk.extend(seq[:cut])
        lk.extend(seq[cut:])
        tail = [rng.randrange(vocab) for _ in range(rng.randrange(0, 4))]
        m = rng.randrange(0, 7)
        want = brute(seq, tail, n, m) if m else []
        assert lk.propose(tail, m) == want, (seq, tail, n, m)


def test_the_history_cap_keeps_the_recent_half() -> None:
    rng = random.Random(7)
    lk = TokenLookup(n=2, cap=64)
    seq: list[int] = []
    for _ in range(50):
        chunk = [rng.randrange(5) for _ in range(rng.randrange(1, 9))]
        lk.extend(chunk)
        seq += chunk
        assert len(lk.tokens) <= 64 and seq[-len(lk.tokens) :] == lk.tokens
        tail = [rng.randrange(5)]
        assert lk.propose(tail, 4) == brute(lk.tokens, tail, 2, 4)
    assert len(seq) > 64  # the cap was passed and the index rebuilt


def test_copies_are_independent_and_bad_settings_are_refused() -> None:
    a = TokenLookup()
    a.extend([1, 2, 3, 1, 2])
    b = a.copy()
    b.extend([9, 9])
    assert a.tokens == [1, 2, 3, 1, 2] and a.propose([1, 2], 2) == [1, 2] and a.propose([3], 2) == [1, 2]
    assert b.propose([1, 2], 2) == [9, 9]
    with pytest.raises(ValueError):
        TokenLookup(n=0)
    with pytest.raises(ValueError):
        TokenLookup(n=4, cap=6)
