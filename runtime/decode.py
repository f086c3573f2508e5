"""Static decode: one token for each of B sequences as a fixed-shape step over preallocated slabs, replayable
as a CUDA graph.

`V4Model.extend` is the one general forward (any chunk, any position) and the reference. Its decode step is
launch-bound on a GPU: Python loops over sequences, shapes that change every step (window length, number of
compressed entries), host syncs for expert grouping. This module runs the same math for the case that
dominates serving - every sequence gets exactly one new token - with every shape fixed by (batch, max_len)
and every position a device tensor, so a step launches the same kernels on the same addresses each time and
can be captured once per batch size and replayed:

- State lives in slabs, one per layer: `kv [slots, W + entries, head_dim]` holds each sequence's window
  ring (rows 0..W-1, slot = pos mod W) followed by its compressed entries; indexer keys and compressor tails
  likewise. A `SequenceState` handed out by `new_state()` is plain views of one slab row, so prefill,
  snapshots, `to_bytes` and `restore` work on it as on any state (the general path writes it in place).
- The compressor runs branch-free: the new token's projections go into the tail at row pos mod r, the entry
  being pooled is computed every step and written at index pos // r, where it stays invisible (attention sees
  entries below (pos + 1) // r) until the step that completes its block; then the tail rolls over.
- Attention is the sparse kernel over one candidate list per query: its W window rows in position order, then
  the indexer's top-k entries (CSA) or all entries (HCA), empty slots -1. The indexer scores every slot of
  the preallocated entries and masks the invisible ones.
- The MoE uses the fused grouped kernel on CUDA (no host sync); everything else is the model's own modules.

Results equal `extend`'s up to fp32 summation order (the candidate lists hold the same rows in the same
order; the split of the candidate loop differs), which tests/test_runtime_decode.py checks on CPU; on CUDA,
bench/kernel_ab.py compares greedy tokens with kernels and graphs on and off.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from agentkit.runtime.graphs import GRAPH_BATCHES, DecodeGraphs, GreedyStep
from agentkit.runtime.kernels import compressor as compressor_kernel
from agentkit.runtime.kernels import enabled as kernels_enabled
from agentkit.runtime.kernels import family_on
from agentkit.runtime.kernels import indexer as indexer_kernel
from agentkit.runtime.kernels import moe as moe_kernel
from agentkit.runtime.kernels import sparse_attn as sparse_kernel
from agentkit.runtime.layers.attention import Attention
from agentkit.runtime.layers.compressor import Compressor
from agentkit.runtime.layers.mhc import hc_post
from agentkit.runtime.layers.topk import stable_topk
from agentkit.runtime.state import LayerState, SequenceState, StateError, config_key, entry_capacity

if TYPE_CHECKING:
    from agentkit.runtime.model import Block, V4Model


class DecodeError(ValueError):
    """A static decode request the decoder cannot serve (foreign state, full slab, beyond max_len)."""


@dataclass
class LayerSlab:
    """One layer's state for every slot (see the module docstring for the layout)."""

    ratio: int
    kv: torch.Tensor
    comp_tail_kv: torch.Tensor | None = None
    comp_tail_score: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    idx_tail_kv: torch.Tensor | None = None
    idx_tail_score: torch.Tensor | None = None


def _tails(slots: int, ratio: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    c = 2 if ratio == 4 else 1
    kv = torch.zeros(slots, c * ratio, c * width, dtype=torch.float32, device=device)
    return kv, torch.full_like(kv, float("-inf"))


class StaticDecoder:
    """Slab-backed states for up to `max_batch` sequences of up to `max_len` tokens, and their decode step."""

    def __init__(
        self,
        model: V4Model,
        *,
        max_batch: int = 32,
        max_len: int = 8192,
        graphs: bool = True,
        compile: bool = False,
    ):
        cfg = model.config
        if not 0 < max_len <= cfg.max_seq_len:
            raise DecodeError(f"max_len must be in [1, {cfg.max_seq_len}], got {max_len}")
        if max_batch < 1:
            raise DecodeError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.max_batch, self.max_len = model, max_batch, max_len
        # torch.compile (opt-in): inductor fuses the step's small elementwise ops (norms, RoPE, mHC mixing,
        # the compressor update) around the Triton kernels; one compilation per batch size. Fusion keeps
        # fp32 intermediates that eager bf16 rounds, so bf16 logits move within bf16 noise (not bitwise).
        self.step_fn = torch.compile(self.forward, dynamic=False) if compile else self.forward
        self.window = cfg.window_size
        dev, dt = model.device, model.dtype
        self.n_slots = max_batch + 1  # the last slot is scratch: graph warm-up and padding rows write there
        self.scratch = max_batch
        self.layers: list[LayerSlab] = []
        for i in range(cfg.n_layers):
            r = cfg.ratio(i)
            rows = self.window + (entry_capacity(max_len, r) if r else 0)
            ls = LayerSlab(r, torch.zeros(self.n_slots, rows, cfg.head_dim, dtype=dt, device=dev))
            if r:
                ls.comp_tail_kv, ls.comp_tail_score = _tails(self.n_slots, r, cfg.head_dim, dev)
            if r == 4:
                cap = entry_capacity(max_len, 4)
                ls.idx = torch.zeros(self.n_slots, cap, cfg.index_head_dim, dtype=dt, device=dev)
                ls.idx_tail_kv, ls.idx_tail_score = _tails(self.n_slots, 4, cfg.index_head_dim, dev)
            self.layers.append(ls)
        self._free = list(range(max_batch - 1, -1, -1))
        self._owned: weakref.WeakValueDictionary[int, SequenceState] = weakref.WeakValueDictionary()
        self._fin: dict[int, weakref.finalize] = {}
        self._key = config_key(cfg)
        self.graphs = graphs and model.device.type == "cuda"
        self._graph_runner: DecodeGraphs | None = None

    # ------------------------------------------------------------------ slots
    def new_state(self) -> SequenceState:
        """A fresh state living in a free slab row (freed again when the state is garbage or released)."""
        if not self._free:
            raise DecodeError(f"all {self.max_batch} decoder slots are in use")
        slot = self._free.pop()
        self._reset(slot)
        layers = []
        for ls in self.layers:
            st = LayerState(ratio=ls.ratio, window=ls.kv[slot, : self.window])
            if ls.ratio:
                st.comp = ls.kv[slot, self.window :]
                st.comp_tail_kv, st.comp_tail_score = ls.comp_tail_kv[slot], ls.comp_tail_score[slot]  # type: ignore[index]
            if ls.idx is not None:
                st.idx = ls.idx[slot]
                st.idx_tail_kv, st.idx_tail_score = ls.idx_tail_kv[slot], ls.idx_tail_score[slot]  # type: ignore[index]
            layers.append(st)
        state = SequenceState(
            pos=0,
            layers=layers,
            dtype=self.model.dtype,
            config_key=self._key,
            capacity=self.max_len,
            slot=slot,
        )
        self._owned[slot] = state
        self._fin[slot] = weakref.finalize(state, self._free.append, slot)
        return state

    def release(self, state: SequenceState) -> None:
        """Give the state's slot back now; the state is unusable afterwards."""
        if not self.owns(state):
            raise DecodeError("this state does not belong to this decoder")
        assert state.slot is not None
        del self._owned[state.slot]
        self._fin.pop(state.slot)()  # frees the slot once: the finalizer is spent and will not run again
        state.slot, state.capacity = None, None
        state.layers = []
        state.broken = "released from its decoder"

    def owns(self, state: SequenceState) -> bool:
        return state.slot is not None and self._owned.get(state.slot) is state

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @torch.no_grad()
    def _reset(self, slot: int) -> None:
        for ls in self.layers:
            ls.kv[slot].zero_()
            for t, fill in (
                (ls.comp_tail_kv, 0.0),
                (ls.comp_tail_score, float("-inf")),
                (ls.idx, 0.0),
                (ls.idx_tail_kv, 0.0),
                (ls.idx_tail_score, float("-inf")),
            ):
                if t is not None:
                    t[slot].fill_(fill)

    # ------------------------------------------------------------------ the step
    def step(self, states: Sequence[SequenceState], tokens: Sequence[int]) -> torch.Tensor:
        """Append one token to each state; fp32 next-token logits [B, V]. Inputs are checked first."""
        self._check(states, tokens)
        return self._launch(states, tokens, None, keep=True)

    def step_greedy(self, states: Sequence[SequenceState], tokens: Sequence[int] | GreedyStep) -> GreedyStep:
        """`step` for greedy decoding: returns each row's argmax id on its way to the host, not the logits.

        `tokens` may be the previous `GreedyStep` of exactly these states: its ids are then fed from the
        device, so the host can launch step n+1 before it has read token n and read token n while the GPU
        runs step n+1 (generate.py's pipelined greedy loop). A synchronous step leaves the GPU idle while the
        host reads the token, checks stop rules and launches the next replay: ~0.3 ms of a 2.9 ms FP8/FP4
        step on an H100 (README, issue 16)."""
        prev = tokens if isinstance(tokens, GreedyStep) else None
        self._check(states, None if prev is not None else tokens)  # type: ignore[arg-type]
        slots = tuple(s.slot for s in states)
        if prev is not None and (prev.slots != slots or prev.pos != tuple(s.pos for s in states)):
            raise DecodeError("a GreedyStep feeds only the states of the step that made it, right after it")
        ids = prev.ids if prev is not None else None
        with torch.inference_mode():
            logits = self._launch(states, [0] * len(states) if prev else tokens, ids, keep=False)  # type: ignore[arg-type]
            top = logits.argmax(-1)
        return GreedyStep(slots, tuple(s.pos for s in states), top, list(states))

    def _check(self, states: Sequence[SequenceState], tokens: Sequence[int] | None) -> None:
        if not states or (tokens is not None and len(states) != len(tokens)):
            n = "no" if tokens is None else len(tokens)
            raise DecodeError(f"need one token per state, got {len(states)} states and {n} tokens")
        if len(states) > self.max_batch:
            raise DecodeError(f"batch of {len(states)} > max_batch={self.max_batch}")
        if len({id(s) for s in states}) != len(states):
            raise DecodeError("the same state appears twice in one batch")
        vocab = self.model.config.vocab_size
        for s in states:
            if not self.owns(s):
                raise DecodeError("state was not made by this decoder (use decoder.new_state())")
            if s.broken:
                raise StateError(f"state is broken ({s.broken}); restore a snapshot before extending it")
            if s.pos + 1 > self.max_len:
                raise DecodeError(f"sequence would reach {s.pos + 1} tokens > max_len={self.max_len}")
        for t in tokens or ():
            if not isinstance(t, int) or not 0 <= t < vocab:
                raise DecodeError(f"token id {t!r} out of range [0, {vocab})")

    def _launch(
        self, states: Sequence[SequenceState], tokens: Sequence[int], ids: torch.Tensor | None, *, keep: bool
    ) -> torch.Tensor:
        """Run the step (a graph replay where there is one); token ids come from `ids` (device) when given.
        keep=False may return the graph's own output rows, valid until its next replay."""
        slots = [s.slot for s in states]
        pos = [s.pos for s in states]
        try:
            with torch.inference_mode():
                if self.graphs and _capturable():
                    if self._graph_runner is None:
                        self._graph_runner = DecodeGraphs(self)
                    logits = self._graph_runner.run(slots, pos, list(tokens), ids, keep)  # type: ignore[arg-type]
                else:
                    dev = self.model.device
                    logits = self.step_fn(
                        torch.tensor(slots, device=dev),
                        torch.tensor(pos, device=dev),
                        ids if ids is not None else torch.tensor(list(tokens), device=dev),
                    )
        except BaseException as e:
            for s in states:
                s.broken = f"decode step failed at position {s.pos}: {type(e).__name__}: {e}"
            raise
        for s in states:
            s.pos += 1
        return logits

    def forward(self, slots: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The fixed-shape step: slots, positions, token ids [B] (device) -> logits [B, V] fp32."""
        m = self.model
        c = m.config
        x = m.embed(ids).to(m.dtype)
        x = x.unsqueeze(1).expand(-1, c.hc_mult, -1).contiguous()
        memo: dict[tuple[str, int], torch.Tensor] = {}  # this step's index tensors, shared by the layers
        for mod, slab in zip(m.layers, self.layers, strict=True):
            block = cast("Block", mod)
            u, post, comb = block._pre(x, block.hc_attn_fn, block.hc_attn_base, block.hc_attn_scale)
            a = self._attention(block.attn, block.attn_norm(u), pos, slots, slab, memo)
            x = block._ffn(hc_post(a, x, post, comb), ids)
        return m._logits(x, m.hc_head_fn, m.hc_head_base, m.hc_head_scale, m.norm)

    def _attention(
        self,
        attn: Attention,
        x: torch.Tensor,
        pos: torch.Tensor,
        slots: torch.Tensor,
        slab: LayerSlab,
        memo: dict[tuple[str, int], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One layer's attention for one token per slot. `memo` keeps the index tensors that depend only on
        the step (window row, candidate rows, entry numbers), so the layers of a step compute them once: at
        batch 1 each is a launch, and a step is bounded by its launches."""
        memo = {} if memo is None else memo

        def once(key: str, n: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
            if (key, n) not in memo:
                memo[(key, n)] = make()
            return memo[(key, n)]

        p = attn._project(x, pos)
        w, rows = self.window, slab.kv.shape[1]
        with torch.no_grad():
            slab.kv[slots, once("mod", w, lambda: pos % w)] = p.k.to(slab.kv.dtype)
        base = once("base", rows, lambda: slots * rows)

        def window_rows() -> torch.Tensor:
            ppos = pos[:, None] - (w - 1) + torch.arange(w, device=pos.device)[None]
            return torch.where(ppos >= 0, base[:, None] + ppos.remainder(w), -1)

        cand = once("cand", rows, window_rows)
        r = attn.ratio
        if r:
            assert attn.compressor is not None and p.ckv is not None and p.csc is not None
            assert slab.comp_tail_kv is not None and slab.comp_tail_score is not None
            pooled = _pool_step(
                attn.compressor, slab.comp_tail_kv, slab.comp_tail_score, p.ckv, p.csc, pos, slots
            )
            entry = once("div", r, lambda: pos // r)
            with torch.no_grad():
                slab.kv[slots, once("row", r, lambda: w + entry)] = attn._main_entries(
                    pooled, entry, x.dtype
                ).to(slab.kv.dtype)
            count = once("count", r, lambda: (pos + 1) // r)
            if attn.indexer is not None:
                assert (
                    slab.idx is not None and slab.idx_tail_kv is not None and slab.idx_tail_score is not None
                )
                assert p.ikv is not None and p.isc is not None and p.iq is not None and p.iw is not None
                ipooled = _pool_step(
                    attn.indexer.compressor, slab.idx_tail_kv, slab.idx_tail_score, p.ikv, p.isc, pos, slots
                )
                ientry = once("div", 4, lambda: pos // 4)
                with torch.no_grad():
                    slab.idx[slots, ientry] = attn._index_entries(ipooled, ientry, x.dtype).to(slab.idx.dtype)
                sel = _select(p.iq, p.iw, slab.idx, slots, count, attn.cfg.index_topk)
                comp_rows = torch.where(sel >= 0, base[:, None] + w + sel, -1)
            else:

                def all_entries() -> torch.Tensor:
                    e = torch.arange(rows - w, device=pos.device)[None]
                    return torch.where(e < count[:, None], base[:, None] + w + e, -1)

                comp_rows = once(f"entries{r}", rows, all_entries)
            cand = torch.cat((cand, comp_rows), 1)
        kv = slab.kv.view(-1, slab.kv.shape[-1])
        scale = 1.0 / math.sqrt(attn.head_dim)
        if sparse_kernel.supported(p.q) and kernels_enabled():
            o = sparse_kernel.sparse_attn(p.q, kv, cand, attn.attn_sink, scale)
        else:
            o = sparse_kernel.sparse_attn_ref(p.q, kv, cand, attn.attn_sink, scale)
        return attn._output(o, pos)


def _pool_step(
    comp: Compressor,
    tail_kv: torch.Tensor,
    tail_score: torch.Tensor,
    kv: torch.Tensor,
    score: torch.Tensor,
    pos: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """Branch-free `Compressor.pool` for one token per slot: write the token into its tail row, pool the block
    it belongs to (meaningful once complete), roll the tail over where the block completed. Returns the pooled
    entries [B, width] fp32; the tails are updated in place with the same bytes `pool` would leave."""
    r, c, w = comp.ratio, comp.c, comp.width
    if compressor_kernel.supported(tail_kv, r) and kernels_enabled():
        return compressor_kernel.pool_step(tail_kv, tail_score, kv, score, pos, slots, r, w)
    off = r if c == 2 else 0
    rem = pos % r
    with torch.no_grad():
        tail_kv[slots, off + rem] = kv
        tail_score[slots, off + rem] = score
    tk, ts = tail_kv[slots], tail_score[slots]  # [B, c*r, c*w]
    if c == 2:  # overlap: the previous block's first halves, this block's second halves
        kv8 = torch.cat((tk[:, :r, :w], tk[:, r:, w:]), 1)
        sc8 = torch.cat((ts[:, :r, :w], ts[:, r:, w:]), 1)
    else:
        kv8, sc8 = tk, ts
    pooled = (torch.softmax(sc8, dim=1) * kv8).sum(dim=1)
    done = (rem == r - 1)[:, None, None]
    with torch.no_grad():
        if c == 2:
            new_kv = torch.cat((torch.where(done, tk[:, r:], tk[:, :r]), tk[:, r:].masked_fill(done, 0.0)), 1)
            new_sc = torch.cat(
                (torch.where(done, ts[:, r:], ts[:, :r]), ts[:, r:].masked_fill(done, float("-inf"))), 1
            )
        else:
            new_kv, new_sc = tk.masked_fill(done, 0.0), ts.masked_fill(done, float("-inf"))
        tail_kv[slots] = new_kv
        tail_score[slots] = new_sc
    return pooled


def _select(
    iq: torch.Tensor,
    iw: torch.Tensor,
    keys: torch.Tensor,
    slots: torch.Tensor,
    count: torch.Tensor,
    topk: int,
) -> torch.Tensor:
    """Top-k indexer entries per query over the whole preallocated row [B, k], -1 where fewer are visible.

    Same scores as `Attention._select` (ReLU-weighted head sum, invisible entries -inf) and the same set,
    ties included: where several entries tie at the k-th score (ReLU makes exact zeros common when the
    indexer has few heads), the lowest indices win, as the stable sort there decides, and in the same order
    (`stable_topk`)."""
    with torch.no_grad():
        if indexer_kernel.supported(iq) and kernels_enabled():
            scores = indexer_kernel.index_scores(iq, iw, keys, slots, count)
        else:
            scores = indexer_kernel.index_scores_ref(iq, iw, keys, slots, count)
        sel = stable_topk(scores, min(topk, keys.shape[1]))
        # -inf entries are exactly the invisible ones (from `count` on), so ties among them do not matter
        return torch.where(sel < count[:, None], sel, -1)


def _capturable() -> bool:
    """A CUDA graph cannot hold a host sync, and the torch MoE path has one (it groups the (token, expert)
    pairs on the host): with the MoE kernel off (`AGENTKIT_KERNELS=0`, or its family in
    `AGENTKIT_KERNELS_OFF`) the step runs eagerly instead of failing its capture."""
    return moe_kernel.HAVE_TRITON and kernels_enabled() and family_on(moe_kernel.__name__)


__all__ = ["GRAPH_BATCHES", "DecodeError", "GreedyStep", "LayerSlab", "StaticDecoder"]
