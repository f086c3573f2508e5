"""Mixture of experts (spec §7): sqrt(softplus) gate, selection-only bias, hash routing, clamped SwiGLU.

`MoE.forward` on CUDA runs the routed experts through the fused grouped kernel (runtime/kernels/moe.py), which
reads every expert's weight from one stacked tensor per projection; elsewhere (and with AGENTKIT_KERNELS=0)
it runs the per-expert loop below, the reference. The experts' own `Linear` weights are views into those
stacked tensors, so the checkpoint names and `load_weights` stay as they are and nothing is stored twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.kernels import enabled as kernels_enabled
from agentkit.runtime.kernels import moe as moe_kernel
from agentkit.runtime.kernels import pointwise
from agentkit.runtime.layers.lowp import Linear, StorageFormat, matmul_t_fp32
from agentkit.runtime.parallel import Parallel
from torch import nn


class Expert(nn.Module):
    """SwiGLU with the V4 clamp: gate clamped above at L, up clamped to [-L, L]."""

    def __init__(self, dim: int, inter: int, fmt: StorageFormat, dtype: torch.dtype, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.w1 = Linear(dim, inter, fmt, dtype)
        self.w2 = Linear(inter, dim, fmt, dtype)
        self.w3 = Linear(dim, inter, fmt, dtype)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None and pointwise.supported(x) and kernels_enabled():  # the shared expert: one launch
            return self.w2(pointwise.swiglu(self.w1(x), self.w3(x), self.limit, x.dtype))
        a = self.w1(x).float().clamp(max=self.limit)
        b = self.w3(x).float().clamp(-self.limit, self.limit)
        h = F.silu(a) * b
        if weight is not None:
            h = h * weight.unsqueeze(
                -1
            )  # routing weight before the down projection, in fp32 (reference order)
        return self.w2(h.to(x.dtype))


class Gate(nn.Module):
    """Router. `bias` (non-hash layers) shifts selection only; `tid2eid` (hash layers) fixes it per token."""

    def __init__(self, config: ModelConfig, hash_layer: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.topk = config.n_activated_experts
        self.route_scale = config.route_scale
        self.hash_layer = hash_layer
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.dim, dtype=dtype))
        self.bias: torch.Tensor | None
        self.tid2eid: torch.Tensor | None
        if hash_layer:
            self.register_buffer("tid2eid", torch.zeros(config.vocab_size, self.topk, dtype=torch.int64))
            self.bias = None
        else:
            self.bias = nn.Parameter(
                torch.zeros(config.n_routed_experts, dtype=torch.float32), requires_grad=False
            )
            self.tid2eid = None

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor, blocks: bool = False) -> tuple[Any, ...]:
        """-> (weights [T, k] fp32, expert indices [T, k]); with `blocks` a third item, `route`'s block
        tables (or None). Callers go through the module call so that forward hooks see every routing (the
        trainer's load balancer counts the selections from them)."""
        w, idx, tabs = self.route(x, token_ids, blocks)
        return (w, idx, tabs) if blocks else (w, idx)

    def route(
        self, x: torch.Tensor, token_ids: torch.Tensor, blocks: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """`forward`, plus on CUDA with `blocks` and one token the fused MoE's block tables. On CUDA the
        steps after the product are one kernel (`kernels/moe.route`: ~10 launches fewer per layer and
        decode step); elsewhere the torch ops below, the reference."""
        if moe_kernel.supported(x) and kernels_enabled():
            raw = matmul_t_fp32(x, self.weight).reshape(-1, self.weight.shape[0])
            return moe_kernel.route(
                raw, self.topk, self.route_scale, self.bias, self.tid2eid,
                token_ids.reshape(-1) if self.tid2eid is not None else None, blocks,
            )  # fmt: skip
        w, idx = self._reference(x, token_ids)
        return w, idx, None

    def _reference(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.sqrt(F.softplus(matmul_t_fp32(x, self.weight)))
        if self.tid2eid is not None:
            idx = self.tid2eid[token_ids].long()
        else:
            assert self.bias is not None
            idx = torch.topk(scores.detach() + self.bias.float(), self.topk, dim=-1).indices
        w = scores.gather(1, idx)
        return w / w.sum(dim=-1, keepdim=True) * self.route_scale, idx


class ExpertShard(nn.Module):
    """The routed experts one rank holds under expert parallelism, registered under their global index
    (so parameter names stay the checkpoint's `experts.{e}.w1.weight`) and indexed by it."""

    def __init__(self, experts: dict[int, Expert]) -> None:
        super().__init__()
        for e, m in experts.items():
            self.add_module(str(e), m)

    def __getitem__(self, e: int) -> nn.Module:
        m = self._modules.get(str(e))
        if m is None:
            raise IndexError(f"expert {e} is held by another rank")
        return m

    def __iter__(self) -> Iterator[nn.Module]:
        return (m for m in self._modules.values() if m is not None)

    def __len__(self) -> int:
        return len(self._modules)


class MoE(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        layer: int,
        fmt: StorageFormat,
        expert_fmt: StorageFormat,
        dtype: torch.dtype,
        gate_dtype: torch.dtype,
        parallel: Parallel | None = None,
    ) -> None:
        super().__init__()
        self.n_experts = config.n_routed_experts
        self.parallel = parallel
        self.gate = Gate(config, config.is_hash_layer(layer), gate_dtype)
        lim = config.swiglu_limit

        def expert() -> Expert:
            return Expert(config.dim, config.moe_inter_dim, expert_fmt, dtype, lim)

        # expert parallel (runtime/parallel.py): this rank's contiguous range of experts
        self.local_experts = range(self.n_experts)
        self.experts: nn.ModuleList | ExpertShard
        if parallel is None:
            self.experts = nn.ModuleList(expert() for _ in range(self.n_experts))
        else:
            self.local_experts = range(*parallel.part(self.n_experts, "n_routed_experts"))
            self.experts = ExpertShard({e: expert() for e in self.local_experts})
        self.shared_experts = Expert(config.dim, config.moe_inter_dim, fmt, dtype, lim)
        self._stack: dict[str, torch.Tensor] = {}
        self._stack_key: tuple[int, ...] = ()

    def stacked(self) -> dict[str, torch.Tensor]:
        """{w1, w3, w2 (+ s1, s3, s2 for quantized experts)}: [E, ...] tensors of all routed experts.

        The first call gathers the experts' weights into one tensor per name and makes each expert's own
        weight a view into it (freeing the separate copies); later calls return the same tensors as long as
        the experts still point into them (a device move re-stacks)."""
        lin: list[tuple[Linear, Linear, Linear]] = [
            (e.w1, e.w3, e.w2) for e in self.experts if isinstance(e, Expert)
        ]
        key = tuple(m.weight.data_ptr() for m in (lin[0][0], lin[-1][0], lin[0][2], lin[-1][2]))
        if key == self._stack_key and self._stack:
            return self._stack
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad(), torch.inference_mode(False):
            for j, name in enumerate(("1", "3", "2")):
                mods = [row[j] for row in lin]
                fields = ["weight"] + (["scale"] if mods[0].fmt != "float" else [])
                for field in fields:
                    parts = [getattr(m, field).detach() for m in mods]
                    byte = parts[0].element_size() == 1
                    big = torch.stack([p.view(torch.uint8) if byte else p for p in parts])
                    big = big.view(parts[0].dtype) if byte else big
                    for m, view in zip(mods, big.unbind(0), strict=True):
                        cur = getattr(m, field)
                        if isinstance(cur, nn.Parameter):
                            cur.data = view
                        else:
                            setattr(m, field, view)
                    out[("w" if field == "weight" else "s") + name] = big
        self._stack = out
        self._stack_key = tuple(m.weight.data_ptr() for m in (lin[0][0], lin[-1][0], lin[0][2], lin[-1][2]))
        return out

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        fused = moe_kernel.supported(x) and kernels_enabled() and x.dtype in (torch.float32, torch.bfloat16)
        blocks = None
        if fused and self.parallel is None:
            weights, idx, blocks = self.gate(x, token_ids, blocks=True)
        else:
            weights, idx = self.gate(x, token_ids)
        if fused:
            routed = self.fused(x, weights, idx, blocks)
            if self.parallel is not None:
                routed = self.parallel.all_reduce(routed)
            return (routed + self.shared_experts(x).float()).to(x.dtype)
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        # Group (token, slot) pairs by expert with one device->host copy (a decode step has only T*k pairs).
        flat = idx.flatten()
        order = torch.argsort(flat, stable=True)
        experts, counts = torch.unique_consecutive(flat[order], return_counts=True)
        k = idx.shape[1]
        start = 0
        for e, c in torch.stack((experts, counts)).t().tolist():
            pairs = order[start : start + c]
            start += c
            if e not in self.local_experts:  # another rank's expert (expert parallel)
                continue
            tok = pairs // k
            y = self.experts[e](x[tok], weights.flatten()[pairs])
            out = out.index_add(0, tok, y.float())
        if self.parallel is not None:  # each rank summed its experts' terms: combine them
            out = self.parallel.all_reduce(out)
        out = out + self.shared_experts(x).float()
        return out.to(x.dtype)

    def fused(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        idx: torch.Tensor,
        blocks: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        """The routed experts' weighted sum [T, D] fp32 through the fused kernel (no host sync); under
        expert parallelism, this rank's experts' part of it."""
        st = self.stacked()
        first = next(iter(self.experts))
        assert isinstance(first, Expert)
        scales = (st["s1"], st["s3"], st["s2"]) if "s1" in st else None
        partial = self.parallel is not None
        if partial:
            # Expert parallel: the stacked weights are this rank's experts only; other ranks' (token, slot)
            # pairs get the index one past them, which the kernel skips (an exact zero term)
            lo, hi = self.local_experts.start, self.local_experts.stop
            idx = torch.where((idx >= lo) & (idx < hi), idx - lo, hi - lo)
        return moe_kernel.fused_moe(
            x, weights, idx, (st["w1"], st["w3"], st["w2"]), scales, first.w1.fmt,
            act_quant=first.w1.act_quant, limit=first.limit, partial=partial, blocks=blocks,
        )  # fmt: skip
