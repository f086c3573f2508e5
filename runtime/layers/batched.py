"""Training attention for B rows that all start at position 0 with the same length S.

The per-sequence path (`Attention.forward` with `SeqSlice`s) handles any chunk at any position, so it loops
over sequences in Python; under training that loop, times query blocks, times layers, made a step cost ~80k
operator dispatches and left a GPU idle. Here every row shares its positions, so the window masks, the
visibility of compressed blocks (entry i of ratio r is visible to query t iff i < (t+1) // r, spec §4.4) and
the block boundaries are the same for all rows: one [B, ...] tensor op replaces B of them. Nothing is stored:
the training forward drops its states anyway. It computes the same function as `extend` from fresh states
(tests/test_runtime_batched_forward.py checks values and gradients against the per-sequence path).

The indexer's distillation loss is a training-only term, so it lives here too (`indexer_kl`), and is
returned, never stored on a module: `core_batched` returns it next to its output, and the per-sequence path
calls the same function with one row when the training forward runs through it (`batched=False`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from agentkit.runtime.layers.attention import Attention
    from agentkit.runtime.layers.compressor import Compressor


BAND = 64
"""Queries per band of the window part: each band scores BAND + W - 1 keys (smaller = less wasted work on
masked keys, more and smaller GEMMs)."""


DENSE_CSA = 4
"""CSA attends all candidates densely (selection by mask) while they are at most this many times top-k;
beyond that it gathers the k selected entries per query (dense scoring would waste more than it saves)."""


@dataclass(frozen=True)
class BatchShape:
    """B rows of S tokens each, all from position 0, laid out row-major in the flat token batch."""

    rows: int
    length: int


def pool_fresh(comp: Compressor, kv: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Pooled entries [B, S // r, width] (fp32) of rows kv/score [B, S, c*width] starting from an empty tail.

    Equals `Compressor.pool` on a fresh tail: the CSA entry 0 pools "previous block" slots of value 0 and
    logit -inf, and a trailing partial block yields no entry.
    """
    r, c, w = comp.ratio, comp.c, comp.width
    b, s, _ = kv.shape
    nb = s // r
    if nb == 0:
        return kv.new_zeros(b, 0, w)
    bkv = kv[:, : nb * r].reshape(b, nb, r, c * w)
    bsc = score[:, : nb * r].reshape(b, nb, r, c * w)
    if c == 2:
        prev_kv = torch.cat((bkv.new_zeros(b, 1, r, c * w), bkv[:, :-1]), 1)
        prev_sc = torch.cat((bsc.new_full((b, 1, r, c * w), float("-inf")), bsc[:, :-1]), 1)
        kv8 = torch.cat((prev_kv[..., :w], bkv[..., w:]), 2)
        sc8 = torch.cat((prev_sc[..., :w], bsc[..., w:]), 2)
    else:
        kv8, sc8 = bkv, bsc
    return (torch.softmax(sc8, dim=2) * kv8).sum(dim=2)


def _bscores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """q [B, n, h, d] x keys [B, m, d] -> [B, n, h, m] as one batched GEMM."""
    b, n, h, d = q.shape
    return torch.bmm(q.reshape(b, n * h, d), keys.transpose(1, 2)).view(b, n, h, -1)


def _index_scores(iq: torch.Tensor, iw: torch.Tensor, idx_keys: torch.Tensor) -> torch.Tensor:
    """Indexer scores [B, n, m] = sum over index heads j of w_j * relu(q_j . key) (spec §4.6)."""
    return (F.relu(_bscores(iq.float(), idx_keys.float())) * iw.float().unsqueeze(-1)).sum(dim=2)


def _select(
    attn: Attention, iq: torch.Tensor, iw: torch.Tensor, idx_keys: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Top-k entry indices [B, n, k] by indexer score; same ranking rule as `Attention._select`."""
    with torch.no_grad():
        scores = _index_scores(iq, iw, idx_keys).masked_fill(~visible, float("-inf"))
        k = min(attn.cfg.index_topk, idx_keys.shape[1])
        return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


@dataclass(frozen=True)
class IndexerKL:
    """Indexer distillation terms: the sum of per-query KL values and how many queries they cover.

    Sums, not means, so terms of query blocks, sequences and layers add up exactly; the training forward
    divides once at the end (`mean`).
    """

    total: torch.Tensor
    queries: int

    def __add__(self, other: IndexerKL) -> IndexerKL:
        return IndexerKL(self.total + other.total, self.queries + other.queries)

    @staticmethod
    def add(a: IndexerKL | None, b: IndexerKL | None) -> IndexerKL | None:
        return b if a is None else a if b is None else a + b

    def mean(self) -> torch.Tensor:
        return self.total / self.queries


def indexer_kl(
    q: torch.Tensor,
    comp: torch.Tensor,
    iq: torch.Tensor,
    iw: torch.Tensor,
    idx_keys: torch.Tensor,
    visible: torch.Tensor,
) -> IndexerKL | None:
    """KL(main attention over all visible entries, summed over heads || softmax of indexer scores).

    q [B, n, h, d] already scaled by 1/sqrt(d), comp [B, m, d], iq [B, n, hi, di], iw [B, n, hi],
    idx_keys [B, m, di], visible [n, m] (the same for every row). For query t the target is
    p_t = normalize(sum_heads softmax_visible(q_t . comp)) and the term is sum_i p_t,i (log p_t,i - log
    softmax_visible(index_scores_t)_i). The main side is detached: this trains only the indexer, the way
    DeepSeek's sparse-attention models distill the indexer from dense attention. Queries with no visible
    entry contribute nothing; None when no query has one.
    """
    rows = visible.any(-1)  # [n]: the same for every batch row
    n_rows = int(rows.sum())
    if not n_rows:
        return None
    vis = visible.expand(q.shape[0], -1, -1)
    with torch.no_grad():
        main = _bscores(q.detach(), comp.detach().float()).masked_fill(~vis[:, :, None, :], float("-inf"))
        target = torch.softmax(main, -1).nan_to_num(0.0).sum(2)
        target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
    logp = torch.log_softmax(_index_scores(iq, iw, idx_keys).masked_fill(~vis, float("-inf")), -1)
    kl = (target * (target.clamp_min(1e-12).log() - logp)).masked_fill(~vis, 0.0).sum(-1)
    return IndexerKL(kl[:, rows].sum(), n_rows * q.shape[0])


def core_batched(
    attn: Attention,
    q: torch.Tensor,
    k: torch.Tensor,
    comp: torch.Tensor | None,
    idx_keys: torch.Tensor | None,
    iq: torch.Tensor | None,
    iw: torch.Tensor | None,
    *,
    budget: int,
    indexer_loss: bool = False,
) -> tuple[torch.Tensor, IndexerKL | None]:
    """Queries q [B, S, h, d] at positions 0..S-1 over their window keys k [B, S, d] plus the visible
    (HCA: all; CSA: top-k selected) compressed entries comp [B, nc, d]; returns ([B, S, h, d], the
    indexer's distillation terms when `indexer_loss` and the layer has an indexer, else None).

    The window part is banded: queries go in sub-blocks of `band` positions, each scored against only the
    band + W - 1 keys it can see, all sub-blocks in one batched GEMM (the per-sequence path scores a block of
    256 queries against 256 + W - 1 keys, ~2x the work at W = 128). Query chunks (multiples of the band) are
    sized so the [B, chunk, h, candidates] temporaries stay within `budget` elements (the per-sequence
    path's `SCORE_BUDGET` for the device).
    """
    bsz, n, h, d = q.shape
    dev = q.device
    win, ratio = attn.window, attn.ratio
    band = min(BAND, win)
    span = band + win - 1
    scale = 1.0 / math.sqrt(attn.head_dim)
    sink = attn.attn_sink.float().view(1, 1, -1, 1)
    n_comp = 0 if comp is None else comp.shape[1]
    width = span + n_comp + (0 if iq is None else iq.shape[2] * n_comp // max(h, 1))
    block = max(1, budget // max(1, bsz * h * width * band)) * band
    # pad: W - 1 key rows in front (position < 0, masked), up to a whole band at the end (discarded)
    npad = -(-n // band) * band
    qp = F.pad(q, (0, 0, 0, 0, 0, npad - n))
    kp = F.pad(k, (0, 0, win - 1, npad - n))
    offs = torch.arange(span, device=dev)
    out = []
    kl: IndexerKL | None = None
    for i0 in range(0, npad, block):
        i1 = min(npad, i0 + block)
        nq, nb = i1 - i0, (i1 - i0) // band
        qpos = torch.arange(i0, i1, device=dev)
        kpos = (torch.arange(i0, i1, band, device=dev) - win + 1).view(nb, 1, 1) + offs  # [nb, 1, span]
        qb_pos = qpos.view(nb, band, 1)
        wmask = (kpos >= 0) & (kpos <= qb_pos) & (kpos > qb_pos - win)  # [nb, band, span]
        mask = wmask.reshape(1, nq, span).expand(bsz, -1, -1)
        kw = kp[:, i0 : i1 + win - 1].unfold(1, span, band).transpose(2, 3)  # [B, nb, span, d]
        kw = kw.reshape(bsz * nb, span, d)
        qb = qp[:, i0:i1].float()
        logits = torch.bmm(qb.reshape(bsz * nb, band * h, d), kw.float().transpose(1, 2)).view(
            bsz, nq, h, span
        )
        dense: torch.Tensor | None = None
        gathered: torch.Tensor | None = None
        if comp is not None and n_comp:
            visible = torch.arange(n_comp, device=dev)[None] < ((qpos + 1) // ratio)[:, None]  # [nq, nc]
            vis = visible.expand(bsz, -1, -1)
            if idx_keys is not None:
                assert iq is not None and iw is not None
                iqb, iwb = F.pad(iq, (0, 0, 0, 0, 0, npad - n)), F.pad(iw, (0, 0, 0, npad - n))
                order = _select(attn, iqb[:, i0:i1], iwb[:, i0:i1], idx_keys, vis)  # [B, nq, kk]
                if indexer_loss:
                    real = min(i1, n) - i0  # padded queries must not add KL terms
                    block_kl = indexer_kl(
                        qb[:, :real] * scale,
                        comp,
                        iq[:, i0 : i0 + real],
                        iw[:, i0 : i0 + real],
                        idx_keys,
                        visible[:real],
                    )
                    kl = IndexerKL.add(kl, block_kl)
                kk = order.shape[-1]
                if n_comp <= DENSE_CSA * kk:
                    # few candidates: score them all in one GEMM and keep the selected visible ones by mask,
                    # instead of gathering [B, chunk, k, d] copies of entries (and scattering their gradient)
                    chosen = torch.zeros_like(vis).scatter_(2, order, vis.gather(2, order))
                    logits = torch.cat((logits, _bscores(qb, comp.float())), -1)
                    mask = torch.cat((mask, chosen), 2)
                    dense = comp
                else:
                    gathered = comp[torch.arange(bsz, device=dev).view(-1, 1, 1), order]  # [B, nq, kk, d]
                    lg = torch.bmm(
                        qb.reshape(bsz * nq, h, d), gathered.float().reshape(bsz * nq, kk, d).transpose(1, 2)
                    )
                    logits = torch.cat((logits, lg.view(bsz, nq, h, kk)), -1)
                    mask = torch.cat((mask, vis.gather(2, order)), 2)
            else:
                dense = comp
                logits = torch.cat((logits, _bscores(qb, comp.float())), -1)
                mask = torch.cat((mask, vis), 2)
        logits = (logits * scale).masked_fill(~mask[:, :, None, :], float("-inf"))
        full = torch.cat((logits, sink.expand(bsz, nq, -1, 1)), dim=-1)
        probs = torch.softmax(full, dim=-1)[..., :-1].to(k.dtype)
        pw = probs[..., :span].reshape(bsz * nb, band * h, span)
        o = torch.bmm(pw, kw.to(probs.dtype)).view(bsz, nq, h, d)
        if dense is not None:
            nd = dense.shape[1]
            o = o + torch.bmm(probs[..., span:].reshape(bsz, nq * h, nd), dense).view(bsz, nq, h, d)
        if gathered is not None:
            kk = gathered.shape[2]
            g = torch.bmm(
                probs[..., span:].reshape(bsz * nq, h, kk), gathered.to(probs.dtype).reshape(bsz * nq, kk, d)
            )
            o = o + g.view(bsz, nq, h, d)
        out.append(o)
    o = torch.cat(out, 1) if len(out) > 1 else out[0]
    return o[:, :n], kl


def sequence_kl(
    q: torch.Tensor,
    pos: int,
    ratio: int,
    comp: torch.Tensor,
    iq: torch.Tensor,
    iw: torch.Tensor,
    idx_keys: torch.Tensor,
    budget: int,
    max_block: int,
) -> IndexerKL | None:
    """Training through the per-sequence path: the indexer's distillation terms of one sequence's queries
    at pos..pos+n-1, from `indexer_kl` with one row. The terms are per query, so the query blocks (bounding
    the [block, heads, entries] temporaries to `budget` elements) do not change their sum."""
    n, h = q.shape[0], q.shape[1]
    n_comp = comp.shape[0]
    scale = 1.0 / math.sqrt(q.shape[2])
    block = max(1, min(max_block, budget // max(1, h * n_comp)))
    kl: IndexerKL | None = None
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        qpos = torch.arange(pos + i0, pos + i1, device=q.device)
        visible = torch.arange(n_comp, device=q.device)[None] < ((qpos + 1) // ratio)[:, None]
        qb = q[None, i0:i1].float() * scale  # one row: [1, block, h, d]
        terms = indexer_kl(qb, comp[None], iq[None, i0:i1], iw[None, i0:i1], idx_keys[None], visible)
        kl = IndexerKL.add(kl, terms)
    return kl
