"""RMS normalizations: weighted (the checkpoint's `*_norm` tensors) and weight-less (q heads, mHC)."""

from __future__ import annotations

import torch
from agentkit.runtime.kernels import enabled as kernels_enabled
from agentkit.runtime.kernels import pointwise
from torch import nn


def rms_unweighted(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, computed in fp32, returned in x.dtype."""
    if pointwise.supported(x) and kernels_enabled():
        return pointwise.rms_norm(x, None, eps, x.dtype)
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """Weighted RMSNorm; fp32 math whatever the weight's storage dtype (bf16 in the real checkpoint)."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        if pointwise.supported(x) and kernels_enabled():
            return pointwise.rms_norm(x, self.weight, self.eps, out_dtype or x.dtype)
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(out_dtype or x.dtype)
