"""Test helper: an embedded-backend logits processor that makes any model write given turns exactly."""

from __future__ import annotations

from typing import Any

import torch

from agentkit.dsml.tokens import EOS, USER
from agentkit.train.episodes import Episode


def reference_turns(encode: Any, episodes: list[Episode]) -> list[list[int]]:
    """Every assistant turn of the episodes, in order (an error episode's untrained mistake included)."""
    return [
        encode(s.text) for e in episodes for s in e.segments if s.text.endswith(EOS) and USER not in s.text
    ]


def forcer(turns: list[list[int]]) -> Any:
    """Each generation (a fresh one starts with no generated ids) writes the next turn, token by token."""
    state = {"turn": -1}

    def force(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        if not generated:
            state["turn"] += 1
        ref = turns[state["turn"]]
        out = torch.full_like(logits, float("-inf"))
        out[..., ref[len(generated)]] = 0.0
        return out

    return force
