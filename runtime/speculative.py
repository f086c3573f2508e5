"""Speculative decoding with V4's own MTP block (spec §8): draft with the block, verify with one main extend.

A step of one sequence at main position P, with the next token t already chosen but not yet fed:

1. Draft. The MTP block runs at the positions whose main streams it has not consumed yet (the last one is
   P-1, paired with t) and predicts d1; for k > 1 it is chained on its own output streams (the main streams
   of the drafted positions do not exist yet) for d2..dk. Those chained positions are speculative in the
   MTP layer's state too and are rolled back after the verify. On the CPU (fp32 float weights) the block
   runs through runtime/mtp_draft.py instead: the same function in far fewer operators, whose chained
   positions never enter the MTP state (nothing to roll back).
2. Verify. One main `extend` of [t, d1..dk] gives the main logits at P..P+k and the main streams there.
3. Accept. Greedy: d_i is kept while it equals the main argmax. Sampling: standard speculative sampling
   (keep d_i with probability min(1, p/q), else draw from normalize(max(0, p - q)); after k kept drafts a
   bonus token from p), with the same temperature / top-k / top-p processing applied to p and q, so the
   output distribution is the plain one.
4. Roll back. The main state is truncated exactly to the kept tokens (below), and the MTP block keeps the
   main streams of the kept positions to consume at the next draft (merged into that draft's one call).

Rollback without snapshots (`Journal`): before a k+1-token extend at P, save the k+1 window-ring rows it will
overwrite (slots (P..P+k) mod W), and record what each compressor's `pool` is given (its tail before the
extend and the chunk's fp32 projections). Truncating to Q = P + kept: put the saved ring rows of positions
Q..P+k back, and recompute each tail as `pool(tail before, projections of P..Q-1)` - the very function an
extend of just those tokens runs, and tail rows are copies of projections, so the bytes are identical.
Compressed entries and indexer keys need nothing: entries at index >= Q // r are invalid by position (a
block that completed on a rejected token is re-pooled when its block really completes). This holds across
a 4-token (CSA) or 128-token (HCA) boundary inside the rejected tokens, and for preallocated / slab states
(everything is written in place).

The MTP state (`DraftState`) is kept beside the `SequenceState`, not inside it: the output never depends on
it (a cold or stale MTP state only lowers acceptance; greedy tokens and the sampled distribution stay the
plain ones), so the main state's byte format, snapshots, the engine, the prefix cache and the static decoder
are unchanged. It has its own snapshot / bytes for callers that keep it across turns.

One idea: speculative decoding - its MTP state, the rollback that makes verification exact, the acceptance
rule and the loop that ties them together; each part exists only for the others.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from agentkit.runtime import mtp_draft
from agentkit.runtime.layers.attention import Attention
from agentkit.runtime.layers.compressor import Compressor
from agentkit.runtime.lookup import TokenLookup
from agentkit.runtime.state import LayerState, SequenceState, StateError, StateFormatError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

if TYPE_CHECKING:
    from agentkit.runtime.model import V4Model

# generate.py imports this module, so its types are structural here (no import cycle): SamplingParams and
# generate's per-sequence record (.params, .gen, .result, .done, .draft, .push)
SamplingParams = Any
_Seq = Any
Sampler = Callable[[torch.Tensor, Any, "torch.Generator | None"], int]

DRAFT_FORMAT_NAME = "agentkit.v4.mtp_state"
AUTO_MIN_ACCEPTANCE = 0.3
"""With the automatic default, a sequence stops drafting once AUTO_PROBE drafts were accepted at less than
this rate: a verify of k + 1 tokens plus an MTP call then costs more than the tokens it wins."""
AUTO_PROBE = 8
COLD_WINDOW = 128
"""A sequence without an MTP state for its history (a first turn, a state restored without one) starts the
block at its last COLD_WINDOW positions only: its window then holds what it would have held after the whole
history, its compressed entries before that read as zeros. Output is unaffected (drafts are verified);
on agentkit-tiny's held-out turns acceptance is the same as with the whole prompt (bench/speculative.py)."""
DRAFT_FORMAT_VERSION = 1
AUTO_LOOKUP = 6
"""Prompt-lookup drafts after the MTP block's when `SamplingParams.lookup` is None (greedy requests only):
see bench/speculative.py for the measured choice."""
MAX_LOOKUP = 16
"""At most this many lookup drafts per step (a verify's span stays far inside one window for the journal)."""


# ---------------------------------------------------------------------------------------------- MTP state
@dataclass
class DraftState:
    """The MTP block's per-sequence state: its attention layer's state, and the main streams it has not
    consumed yet. Invariant: `pos + len(streams) == ` the main state's position (`main_pos`)."""

    layer: LayerState
    pos: int
    """MTP positions processed (position p pairs the main streams at p with the token at p + 1)."""
    streams: torch.Tensor
    """[m, hc, D] main final streams at positions pos .. pos + m - 1, waiting for their next tokens."""
    ids: list[int] = field(default_factory=list)
    """The tokens at positions pos + 1 .. pos + m - 1 (the last pending position's token is not known yet)."""
    lookup: TokenLookup = field(default_factory=TokenLookup)
    """The main state's tokens as far as they were seen, indexed for prompt lookup (runtime/lookup.py)."""

    @property
    def main_pos(self) -> int:
        return self.pos + self.streams.shape[0]

    @classmethod
    def cold(cls, model: V4Model, main_pos: int) -> DraftState:
        """An MTP state for a main state at `main_pos` whose history the block never saw (e.g. a session
        restored from bytes): its window and entries read as zeros. Correct output, lower acceptance until
        the window has refilled."""
        c = model.config
        layer = model.new_mtp_layer(max_len=max(main_pos, 1))
        empty = torch.zeros(0, c.hc_mult, c.dim, dtype=model.dtype, device=model.device)
        return cls(layer=layer, pos=main_pos, streams=empty)

    def snapshot(self) -> DraftState:
        layer = LayerState.of(self.layer.ratio, {k: v.clone() for k, v in self.layer.tensors().items()})
        return DraftState(layer, self.pos, self.streams.clone(), list(self.ids), self.lookup.copy())

    def to_bytes(self) -> bytes:
        tensors = {f"layer.{k}": v.detach().contiguous().cpu() for k, v in self.layer.tensors().items()}
        tensors["streams"] = self.streams.detach().contiguous().cpu()
        tensors["lookup"] = torch.tensor(self.lookup.tokens, dtype=torch.int32)
        meta = {
            "format": DRAFT_FORMAT_NAME,
            "version": str(DRAFT_FORMAT_VERSION),
            "pos": str(self.pos),
            "ratio": str(self.layer.ratio),
            "ids": json.dumps(self.ids),
            "sha256": _digest(tensors),
        }
        return st_save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, blob: bytes, device: torch.device | str | None = None) -> DraftState:
        try:
            n = int.from_bytes(blob[:8], "little")
            meta = json.loads(blob[8 : 8 + n])["__metadata__"]
            tensors = st_load(blob)
        except Exception as e:
            raise StateFormatError(f"corrupt MTP state blob: {e}") from e
        if meta.get("format") != DRAFT_FORMAT_NAME or meta.get("version") != str(DRAFT_FORMAT_VERSION):
            raise StateFormatError(f"not an MTP state blob of version {DRAFT_FORMAT_VERSION}")
        if _digest(tensors) != meta.get("sha256"):
            raise StateFormatError("MTP state checksum mismatch (blob corrupted)")
        fields = {
            k.removeprefix("layer."): v.to(device) for k, v in tensors.items() if k.startswith("layer.")
        }
        layer = LayerState.of(int(meta["ratio"]), fields)
        lookup = TokenLookup()
        if "lookup" in tensors:  # blobs written before prompt lookup have none
            lookup.extend(tensors["lookup"].tolist())
        ids = list(json.loads(meta["ids"]))
        return cls(layer, int(meta["pos"]), tensors["streams"].to(device), ids, lookup)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- rollback
@dataclass
class _PoolLog:
    """What one compressor was given over a journaled span: its tail before, then the chunks' projections."""

    tail_kv: torch.Tensor
    tail_score: torch.Tensor
    pos: int
    kv: list[torch.Tensor] = field(default_factory=list)
    score: list[torch.Tensor] = field(default_factory=list)


_LOCAL = threading.local()
_HOOK_LOCK = threading.Lock()
_HOOKED: dict[int, int] = {}  # id(compressor) -> number of active journals using its hook


def _recording_pool(comp: Compressor) -> Callable[..., Any]:
    original = type(comp).pool.__get__(comp)

    def pool(
        tail_kv: torch.Tensor, tail_score: torch.Tensor, kv: torch.Tensor, score: torch.Tensor, pos: int
    ) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
        logs: dict[int, _PoolLog] | None = getattr(_LOCAL, "logs", None)
        if logs is not None:
            log = logs.get(id(tail_kv))
            if log is None:
                log = logs[id(tail_kv)] = _PoolLog(tail_kv.clone(), tail_score.clone(), pos)
            log.kv.append(kv.detach())
            log.score.append(score.detach())
        return original(tail_kv, tail_score, kv, score, pos)

    return pool


def _compressors(attn: Attention) -> list[Compressor]:
    out = [] if attn.compressor is None else [attn.compressor]
    if attn.indexer is not None:
        out.append(attn.indexer.compressor)
    return out


@contextmanager
def _hooks(comps: Sequence[Compressor]) -> Iterator[None]:
    """Route the compressors' `pool` through a recorder while a journal is open (in this thread only:
    other threads' calls pass straight through)."""
    with _HOOK_LOCK:
        for c in comps:
            if _HOOKED.get(id(c), 0) == 0:
                c.pool = _recording_pool(c)  # type: ignore[method-assign]
            _HOOKED[id(c)] = _HOOKED.get(id(c), 0) + 1
    try:
        yield
    finally:
        with _HOOK_LOCK:
            for c in comps:
                _HOOKED[id(c)] -= 1
                if _HOOKED[id(c)] == 0:
                    del _HOOKED[id(c)]
                    del c.pool


class Journal:
    """Undo information for extends of some layer states from a start position, enough to truncate them
    back to any position in between (see the module docstring)."""

    def __init__(self, pairs: Sequence[tuple[LayerState, Attention]], start: int, count: int) -> None:
        if count > min(a.window for _, a in pairs):
            raise StateError(f"a journal covers at most one window of tokens, not {count}")
        self.pairs = list(pairs)
        self.start, self.count = start, count
        self.rows = [_ring(ls.window, attn.window, start, count).clone() for ls, attn in self.pairs]
        self.logs: dict[int, _PoolLog] = {}

    def truncate(self, to: int) -> None:
        """Put every journaled layer state back to position `to` (start <= to <= start + count), as if the
        tokens after it had never been extended."""
        if not self.start <= to <= self.start + self.count:
            raise StateError(
                f"cannot truncate a journal of [{self.start}, {self.start + self.count}] to {to}"
            )
        end = self.start + self.count
        if to == end:
            return
        keep = to - self.start
        with torch.no_grad():
            for (ls, attn), rows in zip(self.pairs, self.rows, strict=True):
                _set_ring(ls.window, attn.window, to, rows[keep:])
                if attn.compressor is not None:
                    assert ls.comp_tail_kv is not None and ls.comp_tail_score is not None
                    self._retail(attn.compressor, ls.comp_tail_kv, ls.comp_tail_score, keep)
                if attn.indexer is not None:
                    assert ls.idx_tail_kv is not None and ls.idx_tail_score is not None
                    self._retail(attn.indexer.compressor, ls.idx_tail_kv, ls.idx_tail_score, keep)

    def _retail(self, comp: Compressor, tail_kv: torch.Tensor, tail_score: torch.Tensor, keep: int) -> None:
        log = self.logs.get(id(tail_kv))
        if log is None or log.pos != self.start:
            raise StateError("the journal did not record this compressor's extend; cannot roll back")
        kv, score = torch.cat(log.kv)[:keep], torch.cat(log.score)[:keep]
        _, _, new_kv, new_score = type(comp).pool(comp, log.tail_kv, log.tail_score, kv, score, self.start)
        tail_kv.copy_(new_kv)
        tail_score.copy_(new_score)


def _ring(window: torch.Tensor, w: int, start: int, count: int) -> torch.Tensor:
    """Rows of positions start .. start + count - 1 of a window ring (a view when they do not wrap)."""
    a = start % w
    if a + count <= w:
        return window[a : a + count]
    return window[torch.arange(start, start + count, device=window.device) % w]


def _set_ring(window: torch.Tensor, w: int, start: int, rows: torch.Tensor) -> None:
    a, n = start % w, rows.shape[0]
    if a + n <= w:
        window[a : a + n] = rows
    else:
        window[torch.arange(start, start + n, device=window.device) % w] = rows


@contextmanager
def record(journals: Sequence[Journal]) -> Iterator[None]:
    """Extends of the journaled states inside this block are recorded into their journals (one block may
    cover several extends, e.g. a chain of one-token MTP drafts)."""
    merged: dict[int, _PoolLog] = {}
    for j in journals:
        merged.update(j.logs)
    comps = {id(c): c for j in journals for _, a in j.pairs for c in _compressors(a)}
    prev = getattr(_LOCAL, "logs", None)
    _LOCAL.logs = merged
    try:
        with _hooks(list(comps.values())):
            yield
    finally:
        _LOCAL.logs = prev
        for j in journals:  # hand each journal the logs of its own tails
            for ls, _ in j.pairs:
                for t in (ls.comp_tail_kv, ls.idx_tail_kv):
                    if t is not None and id(t) in merged:
                        j.logs[id(t)] = merged[id(t)]


def main_journal(model: V4Model, state: SequenceState, count: int) -> Journal:
    pairs = [(ls, blk.attn) for ls, blk in zip(state.layers, model.layers, strict=True)]
    return Journal(pairs, state.pos, count)  # type: ignore[arg-type]


def truncate(state: SequenceState, journal: Journal, to: int) -> None:
    """Roll a main state back to `to` tokens (see `Journal.truncate`)."""
    journal.truncate(to)
    state.pos = to


# ---------------------------------------------------------------------------------------------- sampling
def probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution `generate.sample` draws from (temperature, then top-k, then top-p), normalized, on
    the CPU: what both p (main model) and q (MTP block) go through before speculative sampling."""
    lg = logits.detach().float().cpu() / params.temperature
    if 0 < params.top_k < lg.numel():
        kth = torch.topk(lg, params.top_k).values[-1]
        lg = lg.masked_fill(lg < kth, float("-inf"))
    p = torch.softmax(lg, dim=-1)
    if params.top_p < 1:
        sp, si = torch.sort(p, descending=True)
        drop = (sp.cumsum(0) - sp) >= params.top_p
        p = torch.zeros_like(p).scatter_(0, si, sp.masked_fill(drop, 0.0))
    return p / p.sum()


def is_greedy(params: SamplingParams) -> bool:
    return params.temperature == 0 or params.top_k == 1


def accept_drafts(
    main_logits: torch.Tensor,
    drafts: Sequence[int],
    draft_probs: Sequence[torch.Tensor | None],
    params: SamplingParams,
    gen: torch.Generator | None,
) -> tuple[int, int]:
    """(number of drafts kept, the token after them) from the main logits [k+1, V] of a verify.

    Greedy: keep while the draft is the main argmax; the next token is the main argmax after the kept ones.
    Sampling: keep d_i with probability min(1, p_i(d_i) / q_i(d_i)); on the first rejection draw from
    normalize(max(0, p_i - q_i)); if all are kept, draw a bonus token from p_k."""
    k = len(drafts)
    if is_greedy(params):  # generate.sample's greedy rule: argmax of the fp32 logits on the CPU
        best = main_logits[: k + 1].detach().float().cpu().argmax(-1).tolist()
        for i, d in enumerate(drafts):
            if best[i] != d:
                return i, best[i]
        return k, best[k]
    for i, d in enumerate(drafts):
        q = draft_probs[i]
        assert q is not None
        p = probs(main_logits[i], params)
        u = float(torch.rand((), generator=gen))
        if u * float(q[d]) < float(p[d]):  # u < p/q without dividing
            continue
        residual = (p - q).clamp_min(0.0)
        total = float(residual.sum())
        if total <= 0.0:  # p == q up to rounding: the residual is empty, p itself is the right law
            residual, total = p, 1.0
        return i, int(torch.multinomial(residual / total, 1, generator=gen))
    return k, int(torch.multinomial(probs(main_logits[k], params), 1, generator=gen))


# ---------------------------------------------------------------------------------------------- the loop
def draft_tokens(
    model: V4Model,
    drafts: list[DraftState],
    pending: list[int],
    ks: list[int],
    seqs: list[_Seq],
    ms: Sequence[int] | None = None,
) -> tuple[list[list[int]], list[list[torch.Tensor | None]], list[Journal | None]]:
    """Draft ks[i] tokens per sequence with the MTP block, then up to ms[i] more by prompt lookup
    (`extend_by_lookup`). The first MTP call consumes each sequence's pending main streams (with the pending
    token as the last next-token); chained calls run on the block's own streams under a journal, so that
    the MTP layer can be put back to the main position after the verify."""
    out_tokens: list[list[int]] = [[] for _ in drafts]
    out_probs: list[list[torch.Tensor | None]] = [[] for _ in drafts]
    journals: list[Journal | None] = [None] * len(drafts)
    idx = [i for i, k in enumerate(ks) if k > 0]
    if not idx:
        return out_tokens, out_probs, journals
    if mtp_draft.supported(model):
        _draft_lean(model, drafts, pending, ks, seqs, idx, out_tokens, out_probs)
    else:
        _draft_general(model, drafts, pending, ks, seqs, idx, out_tokens, out_probs, journals)
    if ms is not None:
        for i in idx:
            extend_by_lookup(drafts[i], pending[i], ms[i], seqs[i], out_tokens[i], out_probs[i])
    return out_tokens, out_probs, journals


def extend_by_lookup(
    d: DraftState, pending: int, m: int, seq: _Seq, tokens: list[int], qs: list[torch.Tensor | None]
) -> None:
    """Append up to `m` prompt-lookup drafts (runtime/lookup.py) after the MTP block's `tokens`. Their
    proposal distribution is a point mass: q is None for greedy requests, a one-hot vector otherwise (its
    vocabulary size that of the MTP drafts' q before it)."""
    got = d.lookup.propose([pending, *tokens], m)
    seq.result.lookup_drafted += len(got)
    for t in got:
        tokens.append(t)
        if is_greedy(seq.params):
            qs.append(None)
        else:
            ref = qs[0]
            assert ref is not None
            qs.append(torch.zeros_like(ref).index_fill_(0, torch.tensor([t]), 1.0))


def _draft_general(
    model: V4Model,
    drafts: list[DraftState],
    pending: list[int],
    ks: list[int],
    seqs: list[_Seq],
    idx: list[int],
    out_tokens: list[list[int]],
    out_probs: list[list[torch.Tensor | None]],
    journals: list[Journal | None],
) -> None:
    """draft_tokens through `mtp_extend` (any device): chained drafts are written into the MTP state under
    a journal each, which `settle` truncates after the verify."""
    blk = model.mtp[0]
    logits, ys = model.mtp_extend(
        [drafts[i].layer for i in idx],
        [drafts[i].pos for i in idx],
        [drafts[i].streams for i in idx],
        [[*drafts[i].ids, pending[i]] for i in idx],
        last_only=True,
    )
    last_y: dict[int, torch.Tensor] = {}
    for j, i in enumerate(idx):
        d = drafts[i]
        d.pos += d.streams.shape[0]
        d.streams, d.ids = d.streams[:0], []
        last_y[i] = ys[j][-1:]
        _pick(logits[j][-1], seqs[i], out_tokens[i], out_probs[i])
        if ks[i] > 1:
            journals[i] = Journal([(d.layer, blk.attn)], d.pos, ks[i] - 1)  # type: ignore[list-item]
    step = 1
    while True:
        idx = [i for i in idx if ks[i] > step]
        if not idx:
            break
        with record([j for j in (journals[i] for i in idx) if j is not None]):
            logits, ys = model.mtp_extend(
                [drafts[i].layer for i in idx],
                [drafts[i].pos + step - 1 for i in idx],
                [last_y[i] for i in idx],
                [[out_tokens[i][-1]] for i in idx],
                last_only=True,
            )
        for j, i in enumerate(idx):
            last_y[i] = ys[j]
            _pick(logits[j][-1], seqs[i], out_tokens[i], out_probs[i])
        step += 1


def _draft_lean(
    model: V4Model,
    drafts: list[DraftState],
    pending: list[int],
    ks: list[int],
    seqs: list[_Seq],
    idx: list[int],
    out_tokens: list[list[int]],
    out_probs: list[list[torch.Tensor | None]],
) -> None:
    """draft_tokens through runtime/mtp_draft.py (CPU): one `commit` call consumes the pending streams and
    drafts the first token; chained drafts run past the committed MTP state without writing it, so they
    need no journal."""
    logits, ys = mtp_draft.commit(
        model,
        [drafts[i].layer for i in idx],
        [drafts[i].pos for i in idx],
        [drafts[i].streams for i in idx],
        [[*drafts[i].ids, pending[i]] for i in idx],
    )
    last_y: dict[int, torch.Tensor] = {}
    for j, i in enumerate(idx):
        d = drafts[i]
        d.pos += d.streams.shape[0]
        d.streams, d.ids = d.streams[:0], []
        last_y[i] = ys[j]
        _pick(logits[j], seqs[i], out_tokens[i], out_probs[i])
    keys: dict[int, list[torch.Tensor]] = {i: [] for i in idx}
    step = 1
    while True:
        idx = [i for i in idx if ks[i] > step]
        if not idx:
            return
        logits, ys = mtp_draft.chained(
            model,
            [drafts[i].layer for i in idx],
            [drafts[i].pos + step - 1 for i in idx],
            torch.stack([last_y[i] for i in idx]),
            [out_tokens[i][-1] for i in idx],
            [keys[i] for i in idx],
        )
        for j, i in enumerate(idx):
            last_y[i] = ys[j]
            _pick(logits[j], seqs[i], out_tokens[i], out_probs[i])
        step += 1


def _pick(logits: torch.Tensor, seq: _Seq, tokens: list[int], qs: list[torch.Tensor | None]) -> None:
    if is_greedy(seq.params):
        tokens.append(int(logits.argmax()))
        qs.append(None)
    else:
        q = probs(logits, seq.params)
        tokens.append(int(torch.multinomial(q, 1, generator=seq.gen)))
        qs.append(q)


def drafts_for(
    seq: _Seq, st: SequenceState, d: DraftState, k: int, adaptive: bool, limit: int, window: int
) -> int:
    """How many tokens to draft for one sequence this step: up to `k` (or its own `speculative`), never past
    its max_tokens, its state's room or what one rollback journal spans (a verify of at most `window`
    tokens), none while the MTP state has no stream to start from (a fork sampling from kept logits), none
    once an `adaptive` sequence's acceptance proved too low."""
    r = seq.result
    if adaptive and gave_up(seq):  # keep the MTP state at the main position, holding no streams
        d.pos, d.streams, d.ids = d.main_pos, d.streams[:0], []
        return 0
    if d.streams.shape[0] == 0:
        return 0
    room = min(limit, st.capacity or limit) - st.pos - 1
    want, own = k, seq.params.speculative
    if own is not None:
        want = min(k, own)
    return max(0, min(want, window - 1, seq.params.max_tokens - len(r.token_ids) - 1, room))


def lookups_for(seq: _Seq, st: SequenceState, k: int, limit: int, window: int) -> int:
    """How many prompt-lookup drafts may follow a step's `k` MTP drafts: the request's `lookup` (None:
    AUTO_LOOKUP for greedy requests, none for sampled ones), within its max_tokens, its state's room and one
    rollback journal's span (`window` tokens of verify); none without MTP drafts."""
    if k == 0:
        return 0
    want = seq.params.lookup
    if want is None:
        want = AUTO_LOOKUP if is_greedy(seq.params) else 0
    room = min(limit, st.capacity or limit) - st.pos - 1
    left = seq.params.max_tokens - len(seq.result.token_ids) - 1
    return max(0, min(want, left - k, room - k, window - 1 - k, MAX_LOOKUP))


def gave_up(seq: _Seq) -> bool:
    """An automatically speculating sequence whose MTP drafts proved not worth it (AUTO_MIN_ACCEPTANCE;
    prompt-lookup drafts are not counted: they cost no MTP call)."""
    r = seq.result
    drafted, accepted = r.drafted - r.lookup_drafted, r.accepted - r.lookup_accepted
    return bool(drafted >= AUTO_PROBE and accepted < AUTO_MIN_ACCEPTANCE * drafted)


def speculative_loop(
    model: V4Model,
    states: Sequence[SequenceState],
    prompts: Sequence[Sequence[int] | torch.Tensor],
    seqs: Sequence[_Seq],
    k: int,
    drafts: Sequence[DraftState | None] | None = None,
    *,
    sample: Sampler,
    adaptive: bool = False,
) -> Iterator[tuple[int, int]]:
    """`generate._loop` with MTP drafts of up to `k` tokens per step: yields (sequence index, token id).
    `sample` draws the first token from the prompt's logits (generate.sample). `adaptive`: a sequence
    whose acceptance is below AUTO_MIN_ACCEPTANCE after AUTO_PROBE drafts continues without drafts."""
    n = len(states)  # the request was validated by generate._run
    given = list(drafts) if drafts is not None else [None] * n
    limit, window = model.config.max_seq_len, model.config.window_size
    seqs = list(seqs)
    logits, hs = model.extend_hidden(list(states), list(prompts), last_only=True)
    pending: list[int] = [0] * n
    active: list[int] = []
    dstates = [
        start_draft(model, d, st, h, p) for d, st, h, p in zip(given, states, hs, prompts, strict=True)
    ]
    for i in range(n):
        seqs[i].draft = dstates[i]
        tok = sample(logits[i][-1], seqs[i].params, seqs[i].gen)
        seqs[i].push(tok)
        yield i, tok
        if _finish(model, states[i], dstates[i], seqs[i], tok, limit):
            continue
        pending[i] = tok
        active.append(i)
    while active:
        ks, ms = [0] * n, [0] * n
        for i in active:
            ks[i] = drafts_for(seqs[i], states[i], dstates[i], k, adaptive, limit, window)
            ms[i] = lookups_for(seqs[i], states[i], ks[i], limit, window)
        dt, dq, mtp_journals = draft_tokens(model, dstates, pending, ks, seqs, ms)
        chunks = [[pending[i], *dt[i]] for i in active]
        journals = [main_journal(model, states[i], len(c)) for i, c in zip(active, chunks, strict=True)]
        with record(journals):
            vlogits, vh = model.extend_hidden([states[i] for i in active], chunks)
        going: list[int] = []
        for j, i in enumerate(active):
            seq, st, d = seqs[i], states[i], dstates[i]
            looked = len(dt[i]) - ks[i]
            toks, ended = settle(
                seq, st, d, journals[j], mtp_journals[i], chunks[j], dq[i], vlogits[j], vh[j], looked
            )
            for tok in toks:
                yield i, tok
            if ended is not None or _finish(model, st, d, seq, toks[-1], limit):
                continue
            pending[i] = toks[-1]
            going.append(i)
        active = going


def start_draft(
    model: V4Model,
    draft: DraftState | None,
    state: SequenceState,
    h: torch.Tensor,
    chunk: Sequence[int] | torch.Tensor,
    before: Sequence[int] = (),
) -> DraftState:
    """The MTP state for a sequence whose main state just took `chunk` (streams `h`): the given one when it
    was at the chunk's start (a session's previous turn: the block then consumes only the new tokens), else
    a cold one that sees only the chunk's last COLD_WINDOW positions (see COLD_WINDOW), whose lookup index
    gets `before` (known tokens just before the chunk, e.g. a prompt's earlier chunks) and the whole chunk."""
    start = state.pos - len(chunk)
    if draft is not None and draft.main_pos == start:
        _absorb(draft, h, chunk)
        return draft
    ratio = max(model.config.compress_ratios[model.config.n_layers], 1)
    first = max(start, -(-(state.pos - COLD_WINDOW) // ratio) * ratio)  # a block boundary of the MTP layer
    first = min(first, state.pos - 1)
    d = DraftState.cold(model, first)
    d.lookup.extend([*before, *(int(t) for t in chunk[: first - start])])  # the block sees only the tail
    _absorb(d, h[first - start :], chunk[first - start :])
    return d


def settle(
    seq: _Seq,
    st: SequenceState,
    d: DraftState,
    journal: Journal,
    mtp_journal: Journal | None,
    chunk: Sequence[int],
    draft_probs: Sequence[torch.Tensor | None],
    vlogits: torch.Tensor,
    vh: torch.Tensor,
    looked: int = 0,
) -> tuple[list[int], int | None]:
    """One sequence after the verify extend of `chunk` = [pending token, *drafts] (under `journal`; the
    last `looked` drafts came from prompt lookup): count,
    accept, push the chosen tokens to `seq`, roll the main and MTP states back to what was kept and queue
    the kept positions' streams for the block. Returns (the tokens chosen, in order; ended): `ended` is None
    when the last token chosen is the next pending one (not in the state), else a kept draft ended the
    sequence and `ended` is the row of `vlogits` after the state's last position (the state holds the stop
    token with feed_last; without it the token is `seq.result.pending`)."""
    drafts = list(chunk[1:])
    start = st.pos - len(chunk)
    seq.result.steps += 1
    seq.result.drafted += len(drafts)
    if mtp_journal is not None:
        mtp_journal.truncate(d.pos)  # the chained MTP positions were drafts
    kept, nxt = accept_drafts(vlogits, drafts, draft_probs, seq.params, seq.gen)
    seq.result.accepted += kept
    seq.result.lookup_accepted += max(0, kept - (len(drafts) - looked))
    out: list[int] = []
    for m, tok in enumerate(drafts[:kept]):
        seq.push(tok)
        out.append(tok)
        if seq.done:  # a kept draft ended the sequence: keep the state up to it
            fed = m + 2 if seq.params.feed_last else m + 1
            truncate(st, journal, start + fed)
            _absorb(d, vh[:fed], chunk[:fed])
            if not seq.params.feed_last:
                seq.result.pending = [tok]
            return out, fed - 1
    truncate(st, journal, start + kept + 1)
    _absorb(d, vh[: kept + 1], chunk[: kept + 1])
    seq.push(nxt)
    out.append(nxt)
    return out, None


def _absorb(d: DraftState, h: torch.Tensor, chunk: Sequence[int] | torch.Tensor) -> None:
    """Queue main streams for the MTP block; the tokens of a chunk's 2nd..last positions become the next
    tokens of the queued positions before them (the first one's next token is the chunk's first)."""
    ids = [int(t) for t in chunk]
    d.lookup.extend(ids)
    if d.streams.shape[0]:
        d.ids.append(ids[0])
    d.ids.extend(ids[1:])
    d.streams = torch.cat((d.streams, h.to(d.streams.dtype)), 0)


def _finish(model: V4Model, st: SequenceState, d: DraftState, seq: _Seq, tok: int, limit: int) -> bool:
    """After choosing `tok` (not in the state): True when the sequence is over, feeding it first if the
    plain loop would (feed_last and room), else leaving it pending."""
    room = st.pos < limit
    if not seq.done and room:
        return False
    if seq.done and seq.params.feed_last and room:
        _, h = model.extend_hidden([st], [[tok]])
        seq.result.steps += 1
        _absorb(d, h[0], [tok])
    else:
        seq.done = True
        seq.result.pending = [tok]
    return True


__all__ = [
    "AUTO_MIN_ACCEPTANCE",
    "DRAFT_FORMAT_NAME",
    "DraftState",
    "Journal",
    "accept_drafts",
    "draft_tokens",
    "drafts_for",
    "gave_up",
    "lookups_for",
    "main_journal",
    "probs",
    "record",
    "settle",
    "speculative_loop",
    "start_draft",
    "truncate",
]
