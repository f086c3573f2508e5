"""V4 attention (spec §4): shared-KV MQA over a 128-token window + CSA (indexer top-k) or HCA entries.

Projections, norms and RoPE run on all tokens of a batch at once; the window/compressor/indexer logic runs per
sequence, because sequences of a batch sit at different positions and complete blocks at different tokens.
Queries are processed in blocks so that the window part costs O(n * (block + W)) instead of O(n^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.layers.batched import BatchShape, core_batched, pool_fresh
from agentkit.runtime.layers.compressor import Compressor
from agentkit.runtime.layers.lowp import Linear, StorageFormat, fp4_roundtrip, fp8_kv_roundtrip, hadamard
from agentkit.runtime.layers.norms import RMSNorm, rms_unweighted
from agentkit.runtime.layers.rope import apply_rope, rope_frequencies
from agentkit.runtime.state import LayerState
from torch import nn

QUERY_BLOCK = 256
# elements of one [block, heads, candidates] fp32 score temporary: 64 MiB on CPU, 512 MiB on a GPU
SCORE_BUDGET = {"cpu": 1 << 24, "cuda": 1 << 27}


def _scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """q [b, h, d] x keys [m, d] -> [b, h, m] as one GEMM."""
    return (q.reshape(-1, q.shape[-1]) @ keys.t()).view(q.shape[0], q.shape[1], -1)


@dataclass
class SeqSlice:
    """Where one sequence's chunk sits in the flat token batch, and the state it extends."""

    start: int
    end: int
    pos: int
    state: LayerState


def _append(buf: torch.Tensor, count: int, rows: torch.Tensor) -> torch.Tensor:
    """Write rows at [count, count + len) of an append-only buffer, doubling its capacity when full, so a
    decode step costs O(new rows) instead of a copy of every entry so far."""
    need = count + rows.shape[0]
    if need > buf.shape[0]:
        grown = buf.new_zeros(max(need, 2 * buf.shape[0], 16), buf.shape[1])
        grown[:count] = buf[:count]
        buf = grown
    with torch.no_grad():
        buf[count:need] = rows.detach().to(buf.dtype)
    return buf


def _with_new(buf: torch.Tensor, total: int, new: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """All entries so far; under autograd the new rows are the graph-connected ones, not the stored copy."""
    if new.requires_grad:
        return torch.cat((buf[: total - new.shape[0]].to(dtype), new), 0)
    return buf[:total].to(dtype)


class Indexer(nn.Module):
    """Lightning Indexer (spec §4.6): its own ratio-4 compressor at index_head_dim, scores, top-k."""

    def __init__(
        self, config: ModelConfig, fmt: StorageFormat, dtype: torch.dtype, norm_dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.cfg = config
        self.n_heads, self.head_dim = config.index_n_heads, config.index_head_dim
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
        w = self.weights_proj(x).float() * (self.head_dim**-0.5 * self.n_heads**-0.5)
        return q, w


class Attention(nn.Module):
    def __init__(
        self, config: ModelConfig, layer: int, fmt: StorageFormat, dtype: torch.dtype, norm_dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.cfg = config
        self.ratio = config.ratio(layer)
        h, d = config.n_heads, config.head_dim
        self.n_heads, self.head_dim, self.rope_dim = h, d, config.rope_head_dim
        self.window = config.window_size
        self.wq_a = Linear(config.dim, config.q_lora_rank, fmt, dtype)
        self.q_norm = RMSNorm(config.q_lora_rank, config.norm_eps, norm_dtype)
        self.wq_b = Linear(config.q_lora_rank, h * d, fmt, dtype)
        self.wkv = Linear(config.dim, d, fmt, dtype)
        self.kv_norm = RMSNorm(d, config.norm_eps, norm_dtype)
        self.o_groups, self.o_rank = config.o_groups, config.o_lora_rank
        self.wo_a = Linear(h * d // config.o_groups, config.o_groups * config.o_lora_rank, fmt, dtype)
        self.wo_b = Linear(config.o_groups * config.o_lora_rank, config.dim, fmt, dtype)
        self.attn_sink = nn.Parameter(torch.zeros(h, dtype=torch.float32))
        self.compressor: Compressor | None = None
        self.indexer: Indexer | None = None
        if self.ratio:
            self.compressor = Compressor(config.dim, d, self.ratio, config.norm_eps, dtype, norm_dtype)
        if self.ratio == 4:
            self.indexer = Indexer(config, fmt, dtype, norm_dtype)
        self.freqs: torch.Tensor
        self.register_buffer("freqs", rope_frequencies(config, self.ratio > 0), persistent=False)
        # Indexer distillation loss terms (sum, rows) collected during a training forward when enabled.
        self.collect_indexer_loss = False
        self.indexer_loss_terms: list[tuple[torch.Tensor, int]] = []

    # --- per-entry post-processing of pooled compressor output (spec §4.5) ---
    def _main_entries(self, pooled: torch.Tensor, first: int, dtype: torch.dtype) -> torch.Tensor:
        assert self.compressor is not None
        e = self.compressor.norm(pooled.to(dtype))
        pos = (torch.arange(pooled.shape[0], device=pooled.device) + first) * self.ratio
        e = apply_rope(e, pos, self.freqs)
        return fp8_kv_roundtrip(e, self.rope_dim) if self.cfg.sim_fp8_kv else e

    def _index_entries(self, pooled: torch.Tensor, first: int, dtype: torch.dtype) -> torch.Tensor:
        assert self.indexer is not None
        e = self.indexer.compressor.norm(pooled.to(dtype))
        pos = (torch.arange(pooled.shape[0], device=pooled.device) + first) * 4
        return self.indexer.rotate_quant(apply_rope(e, pos, self.freqs))

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, seqs: list[SeqSlice] | BatchShape
    ) -> torch.Tensor:
        """x [T, D]: normalized sub-layer input of all chunks; updates every sequence's LayerState
        (a `BatchShape` instead: equal rows from position 0, batched, no state; see layers/batched.py)."""
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
        if isinstance(seqs, BatchShape):
            return self._forward_batched(seqs, positions, q, k, ckv, csc, ikv, isc, iq, iw)
        outs = []
        for s in seqs:
            a, b, p, ls = s.start, s.end, s.pos, s.state
            n = b - a
            w_old = min(p, self.window - 1)
            slots = torch.arange(p - w_old, p, device=x.device) % self.window
            keys_win = torch.cat((ls.window[slots].to(k.dtype), k[a:b]), 0)
            comp = idx_keys = None
            if self.compressor is not None:
                assert ckv is not None and csc is not None
                assert ls.comp is not None and ls.comp_tail_kv is not None and ls.comp_tail_score is not None
                pooled, first, ls_tail_kv, ls_tail_sc = self.compressor.pool(
                    ls.comp_tail_kv, ls.comp_tail_score, ckv[a:b], csc[a:b], p
                )
                new = self._main_entries(pooled, first, k.dtype)
                ls.comp = _append(ls.comp, p // self.ratio, new)
                comp = _with_new(ls.comp, (p + n) // self.ratio, new, k.dtype)
            if self.indexer is not None:
                assert ikv is not None and isc is not None
                assert ls.idx is not None and ls.idx_tail_kv is not None and ls.idx_tail_score is not None
                ipooled, ifirst, li_tail_kv, li_tail_sc = self.indexer.compressor.pool(
                    ls.idx_tail_kv, ls.idx_tail_score, ikv[a:b], isc[a:b], p
                )
                inew = self._index_entries(ipooled, ifirst, k.dtype)
                ls.idx = _append(ls.idx, p // 4, inew)
                idx_keys = _with_new(ls.idx, (p + n) // 4, inew, k.dtype)
            o = self._core(
                q[a:b],
                keys_win,
                w_old,
                p,
                comp,
                idx_keys,
                None if iq is None else iq[a:b],
                None if iw is None else iw[a:b],
            )
            outs.append(o)
            # --- commit the new state (detached: a training graph never leaks into stored state) ---
            with torch.no_grad():
                keep = min(n, self.window)
                wslots = torch.arange(p + n - keep, p + n, device=x.device) % self.window
                ls.window[wslots] = k[b - keep : b].detach().to(ls.window.dtype)
                if comp is not None:
                    ls.comp_tail_kv, ls.comp_tail_score = ls_tail_kv, ls_tail_sc
                if idx_keys is not None:
                    ls.idx_tail_kv, ls.idx_tail_score = li_tail_kv, li_tail_sc
        o = torch.cat(outs, 0) if len(outs) > 1 else outs[0]
        return self._output(o, positions)

    def _output(self, o: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Head outputs o [T, h, d] -> [T, D]: inverse RoPE at the query position, grouped low-rank wo."""
        t = o.shape[0]
        o = apply_rope(o, positions, self.freqs, inverse=True)
        g = self.o_groups
        wa = self.wo_a.dense(o.dtype).view(g, self.o_rank, -1)
        u = torch.bmm(o.reshape(t, g, -1).transpose(0, 1), wa.transpose(1, 2)).transpose(0, 1).reshape(t, -1)
        return self.wo_b(u)

    def _forward_batched(
        self,
        shape: BatchShape,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        ckv: torch.Tensor | None,
        csc: torch.Tensor | None,
        ikv: torch.Tensor | None,
        isc: torch.Tensor | None,
        iq: torch.Tensor | None,
        iw: torch.Tensor | None,
    ) -> torch.Tensor:
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
        o = core_batched(self, q.view(b, s, *q.shape[1:]), k.view(b, s, -1), comp, idx_keys, iq, iw)
        return self._output(o.reshape(b * s, *o.shape[2:]), positions)

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
        dev = q.device
        scale = 1.0 / math.sqrt(self.head_dim)
        sink = self.attn_sink.float().view(1, -1, 1)
        n_comp = 0 if comp is None else comp.shape[0]
        width = self.window + n_comp + (0 if iq is None else iq.shape[1] * n_comp // max(h, 1))
        budget = SCORE_BUDGET.get(dev.type, 1 << 24)
        block = max(1, min(QUERY_BLOCK, budget // max(1, h * width)))
        out = []
        for i0 in range(0, n, block):
            i1 = min(n, i0 + block)
            qpos = torch.arange(pos + i0, pos + i1, device=dev)
            lo = max(0, i0 + w_old - self.window + 1)
            hi = i1 + w_old
            kw = keys_win[lo:hi]
            kpos = torch.arange(lo, hi, device=dev) + (pos - w_old)
            mask = (kpos[None] <= qpos[:, None]) & (kpos[None] > qpos[:, None] - self.window)
            qb = q[i0:i1].float()
            logits = _scores(qb, kw.float())
            gathered: torch.Tensor | None = None
            dense = kw
            if comp is not None and n_comp:
                visible = torch.arange(n_comp, device=dev)[None] < ((qpos + 1) // self.ratio)[:, None]
                if idx_keys is not None:
                    assert iq is not None and iw is not None
                    order = self._select(iq[i0:i1], iw[i0:i1], idx_keys, visible)
                    if self.collect_indexer_loss and torch.is_grad_enabled():
                        self._indexer_kl(qb * scale, comp, iq[i0:i1], iw[i0:i1], idx_keys, visible)
                    gathered = comp[order]  # [b, k, d]
                    lg = torch.bmm(qb, gathered.float().transpose(1, 2))  # [b, h, k]
                    logits = torch.cat((logits, lg), -1)
                    mask = torch.cat((mask, visible.gather(1, order)), 1)
                else:
                    dense = torch.cat((kw, comp), 0)
                    logits = torch.cat((logits, _scores(qb, comp.float())), -1)
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

    def _indexer_kl(
        self,
        q: torch.Tensor,
        comp: torch.Tensor,
        iq: torch.Tensor,
        iw: torch.Tensor,
        idx_keys: torch.Tensor,
        visible: torch.Tensor,
    ) -> None:
        """KL(main attention over all visible entries, summed over heads || softmax of indexer scores).

        The main side is detached: this trains only the indexer, the way DeepSeek's sparse-attention models
        distill the indexer from dense attention. Rows with no visible entry contribute nothing.
        """
        rows = visible.any(-1)
        if not rows.any():
            return
        with torch.no_grad():
            main = _scores(q.detach(), comp.detach().float()).masked_fill(~visible[:, None, :], float("-inf"))
            target = torch.softmax(main, -1).nan_to_num(0.0).sum(1)
            target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
        scores = (F.relu(_scores(iq.float(), idx_keys.float())) * iw.float().unsqueeze(-1)).sum(dim=1)
        logp = torch.log_softmax(scores.masked_fill(~visible, float("-inf")), -1)
        kl = (target * (target.clamp_min(1e-12).log() - logp)).masked_fill(~visible, 0.0).sum(-1)
        self.indexer_loss_terms.append((kl[rows].sum(), int(rows.sum())))

    def _select(
        self, iq: torch.Tensor, iw: torch.Tensor, idx_keys: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """Indices [b, k] of the top-k entries per query by indexer score (invisible ones rank last; ties go
        to the lower index, so any chunking of a sequence selects the same entries)."""
        with torch.no_grad():
            scores = (F.relu(_scores(iq.float(), idx_keys.float())) * iw.float().unsqueeze(-1)).sum(dim=1)
            scores = scores.masked_fill(~visible, float("-inf"))
            k = min(self.cfg.index_topk, idx_keys.shape[0])
            return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
