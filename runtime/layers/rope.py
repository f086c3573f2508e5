"""Interleaved (GPT-J style) rotary embedding on the trailing dims of a vector, with V4's YaRN (spec §3).

Angles are computed on the fly from absolute positions rather than from a precomputed table, so a sequence can
be extended to any position without re-allocating tables (the reference's 4096-row default is a demo limit).
"""

from __future__ import annotations

import math

import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.kernels import enabled as kernels_enabled
from agentkit.runtime.kernels import pointwise


def rope_frequencies(config: ModelConfig, compressed_layer: bool) -> torch.Tensor:
    """Per-pair frequencies f_i (fp32, rope_head_dim/2): plain on window-only layers, YaRN otherwise."""
    rd = config.rope_head_dim
    theta = config.compress_rope_theta if compressed_layer else config.rope_theta
    freqs = 1.0 / (theta ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
    if compressed_layer and config.original_seq_len > 0:

        def corr(n_rot: float) -> float:
            return rd * math.log(config.original_seq_len / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(corr(config.beta_fast)), 0)
        high: float = min(math.ceil(corr(config.beta_slow)), rd - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(rd // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        freqs = freqs / config.rope_factor * ramp + freqs * (1 - ramp)
    return freqs.to(torch.float32)


def apply_rope(
    x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """Rotate pairs (2i, 2i+1) of the last 2*len(freqs) dims of x by +-position*f_i.

    x: [T, ..., dim]; positions: [T] (int). Leading dims are untouched. Math in fp32, result in x.dtype.
    """
    if (
        pointwise.supported(x)
        and kernels_enabled()
        and freqs.device == x.device
        and positions.device == x.device
    ):
        return pointwise.rope(x, positions, freqs, inverse)
    rd = 2 * freqs.shape[0]
    ang = positions.to(torch.float32)[:, None] * freqs.to(x.device)[None, :]  # [T, rd/2]
    cos, sin = ang.cos(), ang.sin()
    if inverse:
        sin = -sin
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (rd // 2,)
    cos, sin = cos.view(shape), sin.view(shape)
    nope, rot = x[..., :-rd], x[..., -rd:].float()
    a, b = rot[..., 0::2], rot[..., 1::2]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return torch.cat((nope, out.to(x.dtype)), dim=-1)
