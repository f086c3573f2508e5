"""Attention's score GEMMs: queries against keys in one product, fp32 results.

Apart from `attention` because the choice of GEMM (tensor cores with fp32 output, or fp32 operands) is a
numerics decision of its own, made once here for the prefill path and the indexer's torch fallback.
"""

from __future__ import annotations

import functools

import torch
from agentkit.runtime.kernels import enabled as kernels_enabled


def qk_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """q [b, h, d] x keys [m, d] -> [b, h, m] as one GEMM."""
    return (q.reshape(-1, q.shape[-1]) @ keys.t()).view(q.shape[0], q.shape[1], -1)


def qk_scores_f32(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """`qk_scores` in fp32 of q [b, h, d] and keys [m, d] as stored, or batched: keys [b, m, d].

    Why: bf16 operands multiply exactly in fp32, so on CUDA the tensor cores' bf16 products summed in fp32
    (`out_dtype`) are the fp32 GEMM of the upcast operands up to summation order, at tensor-core speed: the
    fp32 GEMMs were a fifth of a 4K prefill's GPU time. Elsewhere (CPU, fp32 models, `AGENTKIT_KERNELS=0`
    for A/B runs) the operands are upcast as before."""
    if keys.dim() == 3:
        if _tensor_core_f32(q, keys):
            return torch.bmm(q, keys.transpose(1, 2), out_dtype=torch.float32)
        return torch.bmm(q.float(), keys.float().transpose(1, 2))
    if _tensor_core_f32(q, keys):
        q2 = q.reshape(-1, q.shape[-1])
        return torch.mm(q2, keys.t(), out_dtype=torch.float32).view(q.shape[0], q.shape[1], -1)
    return qk_scores(q.float(), keys.float())


def _tensor_core_f32(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.is_cuda and a.dtype == b.dtype == torch.bfloat16 and kernels_enabled() and _has_out_dtype(a.device)
    )


@functools.cache
def _has_out_dtype(device: torch.device) -> bool:
    """Whether this torch offers bf16 GEMMs with fp32 results (`mm` / `bmm(..., out_dtype=)`, CUDA only)."""
    try:
        x = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
        y = torch.bmm(x[None], x[None], out_dtype=torch.float32)
        return torch.mm(x, x, out_dtype=torch.float32).dtype == y.dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False
