"""KV compressor (spec §4.5): per-channel softmax pooling of r tokens (HCA) or 2r overlapping ones (CSA).

Written for an arbitrary chunk at an arbitrary position: the chunk's projections are appended to the restored
tail state (the partial block, and for CSA the last complete block), every block that completes is pooled, and
the new tail is returned. Prefill (empty tail, P = 0), decode (one token) and agent-turn extension
are the same code, which is what makes them agree.
"""

from __future__ import annotations

import torch
from agentkit.runtime.layers.lowp import Linear
from agentkit.runtime.layers.norms import RMSNorm
from torch import nn


class Compressor(nn.Module):
    def __init__(
        self, dim: int, width: int, ratio: int, eps: float, dtype: torch.dtype, norm_dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.ratio, self.width = ratio, width
        self.c = 2 if ratio == 4 else 1
        self.wkv = Linear(dim, self.c * width, "float", dtype)
        self.wgate = Linear(dim, self.c * width, "float", dtype)
        self.ape = nn.Parameter(torch.zeros(ratio, self.c * width, dtype=torch.float32))
        self.norm = RMSNorm(width, eps, norm_dtype)

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, Z + ape[pos mod r]) in fp32 for tokens x [T, D] at absolute positions [T]."""
        kv = self.wkv.fp32(x)
        score = self.wgate.fp32(x) + self.ape[positions % self.ratio]
        return kv, score

    def pool(
        self, tail_kv: torch.Tensor, tail_score: torch.Tensor, kv: torch.Tensor, score: torch.Tensor, pos: int
    ) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
        """Feed one sequence's chunk (kv/score [n, c*width], first token at `pos`) after its tail state.

        Returns (pooled entries [nb, width] fp32, index of the first one, new tail kv, new tail score).
        Tail layout is the reference's: HCA rows [0, rem) = partial block; CSA rows 0-3 = last complete block,
        rows 4.. = partial block. Unused rows are reset to 0 / -inf so equal states have equal bytes.
        """
        r, c, w = self.ratio, self.c, self.width
        rem0 = pos % r
        off = r if c == 2 else 0
        rows_kv = torch.cat((tail_kv[off : off + rem0], kv), 0)
        rows_sc = torch.cat((tail_score[off : off + rem0], score), 0)
        m = rows_kv.shape[0]
        nb, left = divmod(m, r)
        first = (pos - rem0) // r
        if nb:
            bkv = rows_kv[: nb * r].view(nb, r, c * w)
            bsc = rows_sc[: nb * r].view(nb, r, c * w)
            if c == 2:
                prev_kv = torch.cat((tail_kv[None, :r], bkv[:-1]), 0)
                prev_sc = torch.cat((tail_score[None, :r], bsc[:-1]), 0)
                kv8 = torch.cat((prev_kv[..., :w], bkv[..., w:]), 1)
                sc8 = torch.cat((prev_sc[..., :w], bsc[..., w:]), 1)
            else:
                kv8, sc8 = bkv, bsc
            pooled = (torch.softmax(sc8, dim=1) * kv8).sum(dim=1)
        else:
            pooled = kv.new_zeros(0, w)
        new_kv = torch.zeros_like(tail_kv)
        new_sc = torch.full_like(tail_score, float("-inf"))
        if c == 2:
            if nb:
                new_kv[:r] = bkv[-1].detach()
                new_sc[:r] = bsc[-1].detach()
            else:
                new_kv[:r] = tail_kv[:r]
                new_sc[:r] = tail_score[:r]
        new_kv[off : off + left] = rows_kv[nb * r :].detach()
        new_sc[off : off + left] = rows_sc[nb * r :].detach()
        return pooled, first, new_kv, new_sc
