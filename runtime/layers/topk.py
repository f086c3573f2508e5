"""Top-k selection with the reference's tie rule: the indexer's choice of compressed entries (spec §4.6).

The reference sorts every query's scores (`torch.sort(..., stable=True)`) and keeps the first k: among
equal scores the lower index wins, and ReLU makes exact ties common. This is that selection without the
full sort on long rows, and on CUDA one sorting kernel for rows that fit a program's registers.
"""

from __future__ import annotations

import torch
from agentkit.runtime.kernels import enabled as kernels_enabled
from agentkit.runtime.kernels import indexer as indexer_kernel


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The first k columns of `torch.sort(scores, descending=True, stable=True).indices`, without the sort.

    A full sort per query costs O(entries log entries) and dominated long-context prefill; this takes the
    k-th score with torch.topk, keeps every entry above it plus the lowest-index entries tied with it (the
    stable sort's tie rule: ReLU makes exact ties common), and orders only those k by (score descending,
    index ascending). Equal to the sort's result wherever the score is finite; among -inf entries (the
    invisible ones, which attention masks out) the choice is arbitrary. On CUDA, rows of up to
    `indexer.TOPK_MAX` scores go through one sorting kernel instead (`indexer.topk_stable`) when there are
    few rows or short ones."""
    n = scores.shape[-1]
    # the sorting kernel holds a row in one program (one sort per row): right for decode's few rows; a long
    # prefill's hundreds of rows of thousands of scores per call are torch.topk's job
    few = scores.dim() == 2 and (n <= 1024 or scores.shape[0] <= 64)
    small = few and n <= indexer_kernel.TOPK_MAX and scores.dtype == torch.float32
    if small and indexer_kernel.supported(scores) and kernels_enabled():
        return indexer_kernel.topk_stable(scores, k)
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    above, tied = scores > kth, scores == kth
    room = k - above.sum(-1, keepdim=True)
    chosen = above | (tied & (torch.cumsum(tied, -1) <= room))
    sel = torch.topk(scores.masked_fill(~chosen, float("-inf")), k, dim=-1).indices.sort(-1).values
    order = torch.sort(scores.gather(-1, sel), dim=-1, descending=True, stable=True).indices
    return sel.gather(-1, order)


__all__ = ["stable_topk"]
