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

import numpy as np
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
    exs = list(examples)
    lengths = np.array([len(x.ids) for x in exs], dtype=np.int64)
    ids = np.fromiter((t for x in exs for t in x.ids), dtype=np.int64, count=int(lengths.sum()))
    mask = np.fromiter((m for x in exs for m in x.loss), dtype=np.bool_, count=int(lengths.sum()))
    return pack_flat(ids, mask, lengths, seq_len, pad_id)


def pack_flat(ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray, seq_len: int, pad_id: int) -> Packed:
    """`pack` over examples stored back to back (`ids`/`mask` concatenated, `lengths` per example)."""
    if len(lengths) and int(lengths.max()) > seq_len:
        raise ValueError(
            f"an episode of {int(lengths.max())} tokens does not fit rows of {seq_len}; raise seq_len"
        )
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else np.zeros(0, dtype=np.int64)
    row_of = np.zeros(len(lengths), dtype=np.int64)
    col_of = np.zeros(len(lengths), dtype=np.int64)
    row, fill = -1, seq_len
    for i, n in enumerate(lengths.tolist()):
        if fill + n > seq_len:
            row, fill = row + 1, 0
        row_of[i], col_of[i] = row, fill
        fill += n
    n_rows = row + 1
    inputs = np.full((n_rows, seq_len), pad_id, dtype=np.int64)
    trained = np.zeros((n_rows, seq_len), dtype=np.bool_)
    for i, n in enumerate(lengths.tolist()):
        r, c, a = row_of[i], col_of[i], starts[i]
        inputs[r, c : c + n] = ids[a : a + n]
        trained[r, c : c + n] = mask[a : a + n]
    labels = np.full((n_rows, seq_len), IGNORE, dtype=np.int64)
    nxt = inputs[:, 1:]
    labels[:, :-1] = np.where(trained[:, 1:], nxt, IGNORE)
    return Packed(torch.from_numpy(inputs), torch.from_numpy(labels))


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


def copy_rows(
    n_rows: int, seq_len: int, token_range: tuple[int, int], seed: int, span: tuple[int, int] = (4, 48)
) -> Packed:
    """Synthetic induction rows: random token spans, each followed by an exact repeat; loss on the repeat.

    Why: copying names and numbers out of the context is what the agent episodes need most and what a
    small model learns last (agentkit-tiny sat at 73% token accuracy with every value wrong for 1,000
    steps). On pure copy rows induction heads form within a few hundred steps, and they transfer. The
    first token of a repeat is unpredictable, so the loss starts at its second token.
    """
    lo, hi = token_range
    if not 0 <= lo < hi:
        raise ValueError(f"bad token range {token_range}")
    g = np.random.default_rng(seed)
    inputs = np.zeros((n_rows, seq_len), dtype=np.int64)
    trained = np.zeros((n_rows, seq_len), dtype=np.bool_)
    for r in range(n_rows):
        pos = 0
        while pos < seq_len:
            n = int(g.integers(span[0], span[1] + 1))
            s = g.integers(lo, hi, size=n)
            block = np.concatenate([s, s])
            mask = np.zeros(2 * n, dtype=np.bool_)
            mask[n + 1 :] = True
            take = min(2 * n, seq_len - pos)
            inputs[r, pos : pos + take] = block[:take]
            trained[r, pos : pos + take] = mask[:take]
            pos += take
    labels = np.full((n_rows, seq_len), IGNORE, dtype=np.int64)
    labels[:, :-1] = np.where(trained[:, 1:], inputs[:, 1:], IGNORE)
    return Packed(torch.from_numpy(inputs), torch.from_numpy(labels))


def concat(*parts: Packed) -> Packed:
    return Packed(torch.cat([p.inputs for p in parts]), torch.cat([p.labels for p in parts]))
