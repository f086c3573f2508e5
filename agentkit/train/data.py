"""Episodes -> token ids with a loss mask -> packed training rows.

Each segment of an episode is tokenized on its own. Every segment boundary sits next to an added token
(`<think>` before a generated turn, EOS after it, `<｜User｜>` opening a tool-result turn), so this gives
the same ids as tokenizing the whole text, and it is also literally what inference does: the prompt
and each generated turn are separate token runs.

Rows always start an episode at position 0 (as inference does) and hold whole episodes only, so the
compressed-attention block boundaries a model sees in training are the ones it sees when serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from agentkit.train.episodes import Episode

IGNORE = -100


@dataclass(frozen=True)
class Example:
    ids: list[int]
    loss: list[bool]
    """loss[i]: token i is assistant-generated and trained on."""


def tokenize_episode(encode: Callable[[str], list[int]], episode: Episode) -> Example:
    ids: list[int] = []
    mask: list[bool] = []
    for seg in episode.segments:
        part = encode(seg.text)
        ids.extend(part)
        mask.extend([seg.loss] * len(part))
    return Example(ids, mask)


@dataclass
class Packed:
    inputs: torch.Tensor
    """[N, L] token ids (padding with `pad_id`)."""
    labels: torch.Tensor
    """[N, L] next token at each position, IGNORE where that token is not trained (context, padding)."""

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def trained_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def pack(examples: Iterable[Example], seq_len: int, pad_id: int) -> Packed:
    """Greedy first-fit packing of whole examples into rows of `seq_len`; longer examples are refused."""
    rows: list[list[int]] = []
    masks: list[list[bool]] = []
    for ex in examples:
        n = len(ex.ids)
        if n > seq_len:
            raise ValueError(f"an episode of {n} tokens does not fit rows of {seq_len}; raise seq_len")
        if not rows or len(rows[-1]) + n > seq_len:
            rows.append([])
            masks.append([])
        rows[-1].extend(ex.ids)
        masks[-1].extend(ex.loss)
    inputs = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), IGNORE, dtype=torch.long)
    for r, (ids, m) in enumerate(zip(rows, masks, strict=True)):
        t = torch.tensor(ids, dtype=torch.long)
        inputs[r, : len(ids)] = t
        keep = torch.tensor(m[1:], dtype=torch.bool)
        nxt = t[1:].clone()
        nxt[~keep] = IGNORE
        labels[r, : len(ids) - 1] = nxt
    return Packed(inputs, labels)


def example_lengths(examples: Sequence[Example]) -> dict[str, float]:
    n = [len(e.ids) for e in examples]
    trained = [sum(e.loss) for e in examples]
    if not n:
        return {"episodes": 0}
    return {
        "episodes": len(n),
        "tokens_mean": sum(n) / len(n),
        "tokens_max": max(n),
        "trained_mean": sum(trained) / len(n),
    }
