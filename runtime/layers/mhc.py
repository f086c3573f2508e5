"""Manifold-constrained hyper-connections (spec §6): stream mixer with Sinkhorn, head collapse."""

from __future__ import annotations

import torch
from agentkit.runtime.kernels import enabled as kernels_enabled
from agentkit.runtime.kernels import mhc as kernels
from agentkit.runtime.kernels import pointwise
from agentkit.runtime.layers.norms import rms_unweighted


def split_sinkhorn(
    m: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, hc: int, iters: int, hc_eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference: mixes m [T, (2+n)*n] -> pre [T, n], post [T, n], doubly-stochastic comb [T, n, n] (fp32)."""
    t = m.shape[0]
    base = base.float()
    pre = torch.sigmoid(m[:, :hc] * scale[0] + base[:hc]) + hc_eps
    post = 2 * torch.sigmoid(m[:, hc : 2 * hc] * scale[1] + base[hc : 2 * hc])
    comb = (m[:, 2 * hc :] * scale[2] + base[2 * hc :]).view(t, hc, hc)
    comb = torch.softmax(comb, dim=-1) + hc_eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + hc_eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)
    return pre, post, comb


def hc_pre(
    x: torch.Tensor,
    fn: torch.Tensor,
    base: torch.Tensor,
    scale: torch.Tensor,
    *,
    sinkhorn_iters: int,
    hc_eps: float,
    norm_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Streams x [T, n, D] -> (sub-layer input [T, D], post [T, n], comb [T, n, n]); mixing in fp32."""
    t, n, d = x.shape
    fused = kernels.supported(x, n) and pointwise.supported(x) and kernels_enabled()  # norm + collapse
    if fused:  # the norm reads the bf16 streams and writes fp32: no fp32 copy of the streams first
        flat = pointwise.rms_norm(x.reshape(t, n * d), None, norm_eps, torch.float32)
    else:
        flat = rms_unweighted(x.reshape(t, n * d).float(), norm_eps)
    m = flat @ fn.float().t()  # [T, (2+n)*n]
    if kernels.supported(m, n):
        pre, post, comb = kernels.hc_split_sinkhorn(m, scale, base, n, sinkhorn_iters, hc_eps)
    else:
        pre, post, comb = split_sinkhorn(m, scale.float(), base, n, sinkhorn_iters, hc_eps)
    if fused:
        return kernels.hc_collapse(pre, x), post, comb
    collapsed = (pre.unsqueeze(-1) * x.float()).sum(dim=1).to(x.dtype)
    return collapsed, post, comb


def hc_post(y: torch.Tensor, x: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """X'_k = post_k * y + sum_j comb[j, k] X_j (sum over the first index), cast back to the stream dtype."""
    if kernels.supported(x, x.shape[1]) and kernels_enabled():
        return kernels.hc_expand(y, x, post, comb)
    mixed = torch.einsum("tjk,tjd->tkd", comb, x.float())
    return (post.unsqueeze(-1) * y.float().unsqueeze(1) + mixed).to(x.dtype)


def hc_head(
    x: torch.Tensor,
    fn: torch.Tensor,
    base: torch.Tensor,
    scale: torch.Tensor,
    *,
    hc_eps: float,
    norm_eps: float,
) -> torch.Tensor:
    """Final collapse of the streams before the output norm: sigmoid weights, no Sinkhorn, no post."""
    t, n, d = x.shape
    flat = rms_unweighted(x.reshape(t, n * d).float(), norm_eps)
    pre = torch.sigmoid((flat @ fn.float().t()) * scale.float() + base.float()) + hc_eps
    return (pre.unsqueeze(-1) * x.float()).sum(dim=1).to(x.dtype)
