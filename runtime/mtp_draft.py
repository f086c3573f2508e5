"""The MTP block's drafting forward on the CPU: what a draft needs of `V4Model.mtp_extend`, fewer operators.

On a small model every operator costs its dispatch, not its arithmetic (agentkit-tiny: one MTP call of the
general path is ~900 aten calls, ~2.6 ms, 0.45x a whole 4-layer decode step), and a speculative step pays
one such call per drafted token. Drafts never change the output (the main model verifies them), so this
path is free to round differently from `mtp_extend`; it computes the same function:

- `commit` runs the block over the positions its state has not consumed (a step's kept positions, a cold
  state's prompt tail) and extends the MTP layer's state with all of them (window ring, compressor tails,
  compressed entries, indexer keys: the same layout as `mtp_extend` writes), but computes queries,
  attention, the output projection, the FFN and the head only at each sequence's last position, the only
  one whose logits a draft reads.
- `chained` runs one position past the committed state (a draft chained on the block's own output
  stream, k > 1) without writing the state at all: its window is the state's ring plus the earlier chained
  keys, its compressed entries the committed ones (an entry that would complete inside the chained
  positions is left out - its tokens are in the window anyway). Nothing to roll back after the verify.
- Both: RoPE through one complex multiply with angles shared by q, k and the output; fused RMS norms; the
  attention of one query over [window; entries] as two small GEMMs; CSA entries attended densely while
  there are at most `index_topk` of them (the indexer's top-k would select every one: only the summation
  order differs), through the indexer beyond; one routed-expert call per selected expert.

Used by speculative.draft_tokens for CPU models without tensor parallelism; elsewhere `mtp_extend` drafts.

One idea: the MTP block's forward as a draft needs it - its weights as plain tensors, the fused small ops,
the state updates and the two entry points exist only for each other.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from agentkit.runtime.layers.compressor import Compressor
from agentkit.runtime.layers.lowp import Linear, fp8_kv_roundtrip
from agentkit.runtime.layers.moe import Expert
from agentkit.runtime.state import LayerState

if TYPE_CHECKING:
    from agentkit.runtime.model import MTPBlock, V4Model

ROTATION_ROWS = 8
"""Up to this many positions RoPE is one batched GEMM with per-position rotation matrices; more (a cold
state's prompt tail) go through complex multiplication."""


def supported(model: V4Model) -> bool:
    """CPU, one process, float weights in fp32 (agentkit-tiny, random test models): the path this module is
    written for; anything else drafts through `mtp_extend`."""
    if not model.mtp or model.device.type != "cpu" or model.parallel is not None:
        return False
    ok = _SUPPORTED.get(model)
    if ok is None:
        blk = model.mtp[0]
        ok = _SUPPORTED[model] = model.dtype == torch.float32 and all(
            m.fmt == "float" and m.weight.dtype == torch.float32
            for m in (*blk.modules(), model.head)
            if isinstance(m, Linear)
        )
    return ok


_SUPPORTED: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------------- weights
class _Mix:
    """One mHC site's parameters as the mixing needs them (the scales spread over their columns)."""

    def __init__(self, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, n: int) -> None:
        self.fn_t = fn.float().t()
        self.base = base.float()
        s = scale.float()
        self.scale = (
            torch.cat((s[0].expand(n), s[1].expand(n), s[2].expand(n * n)))
            if n * n + 2 * n == (fn.shape[0])
            else s.expand(fn.shape[0])
        )


class _Expert:
    def __init__(self, e: Expert) -> None:
        self.w1, self.w3, self.w2, self.limit = e.w1.weight, e.w3.weight, e.w2.weight, e.limit


class _Plan:
    """The MTP block's tensors as plain attributes (module attribute lookups cost more than the small ops
    they feed), and constants made once: references to the parameters themselves, so weights loaded in
    place later are seen."""

    def __init__(self, model: V4Model, blk: MTPBlock) -> None:
        cfg, a = model.config, blk.attn
        n = cfg.hc_mult
        self.cfg, self.attn = cfg, a
        self.embed = model.embed.weight
        self.head = model.head.weight
        self.e_proj, self.h_proj = blk.e_proj.weight, blk.h_proj.weight
        self.enorm, self.hnorm, self.norm = blk.enorm.weight, blk.hnorm.weight, blk.norm.weight
        self.attn_norm, self.ffn_norm = blk.attn_norm.weight, blk.ffn_norm.weight
        self.attn_mix = _Mix(blk.hc_attn_fn, blk.hc_attn_base, blk.hc_attn_scale, n)
        self.ffn_mix = _Mix(blk.hc_ffn_fn, blk.hc_ffn_base, blk.hc_ffn_scale, n)
        self.head_mix = _Mix(blk.hc_head_fn, blk.hc_head_base, blk.hc_head_scale, n)
        self.wq_a, self.q_norm, self.wq_b = a.wq_a.weight, a.q_norm.weight, a.wq_b.weight
        self.wkv, self.kv_norm, self.wo_b = a.wkv.weight, a.kv_norm.weight, a.wo_b.weight
        self.wo_a_t = a.wo_a.weight.view(a.o_groups, a.o_rank, -1).transpose(1, 2)
        self.sink = a.attn_sink.float()[:, None]
        self.scale = 1.0 / math.sqrt(a.head_dim)
        self.freqs = a.freqs.to(torch.float32)
        d, rd = a.head_dim, a.rope_dim
        half, nope = rd // 2, d - rd
        basis = torch.zeros(rd, d * d)
        for i in range(half):  # row-vector rotation of pair (j, j + 1): [[c, s], [-s, c]]
            j = nope + 2 * i
            basis[i, j * d + j] = basis[i, (j + 1) * d + j + 1] = 1.0
            basis[half + i, j * d + j + 1] = 1.0
            basis[half + i, (j + 1) * d + j] = -1.0
        self.rot_basis = basis
        self.rot_base = torch.zeros(d, d)
        self.rot_base[range(nope), range(nope)] = 1.0
        self.rot_base = self.rot_base.view(-1)
        self.comp = a.compressor
        self.idx_comp = None if a.indexer is None else a.indexer.compressor
        # every projection of the attention input that all positions need, as one GEMM (a copy: see _plan)
        self.proj_src = [a.wkv.weight]
        for cmp in (self.comp, self.idx_comp):
            if cmp is not None:
                self.proj_src += [cmp.wkv.weight, cmp.wgate.weight]
        self.proj_sizes = [w.shape[0] for w in self.proj_src]
        self.proj_key = _key(self.proj_src)
        self.proj = torch.cat(self.proj_src)
        gate = blk.ffn.gate
        self.gate_w, self.gate_bias = gate.weight, gate.bias
        self.topk, self.route_scale = gate.topk, gate.route_scale
        self.experts = [_Expert(e) for e in blk.ffn.experts if isinstance(e, Expert)]
        self.shared = _Expert(blk.ffn.shared_experts)


def _key(tensors: Sequence[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for t in tensors)


_PLANS: weakref.WeakKeyDictionary[torch.nn.Module, _Plan] = weakref.WeakKeyDictionary()


def _plan(model: V4Model) -> _Plan:
    blk = model._mtp_block()
    p = _PLANS.get(blk)
    if p is None or p.proj_key != _key(p.proj_src):  # new, or weights written since the fused copy
        with torch.inference_mode(False), torch.no_grad():
            p = _PLANS[blk] = _Plan(model, blk)
    return p


# ---------------------------------------------------------------------------------------------- small ops
def _rms(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), w, eps)


class _Rope:
    """RoPE at a set of positions (layers/rope.py's interleaved pairs on the trailing dims): one batched
    GEMM with [T, d, d] rotation matrices for a few positions, complex multiplication for many."""

    def __init__(self, plan: _Plan, positions: torch.Tensor) -> None:
        ang = positions.to(torch.float32)[:, None] * plan.freqs[None, :]
        self.d = plan.attn.head_dim
        self.mat: torch.Tensor | None = None
        self.cis: torch.Tensor | None = None
        if positions.shape[0] <= ROTATION_ROWS:
            cs = torch.cat((ang.cos(), ang.sin()), 1)
            self.mat = torch.addmm(plan.rot_base, cs, plan.rot_basis).view(-1, self.d, self.d)
        else:
            self.cis = torch.polar(torch.ones_like(ang), ang)

    def __call__(self, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """x [T, dim] or [T, h, dim] (dim <= head_dim: the rotated dims are the trailing rope_dim)."""
        if self.mat is not None:
            m = self.mat[:, -x.shape[-1] :, -x.shape[-1] :]
            m = m.transpose(1, 2) if inverse else m
            return torch.bmm(x, m) if x.dim() == 3 else torch.bmm(x.unsqueeze(1), m).squeeze(1)
        assert self.cis is not None
        cis = self.cis.conj() if inverse else self.cis
        rd = 2 * cis.shape[-1]
        rot = torch.view_as_complex(x[..., -rd:].reshape(*x.shape[:-1], rd // 2, 2).contiguous())
        cis = cis.view(cis.shape[0], *([1] * (x.dim() - 2)), cis.shape[-1])
        out = torch.view_as_real(rot * cis).flatten(-2)
        return torch.cat((x[..., :-rd], out), -1) if x.shape[-1] > rd else out

    def rows(self, index: slice | torch.Tensor) -> _Rope:
        r = object.__new__(_Rope)
        r.d = self.d
        r.mat = None if self.mat is None else self.mat[index]
        r.cis = None if self.cis is None else self.cis[index]
        return r


def _hc_pre(
    x: torch.Tensor, mix: _Mix, iters: int, hc_eps: float, norm_eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """layers.mhc.hc_pre: streams [T, n, D] -> (collapsed [T, D], post [T, n], comb [T, n, n])."""
    t, n, d = x.shape
    flat = F.rms_norm(x.reshape(t, n * d), (n * d,), eps=norm_eps)
    m = torch.addcmul(mix.base, flat @ mix.fn_t, mix.scale)
    pp = torch.sigmoid(m[:, : 2 * n])
    pre = pp[:, :n] + hc_eps
    post = pp[:, n:] * 2.0
    comb = torch.softmax(m[:, 2 * n :].view(t, n, n), dim=-1).add_(hc_eps)
    # Sinkhorn; the reference adds hc_eps to every denominator too: 1e-6 against sums near 1, left out here
    comb.div_(comb.sum(dim=-2, keepdim=True))
    for _ in range(iters - 1):
        comb.div_(comb.sum(dim=-1, keepdim=True))
        comb.div_(comb.sum(dim=-2, keepdim=True))
    return torch.bmm(pre.unsqueeze(1), x).squeeze(1), post, comb


def _hc_post(y: torch.Tensor, x: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """layers.mhc.hc_post: post_k * y + sum_j comb[j, k] x_j, as one batched GEMM and one multiply-add."""
    return torch.addcmul(torch.bmm(comb.transpose(1, 2), x), post.unsqueeze(-1), y.unsqueeze(1))


def _fp8_kv(plan: _Plan, k: torch.Tensor) -> torch.Tensor:
    """layers.lowp.fp8_kv_roundtrip (e4m3, power-of-two scale, amax floor 1e-4) on the non-RoPE dims."""
    rd = plan.attn.rope_dim
    if not plan.cfg.sim_fp8_kv:
        return k
    nope = k.shape[-1] - rd
    if nope > 64:  # several scale blocks
        return fp8_kv_roundtrip(k, rd)
    x = k[..., :nope]
    scale = torch.exp2(torch.ceil(torch.log2(x.abs().amax(-1, keepdim=True).clamp_min_(1e-4).div_(448.0))))
    q = (x / scale).clamp_(-448.0, 448.0).to(torch.float8_e4m3fn).float().mul_(scale)
    return torch.cat((q, k[..., nope:]), -1)


# ---------------------------------------------------------------------------------------------- state updates
def _pool_into(
    comp: Compressor,
    tail_kv: torch.Tensor,
    tail_sc: torch.Tensor,
    kv: torch.Tensor,
    sc: torch.Tensor,
    pos: int,
) -> tuple[torch.Tensor | None, int]:
    """`Compressor.pool` writing the new tail into the given one (as Attention._extend copies it): pooled
    entries (None when no block completes) and the index of the first. The tail bytes are the pool's."""
    if "pool" in comp.__dict__:  # a rollback journal records this compressor: its hook must see the call
        pooled, first, nkv, nsc = comp.pool(tail_kv, tail_sc, kv, sc, pos)
        tail_kv.copy_(nkv)
        tail_sc.copy_(nsc)
        return (pooled if pooled.shape[0] else None), first
    r, c, w = comp.ratio, comp.c, comp.width
    rem0 = pos % r
    off = r if c == 2 else 0
    m = rem0 + kv.shape[0]
    nb, left = divmod(m, r)
    first = (pos - rem0) // r
    if nb == 0:  # the partial block grows; its unused rows stay 0 / -inf
        tail_kv[off + rem0 : off + m] = kv
        tail_sc[off + rem0 : off + m] = sc
        return None, first
    rows_kv = torch.cat((tail_kv[off : off + rem0], kv), 0) if rem0 else kv
    rows_sc = torch.cat((tail_sc[off : off + rem0], sc), 0) if rem0 else sc
    bkv = rows_kv[: nb * r].view(nb, r, c * w)
    bsc = rows_sc[: nb * r].view(nb, r, c * w)
    if c == 2:
        prev_kv = torch.cat((tail_kv[None, :r], bkv[:-1]), 0)
        prev_sc = torch.cat((tail_sc[None, :r], bsc[:-1]), 0)
        kv8 = torch.cat((prev_kv[..., :w], bkv[..., w:]), 1)
        sc8 = torch.cat((prev_sc[..., :w], bsc[..., w:]), 1)
    else:
        kv8, sc8 = bkv, bsc
    pooled = (torch.softmax(sc8, dim=1) * kv8).sum(dim=1)
    if c == 2:
        tail_kv[:r] = bkv[-1]
        tail_sc[:r] = bsc[-1]
    tail_kv[off : off + left] = rows_kv[nb * r :]
    tail_sc[off : off + left] = rows_sc[nb * r :]
    tail_kv[off + left :] = 0.0
    tail_sc[off + left :] = float("-inf")
    return pooled, first


def _entries(
    plan: _Plan, pooled: torch.Tensor, first: int, idx: bool, ropes: dict[tuple[int, int], _Rope]
) -> torch.Tensor:
    """Attention._main_entries / _index_entries: norm, RoPE at each block's first position, rounding.
    `ropes`: rotations by (first position, count), shared by the CSA entries and indexer keys of a call."""
    a = plan.attn
    cmp = plan.idx_comp if idx else plan.comp
    assert cmp is not None
    key = (first * (4 if idx else a.ratio), pooled.shape[0])
    rope = ropes.get(key)
    if rope is None:
        rope = ropes[key] = _Rope(plan, torch.arange(key[1]) * (4 if idx else a.ratio) + key[0])
    e = rope(_rms(pooled, cmp.norm.weight, cmp.norm.eps))
    if idx:
        assert a.indexer is not None
        return a.indexer.rotate_quant(e)
    return _fp8_kv(plan, e)


def _write_ring(window: torch.Tensor, start: int, rows: torch.Tensor) -> None:
    w = window.shape[0]
    rows = rows[-w:]
    a, n = start % w, rows.shape[0]
    if a + n <= w:
        window[a : a + n] = rows
    else:
        window[a:] = rows[: w - a]
        window[: n - (w - a)] = rows[w - a :]


# ---------------------------------------------------------------------------------------------- the block
def _attend(plan: _Plan, q: torch.Tensor, keys: torch.Tensor, masked: Sequence[int] = ()) -> torch.Tensor:
    """One query q [h, d] over keys [M, d] (values = keys, MQA) with the attention sink -> [h, d]."""
    s = (q @ keys.t()).mul_(plan.scale)
    if masked:
        s[:, list(masked)] = float("-inf")
    p = torch.softmax(torch.cat((s, plan.sink), 1), dim=-1)[:, :-1]
    return p @ keys


def _entry_keys(
    plan: _Plan, ls: LayerState, total: int, qr: torch.Tensor, x: torch.Tensor, rope: _Rope
) -> torch.Tensor | None:
    """The compressed entries one query at the end of `total` entries attends (all of them are visible):
    every one while the indexer's top-k would select them all, else its choice (Attention._core)."""
    a = plan.attn
    if a.compressor is None or total == 0:
        return None
    comp = ls.entries("comp", total)
    if a.indexer is None or total <= plan.cfg.index_topk:
        return comp
    ix = a.indexer
    iq = F.linear(qr, ix.wq_b.weight).view(1, ix.n_heads, ix.head_dim)
    iq = ix.rotate_quant(rope(iq))
    iw = F.linear(x, ix.weights_proj.weight) * ix.weight_scale
    visible = torch.ones(1, total, dtype=torch.bool)
    order = a._select(iq, iw, ls.entries("idx", total), visible)
    return comp[order[0]]


def _queries(plan: _Plan, x: torch.Tensor, rope: _Rope) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [L, h, d] with RoPE, the query latent qr [L, q_lora_rank]) for normalized inputs x [L, D]."""
    a, eps = plan.attn, plan.cfg.norm_eps
    qr = _rms(F.linear(x, plan.wq_a), plan.q_norm, a.q_norm.eps)
    q = _rms(F.linear(qr, plan.wq_b).view(x.shape[0], a.n_heads, a.head_dim), None, eps)
    return rope(q), qr


def _project(
    plan: _Plan, x: torch.Tensor, positions: torch.Tensor, rope: _Rope
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Keys [T, d] (norm, RoPE, FP8 simulation) and the compressors' (kv, score) projections of normalized
    attention inputs x [T, D] (Compressor.project), all from one GEMM."""
    a = plan.attn
    parts = list(F.linear(x, plan.proj).split(plan.proj_sizes, 1))
    k = _fp8_kv(plan, rope(_rms(parts[0], plan.kv_norm, a.kv_norm.eps)))
    comp: list[torch.Tensor] = []
    for i, cmp in enumerate(c for c in (plan.comp, plan.idx_comp) if c is not None):
        comp += [parts[1 + 2 * i], parts[2 + 2 * i] + cmp.ape[positions % cmp.ratio]]
    return k, comp


def _expert(e: _Expert, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Expert.forward: clamped SwiGLU, the routing weight before the down projection."""
    h = F.silu(F.linear(x, e.w1).clamp_(max=e.limit)).mul_(F.linear(x, e.w3).clamp_(-e.limit, e.limit))
    return F.linear(h if weight is None else h.mul_(weight), e.w2)


def _moe(plan: _Plan, x: torch.Tensor) -> torch.Tensor:
    """MoE.forward for one row (the MTP block is never hash-routed): gate, shared and selected experts."""
    scores = torch.sqrt(F.softplus(x @ plan.gate_w.t()))
    assert plan.gate_bias is not None
    idx = torch.topk(scores + plan.gate_bias, plan.topk, dim=-1).indices
    w = scores.gather(1, idx)
    w = w * (plan.route_scale / w.sum())
    out = _expert(plan.shared, x, None)
    for j, e in enumerate(idx[0].tolist()):
        out += _expert(plan.experts[e], x, w[:, j : j + 1])
    return out


def _finish(
    plan: _Plan,
    o: torch.Tensor,
    rope: _Rope,
    x: torch.Tensor,
    post: torch.Tensor,
    comb: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """After the attention core at the last positions [L]: output projection, FFN, head."""
    cfg, a = plan.cfg, plan.attn
    t = o.shape[0]
    o = rope(o, inverse=True)
    u = torch.bmm(o.reshape(t, a.o_groups, -1).transpose(0, 1), plan.wo_a_t).transpose(0, 1).reshape(t, -1)
    x = _hc_post(F.linear(u, plan.wo_b), x, post, comb)
    u, post, comb = _hc_pre(x, plan.ffn_mix, cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.norm_eps)
    f = _rms(u, plan.ffn_norm, cfg.norm_eps)
    y = _hc_post(_moe(plan, f) if t == 1 else torch.cat([_moe(plan, r) for r in f.split(1)]), x, post, comb)
    n, d = y.shape[1], y.shape[2]
    flat = F.rms_norm(y.reshape(t, n * d), (n * d,), eps=cfg.norm_eps)
    pre = torch.sigmoid(torch.addcmul(plan.head_mix.base, flat @ plan.head_mix.fn_t, plan.head_mix.scale))
    z = _rms(torch.bmm(pre.add_(cfg.hc_eps).unsqueeze(1), y).squeeze(1), plan.norm, cfg.norm_eps)
    return F.linear(z, plan.head), y


def _inputs(plan: _Plan, streams: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The block's input streams: e_proj(enorm(embed(next id))) + h_proj(hnorm(main stream))."""
    eps = plan.cfg.norm_eps
    e = F.linear(_rms(F.embedding(ids, plan.embed), plan.enorm, eps), plan.e_proj)
    return F.linear(_rms(streams, plan.hnorm, eps), plan.h_proj).add_(e.unsqueeze(-2))


def _attn_in(plan: _Plan, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = plan.cfg
    u, post, comb = _hc_pre(x, plan.attn_mix, cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.norm_eps)
    return _rms(u, plan.attn_norm, cfg.norm_eps), post, comb


@torch.inference_mode()
def commit(
    model: V4Model,
    layers: Sequence[LayerState],
    positions: Sequence[int],
    streams: Sequence[torch.Tensor],
    next_ids: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """`mtp_extend(..., last_only=True)` for drafting (see the module docstring): sequence i consumes the
    main streams [n_i, hc, D] at positions[i].. with the tokens one later, extending layers[i]. Returns the
    logits [B, V] at each sequence's last position and the block's output streams there [B, hc, D]."""
    plan = _plan(model)
    a = plan.attn
    sizes = [len(t) for t in next_ids]
    ids = torch.tensor([t for ts in next_ids for t in ts], dtype=torch.long)
    one = len(sizes) == 1
    h = streams[0] if one else torch.cat(list(streams))
    pos = torch.cat([torch.arange(p, p + n) for p, n in zip(positions, sizes, strict=True)])
    x = _inputs(plan, h, ids)
    xn, post, comb = _attn_in(plan, x)
    ends = torch.tensor(sizes).cumsum(0).tolist()
    pick = slice(ends[0] - 1, ends[0]) if one else torch.tensor([e - 1 for e in ends])
    xl = xn[pick]
    rope = _Rope(plan, pos)
    rl = rope.rows(pick) if pos.shape[0] > 1 else rope
    q, qr = _queries(plan, xl, rl)
    k, cp = _project(plan, xn, pos, rope)
    ckv = csc = ikv = isc = None
    if plan.comp is not None:
        ckv, csc = cp[0], cp[1]
    if plan.idx_comp is not None:
        ikv, isc = cp[-2], cp[-1]
    outs = []
    for i, (ls, p, n) in enumerate(zip(layers, positions, sizes, strict=True)):
        ropes: dict[tuple[int, int], _Rope] = {}
        lo, hi = ends[i] - n, ends[i]
        if plan.comp is not None:
            assert ckv is not None and csc is not None and ls.comp_tail_kv is not None
            assert ls.comp_tail_score is not None
            pooled, first = _pool_into(
                plan.comp, ls.comp_tail_kv, ls.comp_tail_score, ckv[lo:hi], csc[lo:hi], p
            )
            if pooled is not None:
                ls.append_entries("comp", first, _entries(plan, pooled, first, False, ropes))
        if plan.idx_comp is not None:
            assert ikv is not None and isc is not None and ls.idx_tail_kv is not None
            assert ls.idx_tail_score is not None
            ip, ifirst = _pool_into(
                plan.idx_comp, ls.idx_tail_kv, ls.idx_tail_score, ikv[lo:hi], isc[lo:hi], p
            )
            if ip is not None:
                ls.append_entries("idx", ifirst, _entries(plan, ip, ifirst, True, ropes))
        _write_ring(ls.window, p + n - min(n, ls.window.shape[0]), k[lo:hi])
        end = p + n  # the last query sits at end - 1: its window is the ring's valid rows
        kw = ls.window if end >= a.window else ls.window[:end]
        total = end // a.ratio if a.ratio else 0
        ent = _entry_keys(plan, ls, total, qr[i : i + 1], xl[i : i + 1], rl.rows(slice(i, i + 1)))
        outs.append(_attend(plan, q[i], kw if ent is None else torch.cat((kw, ent), 0)))
    o = outs[0][None] if one else torch.stack(outs)
    return _finish(plan, o, rl, x[pick], post[pick], comb[pick])


@torch.inference_mode()
def chained(
    model: V4Model,
    layers: Sequence[LayerState],
    positions: Sequence[int],
    streams: torch.Tensor,
    next_ids: Sequence[int],
    pending_keys: Sequence[list[torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One position per sequence past its committed MTP state (positions[i] = the state's position plus
    len(pending_keys[i])), from the block's own output streams [B, hc, D], without writing the state (see
    the module docstring). Appends each position's key to pending_keys[i]; returns (logits [B, V], y)."""
    plan = _plan(model)
    a = plan.attn
    ids = torch.tensor(list(next_ids), dtype=torch.long)
    pos = torch.tensor(list(positions))
    x = _inputs(plan, streams, ids)
    xn, post, comb = _attn_in(plan, x)
    rope = _Rope(plan, pos)
    k = _fp8_kv(plan, rope(_rms(F.linear(xn, plan.wkv), plan.kv_norm, a.kv_norm.eps)))
    q, qr = _queries(plan, xn, rope)
    outs = []
    w = a.window
    for i, (ls, p) in enumerate(zip(layers, positions, strict=True)):
        prev = pending_keys[i]
        prev.append(k[i : i + 1])
        base = p - len(prev) + 1  # the committed state's position
        kw = ls.window if base >= w else ls.window[:base]
        # the ring holds positions max(0, base - W) .. base - 1; those before p - W + 1 are outside the window
        masked = [j % w for j in range(max(0, base - w), p - w + 1)]
        total = base // a.ratio if a.ratio else 0
        ent = _entry_keys(plan, ls, total, qr[i : i + 1], xn[i : i + 1], rope.rows(slice(i, i + 1)))
        keys = torch.cat((kw, *prev), 0) if ent is None else torch.cat((kw, *prev, ent), 0)
        outs.append(_attend(plan, q[i], keys, masked))
    o = outs[0][None] if len(outs) == 1 else torch.stack(outs)
    return _finish(plan, o, rope, x, post, comb)


__all__ = ["chained", "commit", "supported"]
