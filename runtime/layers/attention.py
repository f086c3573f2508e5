"""V4 attention (spec §4): shared-KV MQA over a 128-token window + CSA (indexer top-k) or HCA entries.

Projections, norms and RoPE run on all tokens of a batch at once; the window/compressor/indexer logic runs per
sequence, because sequences of a batch sit at different positions and complete blocks at different tokens.
Queries are processed in blocks so that the window part costs O(n * (block + W)) instead of O(n^2).

`forward` is inference: it extends sequence states and returns the attention output, nothing else.
`forward_train` is the training forward's entry: the same function (batched over equal rows from position 0
via layers/batched.py, or per sequence), and it also returns the indexer's distillation terms when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.kernels import enabled as kernels_enabled
from agentkit.runtime.kernels import indexer as indexer_kernel
from agentkit.runtime.kernels import lowp_gemm, sparse_prefill
from agentkit.runtime.kernels import sparse_attn as sparse_kernel
from agentkit.runtime.layers.batched import BatchShape, IndexerKL, core_batched, pool_fresh, sequence_kl
from agentkit.runtime.layers.compressor import Compressor
from agentkit.runtime.layers.lowp import Linear, StorageFormat, fp4_roundtrip, fp8_kv_roundtrip, hadamard
from agentkit.runtime.layers.norms import RMSNorm, rms_unweighted
from agentkit.runtime.layers.rope import apply_rope, rope_frequencies
from agentkit.runtime.layers.scores import qk_scores, qk_scores_f32
from agentkit.runtime.layers.topk import stable_topk, stable_topk_kernel_rows
from agentkit.runtime.parallel import Parallel
from agentkit.runtime.state import LayerState
from torch import nn

QUERY_BLOCK = 256
#: Up to this many query rows per sequence (decode, short extends) go through the sparse-attention kernel
#: on CUDA; longer extends keep the blocked path. `AGENTKIT_KERNELS=0` turns the kernels off.
KERNEL_ROWS = 16
# elements of one [block, heads, candidates] fp32 score temporary: 64 MiB on CPU, 512 MiB on a GPU
SCORE_BUDGET = {"cpu": 1 << 24, "cuda": 1 << 27}


@dataclass
class SeqSlice:
    """Where one sequence's chunk sits in the flat token batch, and the state it extends."""

    start: int
    end: int
    pos: int
    state: LayerState


class _Projected(NamedTuple):
    """Per-token projections of one sub-layer input (the indexer's only in CSA layers)."""

    q: torch.Tensor  # [T, h, d] queries, RoPE applied
    k: torch.Tensor  # [T, d] the shared key/value, RoPE applied
    ckv: torch.Tensor | None  # compressor kv / score projections
    csc: torch.Tensor | None
    ikv: torch.Tensor | None  # indexer compressor kv / score projections
    isc: torch.Tensor | None
    iq: torch.Tensor | None  # indexer queries [T, hi, di] and head weights [T, hi]
    iw: torch.Tensor | None


def _entry_index(pooled: torch.Tensor, first: int | torch.Tensor) -> torch.Tensor:
    if isinstance(first, torch.Tensor):
        return first
    return torch.arange(pooled.shape[0], device=pooled.device) + first


def _with_new(entries: torch.Tensor, new: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """All entries so far (`LayerState.entries`); under autograd the new rows are the graph-connected ones,
    not the stored copy."""
    if new.requires_grad:
        return torch.cat((entries[: entries.shape[0] - new.shape[0]].to(dtype), new), 0)
    return entries.to(dtype)


class Indexer(nn.Module):
    """Lightning Indexer (spec §4.6): its own ratio-4 compressor at index_head_dim, scores, top-k."""

    def __init__(
        self,
        config: ModelConfig,
        fmt: StorageFormat,
        dtype: torch.dtype,
        norm_dtype: torch.dtype,
        parallel: Parallel | None = None,
    ) -> None:
        super().__init__()
        self.cfg = config
        # tensor parallel: this rank's heads only; the head-weight scale stays that of all heads
        n = config.index_n_heads if parallel is None else parallel.local(config.index_n_heads)
        self.n_heads, self.head_dim = n, config.index_head_dim
        self.weight_scale = self.head_dim**-0.5 * config.index_n_heads**-0.5
        self.wq_b = Linear(config.q_lora_rank, self.n_heads * self.head_dim, fmt, dtype)
        self.weights_proj = Linear(config.dim, self.n_heads, "float", dtype)
        self.compressor = Compressor(config.dim, self.head_dim, 4, config.norm_eps, dtype, norm_dtype)

    def rotate_quant(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.hadamard:
            x = hadamard(x)
        if self.cfg.sim_fp4_indexer:
            x = fp4_roundtrip(x)
        return x

    def queries(
        self, qr: torch.Tensor, x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.wq_b(qr).view(qr.shape[0], self.n_heads, self.head_dim)
        q = self.rotate_quant(apply_rope(q, positions, freqs))
        w = self.weights_proj(x).float() * self.weight_scale
        return q, w


class Attention(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        layer: int,
        fmt: StorageFormat,
        dtype: torch.dtype,
        norm_dtype: torch.dtype,
        parallel: Parallel | None = None,
    ) -> None:
        super().__init__()
        self.cfg = config
        self.parallel = parallel
        self.ratio = config.ratio(layer)
        # tensor parallel (runtime/parallel.py): this rank's heads and their whole output groups
        h, g = config.n_heads, config.o_groups
        if parallel is not None:
            h, g = parallel.local(h, "n_heads"), parallel.local(g, "o_groups")
        d = config.head_dim
        self.n_heads, self.head_dim, self.rope_dim = h, d, config.rope_head_dim
        self.window = config.window_size
        self.wq_a = Linear(config.dim, config.q_lora_rank, fmt, dtype)
        self.q_norm = RMSNorm(config.q_lora_rank, config.norm_eps, norm_dtype)
        self.wq_b = Linear(config.q_lora_rank, h * d, fmt, dtype)
        self.wkv = Linear(config.dim, d, fmt, dtype)
        self.kv_norm = RMSNorm(d, config.norm_eps, norm_dtype)
        self.o_groups, self.o_rank = g, config.o_lora_rank
        self.wo_a = Linear(h * d // g, g * config.o_lora_rank, fmt, dtype)
        self.wo_b = Linear(g * config.o_lora_rank, config.dim, fmt, dtype)
        self.attn_sink = nn.Parameter(torch.zeros(h, dtype=torch.float32))
        self.compressor: Compressor | None = None
        self.indexer: Indexer | None = None
        if self.ratio:
            self.compressor = Compressor(config.dim, d, self.ratio, config.norm_eps, dtype, norm_dtype)
        if self.ratio == 4:
            self.indexer = Indexer(config, fmt, dtype, norm_dtype, parallel)
        self.freqs: torch.Tensor
        self.register_buffer("freqs", rope_frequencies(config, self.ratio > 0), persistent=False)

    # --- per-entry post-processing of pooled compressor output (spec §4.5) ---
    def _main_entries(
        self, pooled: torch.Tensor, first: int | torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """Pooled rows -> compressed entries (norm, RoPE at the block's first position, FP8 simulation).
        `first`: the index of the first entry (consecutive ones follow), or a tensor of each row's index."""
        assert self.compressor is not None
        e = self.compressor.norm(pooled.to(dtype))
        e = apply_rope(e, _entry_index(pooled, first) * self.ratio, self.freqs)
        return fp8_kv_roundtrip(e, self.rope_dim) if self.cfg.sim_fp8_kv else e

    def _index_entries(
        self, pooled: torch.Tensor, first: int | torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        assert self.indexer is not None
        e = self.indexer.compressor.norm(pooled.to(dtype))
        return self.indexer.rotate_quant(apply_rope(e, _entry_index(pooled, first) * 4, self.freqs))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, seqs: list[SeqSlice]) -> torch.Tensor:
        """x [T, D]: normalized sub-layer input of all chunks; updates every sequence's LayerState."""
        out, _ = self._extend(self._project(x, positions), positions, seqs, indexer_loss=False)
        return out

    def forward_train(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        seqs: list[SeqSlice] | BatchShape,
        *,
        indexer_loss: bool,
    ) -> tuple[torch.Tensor, IndexerKL | None]:
        """Training: the output as `forward` computes it, and the indexer's distillation terms (sums over
        queries) when `indexer_loss` and this is a CSA layer. A `BatchShape` runs equal rows from position 0
        batched, without state (layers/batched.py); `SeqSlice`s run the per-sequence extend path."""
        p = self._project(x, positions)
        if isinstance(seqs, BatchShape):
            return self._forward_batched(seqs, positions, p, indexer_loss)
        return self._extend(p, positions, seqs, indexer_loss=indexer_loss)

    def _project(self, x: torch.Tensor, positions: torch.Tensor) -> _Projected:
        t = x.shape[0]
        h, d = self.n_heads, self.head_dim
        qr = self.q_norm(self.wq_a(x))
        q = rms_unweighted(self.wq_b(qr).view(t, h, d), self.cfg.norm_eps)
        q = apply_rope(q, positions, self.freqs)
        k = apply_rope(self.kv_norm(self.wkv(x)), positions, self.freqs)
        if self.cfg.sim_fp8_kv:
            k = fp8_kv_roundtrip(k, self.rope_dim)
        ckv = csc = ikv = isc = iq = iw = None
        if self.compressor is not None:
            ckv, csc = self.compressor.project(x, positions)
        if self.indexer is not None:
            # The indexer only acts through a discrete top-k, so nothing flows back through its inputs anyway;
            # detaching them makes its distillation loss train the indexer alone (as DeepSeek does).
            xi, qri = x.detach(), qr.detach()
            ikv, isc = self.indexer.compressor.project(xi, positions)
            iq, iw = self.indexer.queries(qri, xi, positions, self.freqs)
        return _Projected(q, k, ckv, csc, ikv, isc, iq, iw)

    def _extend(
        self, proj: _Projected, positions: torch.Tensor, seqs: list[SeqSlice], *, indexer_loss: bool
    ) -> tuple[torch.Tensor, IndexerKL | None]:
        """Per-sequence path: each chunk extends its state (window ring, compressed and indexer entries)."""
        q, k, ckv, csc, ikv, isc, iq, iw = proj
        kl: IndexerKL | None = None
        outs = []
        for s in seqs:
            a, b, p, ls = s.start, s.end, s.pos, s.state
            n = b - a
            w_old = min(p, self.window - 1)
            slots = torch.arange(p - w_old, p, device=k.device) % self.window
            keys_win = torch.cat((ls.window[slots].to(k.dtype), k[a:b]), 0)
            comp = idx_keys = None
            if self.compressor is not None:
                assert ckv is not None and csc is not None
                assert ls.comp is not None and ls.comp_tail_kv is not None and ls.comp_tail_score is not None
                pooled, first, ls_tail_kv, ls_tail_sc = self.compressor.pool(
                    ls.comp_tail_kv, ls.comp_tail_score, ckv[a:b], csc[a:b], p
                )
                new = self._main_entries(pooled, first, k.dtype)
                ls.append_entries("comp", p // self.ratio, new)
                comp = _with_new(ls.entries("comp", (p + n) // self.ratio), new, k.dtype)
            if self.indexer is not None:
                assert ikv is not None and isc is not None
                assert ls.idx is not None and ls.idx_tail_kv is not None and ls.idx_tail_score is not None
                ipooled, ifirst, li_tail_kv, li_tail_sc = self.indexer.compressor.pool(
                    ls.idx_tail_kv, ls.idx_tail_score, ikv[a:b], isc[a:b], p
                )
                inew = self._index_entries(ipooled, ifirst, k.dtype)
                ls.append_entries("idx", p // 4, inew)
                idx_keys = _with_new(ls.entries("idx", (p + n) // 4), inew, k.dtype)
            siq = None if iq is None else iq[a:b]
            siw = None if iw is None else iw[a:b]
            outs.append(self._core(q[a:b], keys_win, w_old, p, comp, idx_keys, siq, siw))
            if indexer_loss and comp is not None and idx_keys is not None:
                assert siq is not None and siw is not None
                budget = SCORE_BUDGET.get(q.device.type, 1 << 24)
                terms = sequence_kl(q[a:b], p, self.ratio, comp, siq, siw, idx_keys, budget, QUERY_BLOCK)
                kl = IndexerKL.add(kl, terms)
            # --- commit the new state (detached: a training graph never leaks into stored state) ---
            with torch.no_grad():
                keep = min(n, self.window)
                wslots = torch.arange(p + n - keep, p + n, device=k.device) % self.window
                ls.window[wslots] = k[b - keep : b].detach().to(ls.window.dtype)
                # in place: a preallocated state (a decoder slab row) keeps its addresses
                if comp is not None:
                    assert ls.comp_tail_kv is not None and ls.comp_tail_score is not None
                    ls.comp_tail_kv.copy_(ls_tail_kv)
                    ls.comp_tail_score.copy_(ls_tail_sc)
                if idx_keys is not None:
                    assert ls.idx_tail_kv is not None and ls.idx_tail_score is not None
                    ls.idx_tail_kv.copy_(li_tail_kv)
                    ls.idx_tail_score.copy_(li_tail_sc)
        o = torch.cat(outs, 0) if len(outs) > 1 else outs[0]
        return self._output(o, positions), kl

    def _grouped_kernel(self, o: torch.Tensor) -> bool:
        """wo_a stored quantized on CUDA: the grouped product runs in the low-precision GEMM kernel, whose
        bf16 products of the decoded weight with fp32 sums are the reference's bf16 bmm of the dequantized
        weight (spec §4.3: no activation rounding for wo_a) up to summation order."""
        wa = self.wo_a
        return (
            wa.fmt != "float"
            and wa._materialized is None
            and o.dtype == torch.bfloat16
            and lowp_gemm.supported(o)
            and kernels_enabled()
            and self.o_rank % 64 == 0
        )

    def _output(self, o: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Head outputs o [T, h, d] -> [T, D]: inverse RoPE at the query position, grouped low-rank wo."""
        t = o.shape[0]
        o = apply_rope(o, positions, self.freqs, inverse=True)
        g = self.o_groups
        if self._grouped_kernel(o):  # from the stored FP8 bytes: no per-call dequantized copy of wo_a
            wa_ = self.wo_a
            u = lowp_gemm.lowp_linear(o.reshape(t, -1), wa_.weight, wa_.scale, wa_.fmt, False, groups=g)
        else:
            wa = self.wo_a.dense(o.dtype).view(g, self.o_rank, -1)
            u = torch.bmm(o.reshape(t, g, -1).transpose(0, 1), wa.transpose(1, 2))
            u = u.transpose(0, 1).reshape(t, -1)
        if self.parallel is not None:  # row-parallel wo_b: this rank's groups give a partial sum
            return self.parallel.all_reduce(self.wo_b(u))
        return self.wo_b(u)

    def _forward_batched(
        self,
        shape: BatchShape,
        positions: torch.Tensor,
        proj: _Projected,
        indexer_loss: bool,
    ) -> tuple[torch.Tensor, IndexerKL | None]:
        q, k, ckv, csc, ikv, isc, iq, iw = proj
        b, s = shape.rows, shape.length
        comp = idx_keys = None
        if self.compressor is not None:
            assert ckv is not None and csc is not None
            pooled = pool_fresh(self.compressor, ckv.view(b, s, -1), csc.view(b, s, -1))
            # entries [nb, B, w]: the leading dim carries the entry position for RoPE
            comp = self._main_entries(pooled.transpose(0, 1), 0, k.dtype).transpose(0, 1)
        if self.indexer is not None:
            assert ikv is not None and isc is not None and iq is not None and iw is not None
            ipooled = pool_fresh(self.indexer.compressor, ikv.view(b, s, -1), isc.view(b, s, -1))
            idx_keys = self._index_entries(ipooled.transpose(0, 1), 0, k.dtype).transpose(0, 1)
            iq, iw = iq.view(b, s, *iq.shape[1:]), iw.view(b, s, -1)
        o, kl = core_batched(
            self,
            q.view(b, s, *q.shape[1:]),
            k.view(b, s, -1),
            comp,
            idx_keys,
            iq,
            iw,
            budget=SCORE_BUDGET.get(q.device.type, 1 << 24),
            indexer_loss=indexer_loss,
        )
        return self._output(o.reshape(b * s, *o.shape[2:]), positions), kl

    def _core(
        self,
        q: torch.Tensor,
        keys_win: torch.Tensor,
        w_old: int,
        pos: int,
        comp: torch.Tensor | None,
        idx_keys: torch.Tensor | None,
        iq: torch.Tensor | None,
        iw: torch.Tensor | None,
    ) -> torch.Tensor:
        """One sequence: queries at pos..pos+n-1 over window keys (+ visible/selected compressed entries).

        HCA entries are attended densely (masked by visibility). CSA entries are gathered per query (top-k
        indices from the indexer), so a long prefix costs O(k) per query rather than O(entries). Query blocks
        shrink as the number of candidates grows, bounding the [block, heads, candidates] temporaries.
        """
        n, h = q.shape[0], q.shape[1]
        if n <= KERNEL_ROWS and sparse_kernel.supported(q) and kernels_enabled():
            return self._core_kernel(q, keys_win, w_old, pos, comp, idx_keys, iq, iw)
        if sparse_prefill.supported(q) and kernels_enabled():
            order = None if idx_keys is None or comp is None else self._orders(iq, iw, idx_keys, pos, n)
            scale = 1.0 / math.sqrt(self.head_dim)
            ratio = self.ratio if comp is not None else 0
            return sparse_prefill.sparse_prefill(
                q, keys_win, w_old, pos, self.window, comp, order, ratio, self.attn_sink, scale
            )
        dev = q.device
        scale = 1.0 / math.sqrt(self.head_dim)
        sink = self.attn_sink.float().view(1, -1, 1)
        n_comp = 0 if comp is None else comp.shape[0]
        # the indexer kernel scores straight from the stored keys, without a [block, heads, entries] temporary
        ix_kernel = iq is not None and indexer_kernel.supported(iq) and kernels_enabled()
        budget = SCORE_BUDGET.get(dev.type, 1 << 24)
        block = max(1, min(QUERY_BLOCK, budget // max(1, self._temp_per_query(h, n_comp, iq, ix_kernel))))
        # cast once, not per query block (at 1M tokens of context the indexer keys alone are 64 MB)
        idx_f = None if idx_keys is None else idx_keys if ix_kernel else idx_keys.float()
        out = []
        for i0 in range(0, n, block):
            i1 = min(n, i0 + block)
            qpos = torch.arange(pos + i0, pos + i1, device=dev)
            lo = max(0, i0 + w_old - self.window + 1)
            hi = i1 + w_old
            kw = keys_win[lo:hi]
            kpos = torch.arange(lo, hi, device=dev) + (pos - w_old)
            mask = (kpos[None] <= qpos[:, None]) & (kpos[None] > qpos[:, None] - self.window)
            qb = q[i0:i1]
            logits = qk_scores_f32(qb, kw)
            gathered: torch.Tensor | None = None
            dense = kw
            if comp is not None and n_comp:
                visible = torch.arange(n_comp, device=dev)[None] < ((qpos + 1) // self.ratio)[:, None]
                if idx_f is not None:
                    assert iq is not None and iw is not None
                    order = self._select(iq[i0:i1], iw[i0:i1], idx_f, visible)
                    gathered = comp[order]  # [b, k, d]
                    lg = qk_scores_f32(qb, gathered)  # [b, h, k]
                    logits = torch.cat((logits, lg), -1)
                    mask = torch.cat((mask, visible.gather(1, order)), 1)
                else:
                    dense = torch.cat((kw, comp), 0)
                    logits = torch.cat((logits, qk_scores_f32(qb, comp)), -1)
                    mask = torch.cat((mask, visible), 1)
            logits = (logits * scale).masked_fill(~mask[:, None, :], float("-inf"))
            full = torch.cat((logits, sink.expand(i1 - i0, -1, 1)), dim=-1)
            probs = torch.softmax(full, dim=-1)[..., :-1].to(keys_win.dtype)
            nd = dense.shape[0]
            o = (probs[..., :nd].reshape(-1, nd) @ dense).view(i1 - i0, h, -1)
            if gathered is not None:
                o = o + torch.bmm(probs[..., nd:], gathered.to(probs.dtype))
            out.append(o)
        return torch.cat(out, 0) if len(out) > 1 else out[0]

    def _orders(
        self, iq: torch.Tensor | None, iw: torch.Tensor | None, idx_keys: torch.Tensor, pos: int, n: int
    ) -> torch.Tensor:
        """The indexer's top-k entries [n, k] of each query at pos..pos+n-1, in query blocks bounded by the
        selection's own temporaries (scores or order keys over every entry)."""
        assert iq is not None and iw is not None
        n_comp = idx_keys.shape[0]
        per_query = self._temp_per_query(0, n_comp, iq, indexer_kernel.supported(iq) and kernels_enabled())
        block = max(1, min(n, SCORE_BUDGET.get(iq.device.type, 1 << 24) // max(1, per_query)))
        out = []
        for i0 in range(0, n, block):
            i1 = min(n, i0 + block)
            qpos = torch.arange(pos + i0, pos + i1, device=iq.device)
            visible = torch.arange(n_comp, device=iq.device)[None] < ((qpos + 1) // self.ratio)[:, None]
            out.append(self._select(iq[i0:i1], iw[i0:i1], idx_keys, visible))
        return torch.cat(out, 0) if len(out) > 1 else out[0]

    def _temp_per_query(self, h: int, n_comp: int, iq: torch.Tensor | None, ix_kernel: bool) -> int:
        """Elements of `_core`'s temporaries per query row, which bound its query block. HCA scores every
        entry per head: h (window + entries). CSA scores window + top-k per head, h (window + k), plus the
        indexer's rows over all entries (its scores, one row or one per indexer head, and the top-k's int64
        keys: ~8 elements' worth per entry). Counting CSA like HCA gave 8-query blocks at 1M context."""
        if iq is None:
            return h * (self.window + n_comp)
        k = min(self.cfg.index_topk, n_comp)
        ix_heads = 1 if ix_kernel else iq.shape[1]
        return h * (self.window + k) + (ix_heads + 8) * n_comp

    def _core_kernel(
        self,
        q: torch.Tensor,
        keys_win: torch.Tensor,
        w_old: int,
        pos: int,
        comp: torch.Tensor | None,
        idx_keys: torch.Tensor | None,
        iq: torch.Tensor | None,
        iw: torch.Tensor | None,
    ) -> torch.Tensor:
        """`_core` for a few query rows through the sparse-attention kernel: each query's candidate rows
        (its window, then its selected or visible compressed entries) as indices into one small buffer."""
        n = q.shape[0]
        dev = q.device
        qpos = torch.arange(pos, pos + n, device=dev)
        lo = max(0, w_old - self.window + 1)
        kw = keys_win[lo : n + w_old]
        kpos = torch.arange(lo, n + w_old, device=dev) + (pos - w_old)
        win_ok = (kpos[None] <= qpos[:, None]) & (kpos[None] > qpos[:, None] - self.window)
        slots = torch.arange(kw.shape[0], device=dev).expand(n, -1)
        idx = torch.where(win_ok, slots, -1)
        buf = kw
        n_comp = 0 if comp is None else comp.shape[0]
        if comp is not None and n_comp:
            visible = torch.arange(n_comp, device=dev)[None] < ((qpos + 1) // self.ratio)[:, None]
            if idx_keys is not None:
                assert iq is not None and iw is not None
                order = self._select(iq, iw, idx_keys, visible)  # [n, k]
                k = order.shape[1]
                buf = torch.cat((kw, comp[order.reshape(-1)]), 0)
                picked = kw.shape[0] + torch.arange(n * k, device=dev).view(n, k)
                idx = torch.cat((idx, torch.where(visible.gather(1, order), picked, -1)), 1)
            else:
                buf = torch.cat((kw, comp), 0)
                idx = torch.cat(
                    (idx, torch.where(visible, kw.shape[0] + torch.arange(n_comp, device=dev), -1)), 1
                )
        scale = 1.0 / math.sqrt(self.head_dim)
        return sparse_kernel.sparse_attn(q, buf, idx, self.attn_sink, scale)

    def _select(
        self, iq: torch.Tensor, iw: torch.Tensor, idx_keys: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """Indices [b, k] of the top-k entries per query by indexer score (invisible ones rank last; ties go
        to the lower index, so any chunking of a sequence selects the same entries)."""
        k = min(self.cfg.index_topk, idx_keys.shape[0])
        with torch.no_grad():
            kernel = indexer_kernel.supported(iq) and kernels_enabled()
            long_rows = not stable_topk_kernel_rows(iq.shape[0], idx_keys.shape[0])
            if kernel and self.parallel is None and long_rows:
                # long rows: the kernel writes the top-k's order keys itself (no passes over the scores)
                keys = indexer_kernel.prefill_scores(iq, iw, idx_keys, visible.sum(-1), keys_out=True)
                return torch.topk(keys, k, dim=-1).indices
            if kernel:
                # visible = a prefix of each query's row: its count is the number of True
                scores = indexer_kernel.prefill_scores(iq, iw, idx_keys, visible.sum(-1))
            else:
                scores = (F.relu(qk_scores(iq.float(), idx_keys.float())) * iw.float().unsqueeze(-1)).sum(1)
                scores = scores.masked_fill(~visible, float("-inf"))
            if self.parallel is not None:  # each rank summed its heads: the score is the sum over ranks
                scores = self.parallel.all_reduce(scores)
            return stable_topk(scores, k)
