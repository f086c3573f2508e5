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

    A full sort per query costs O(entries log entries) and dominated long-context prefill. Here one
    `torch.topk` runs over a key that holds the whole order: each score's fp32 bits made monotonic as an
    integer (negatives' magnitude bits flipped, -0.0 taken as +0.0 as the sort compares them) in the high 32
    bits, the complement of its index in the low 32, so equal scores rank by lower index (the stable sort's
    tie rule: ReLU makes exact ties common) and the k largest keys come out in the sort's order. It replaced
    a float top-k, a tie count by cumulative sum and a second top-k (at 1M tokens of context the int64
    cumulative sum alone was 11% of an extend's GPU time). Equal to the sort's result for every score,
    -inf included. On CUDA, rows of up to `indexer.TOPK_MAX` scores go through one sorting kernel instead
    (`indexer.topk_stable`) when there are few rows or short ones."""
    small = scores.dim() == 2 and stable_topk_kernel_rows(scores.shape[0], scores.shape[-1])
    if small and scores.dtype == torch.float32 and indexer_kernel.supported(scores) and kernels_enabled():
        return indexer_kernel.topk_stable(scores, k)
    return torch.topk(order_key(scores), k, dim=-1).indices


def stable_topk_kernel_rows(rows: int, n: int) -> bool:
    """Whether `rows` rows of n scores go through the sorting kernel on CUDA. It holds a row in one program
    (one sort per row): right for decode's few rows; a long prefill's hundreds of rows of thousands of
    scores per call are torch.topk's job."""
    return (n <= 1024 or rows <= 64) and n <= indexer_kernel.TOPK_MAX


def order_key(scores: torch.Tensor) -> torch.Tensor:
    """int64 keys whose descending order is the stable descending sort of the fp32 `scores` (see
    `stable_topk`); NaN is not expected (scores are sums of ReLUs times weights, or -inf)."""
    bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0: -0.0 becomes +0.0
    mono = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    index = torch.arange(scores.shape[-1], device=scores.device, dtype=torch.int64)
    return (mono << 32) | (0xFFFFFFFF - index)


__all__ = ["order_key", "stable_topk", "stable_topk_kernel_rows"]
