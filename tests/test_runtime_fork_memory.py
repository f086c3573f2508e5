"""Forks share their parent's state copy-on-write (issue 17's forks bar), measured in bytes actually held.

Eight branches continue one 4K-token session (tiny-test preset, fp32, CPU), each with its own 16 new
prompt tokens and 112 greedy tokens, all running at once on one engine. What they hold together is measured
as distinct storages (`held_bytes`: every tensor's storage counted once by address), both while all eight
decode (the engine's preallocated running states) and afterwards (their kept states). Each branch must
also give exactly what the same context run from scratch gives: tokens, and the state's bytes.

The bar's "their new tokens": what a session holds for its most recent tokens - the window ring (the last
128 tokens' keys) and the compressor tails (the pooling block in progress), which each branch rewrites
entirely within its first 128 new tokens, plus the compressed entries and indexer keys the new tokens add.
With 128 new tokens per branch nothing a branch owns is anything but its new tokens' state; everything
before the fork point (the 4K tokens' entries) must be held once, whatever the number of branches.
"""

from __future__ import annotations

import json
import random
from functools import cache

import pytest
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.engine import Engine, StepRecord
from agentkit.runtime.generate import SamplingParams, generate
from agentkit.runtime.model import V4Model
from agentkit.runtime.state import (
    SequenceState,
    StateError,
    fixed_state_bytes,
    held_bytes,
    kv_bytes_per_token,
)

SESSION = 4096
BRANCHES = 8
SUFFIX = 16
GENERATED = SESSION // 32 - SUFFIX  # 128 new tokens per branch in all
CHUNK = 512


@cache
def _model() -> V4Model:
    return V4Model(ModelConfig.preset("tiny-test")).init_random_(17).eval()


def content(st: SequenceState) -> dict[str, str]:
    """A state's serialized header: position, layout and the SHA-256 over every tensor's name, dtype, shape
    and bytes (the blob's own key order is not deterministic: safetensors writes a hash map)."""
    blob = st.to_bytes()
    return dict(json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"])


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, stop_token_ids=())


def test_8_branches_of_a_4k_session_hold_its_entries_once_and_equal_runs_from_scratch() -> None:
    model, cfg = _model(), _model().config
    rng = random.Random(4096)
    prompt = [rng.randrange(2, 256) for _ in range(SESSION - 1)]
    suffixes = [[rng.randrange(2, 256) for _ in range(SUFFIX)] for _ in range(BRANCHES)]

    peak: list[int] = []

    def measure(_: StepRecord) -> None:  # on the scheduler thread, between steps: states are at rest
        live = [r.state for r in eng._running if r.state is not None and r.phase != "done"]
        if len(live) == BRANCHES:
            peak.append(held_bytes(kept, *live))

    with Engine(model, cache_bytes=0, prefill_chunk=CHUNK, on_step=measure) as eng:
        parent = eng.submit(prompt, greedy(1), keep_state=True).result()
        kept = parent.state
        assert kept is not None and kept.pos == SESSION
        before = content(kept)
        session = held_bytes(kept)
        assert session == kept.nbytes()  # a kept state holds exactly its content
        hs = [eng.submit(s, greedy(GENERATED), state=kept, keep_state=True) for s in suffixes]
        outs = [h.result() for h in hs]
    assert content(kept) == before  # the parent is never written

    # memory: the session's entries once, each branch only its window, tails and new entries
    new_tokens = SUFFIX + GENERATED
    per_branch = fixed_state_bytes(cfg, 4) + new_tokens * kv_bytes_per_token(cfg, "bf16") * 2
    allowance = 1.2 * session + BRANCHES * per_branch
    branches = [o.state for o in outs if o.state is not None]
    assert len(branches) == BRANCHES and peak
    after = held_bytes(kept, *branches)
    copies = session + sum(b.nbytes() for b in branches)  # what whole copies would hold
    print(
        f"session {session} B; 8 branches running {max(peak)} B, kept {after} B; "
        f"allowance {allowance:.0f} B; whole copies {copies} B"
    )
    assert max(peak) <= allowance and after <= allowance
    assert after < copies / 3

    # each branch == the same context run from scratch (greedy), token for token
    context = prompt + parent.token_ids
    for s, out, st in zip(suffixes, outs, branches, strict=True):
        ref = generate(model, SequenceState.fresh(cfg, dtype=model.dtype), context + s, greedy(GENERATED))
        assert out.cached_tokens == SESSION and out.token_ids == ref.token_ids
        assert st.pos == SESSION + new_tokens
    assert len({tuple(o.token_ids) for o in outs}) > 1

    # byte for byte: a branch extended alone == an independent copy of the parent extended alike (the
    # engine's batched steps move float rounding in the last bit, shared or not, so this runs unbatched)
    for s in suffixes[:2]:
        shared = SequenceState.branch(kept, SESSION + new_tokens)
        copy = SequenceState.from_bytes(kept.to_bytes())
        a = generate(model, shared, s, greedy(GENERATED // 4))
        b = generate(model, copy, s, greedy(GENERATED // 4))
        assert a.token_ids == b.token_ids and content(shared) == content(copy)
        assert content(shared.snapshot()) == content(copy) == content(SequenceState.branch(shared, 5000))
    assert content(kept) == before


def test_snapshots_and_branches_share_entries_without_ever_writing_them() -> None:
    """A snapshot of a growable state references its entry rows; extending the original, the snapshot or
    a branch of it afterwards changes none of the others, and each equals the same tokens run alone."""
    model, cfg = _model(), _model().config
    rng = random.Random(5)
    a, b, c = ([rng.randrange(2, 256) for _ in range(n)] for n in (700, 90, 130))
    st = SequenceState.fresh(cfg, dtype=model.dtype)
    model.extend(st, a)
    snap = st.snapshot()

    def stores(s: SequenceState) -> list[int]:
        return [t.untyped_storage().data_ptr() for ls in s.layers for t in (ls.comp, ls.idx) if t is not None]

    assert stores(snap) == stores(st)
    assert held_bytes(st, snap) < held_bytes(st) + fixed_state_bytes(cfg, 4) + 1
    snap_before = content(snap)
    branch = SequenceState.branch(snap, 700 + len(c))
    model.extend(st, b)  # the original grows in place past the shared rows
    model.extend(branch, c)
    assert content(snap) == snap_before
    model.extend(snap, c)
    for got, tokens in ((st, a + b), (branch, a + c), (snap, a + c)):
        alone = SequenceState.fresh(cfg, dtype=model.dtype)
        model.extend(alone, a)
        model.extend(alone, tokens[700:])
        assert content(got) == content(alone)
    assert content(SequenceState.from_bytes(st.snapshot().to_bytes())) == content(st)
    with pytest.raises(StateError, match="branch"):
        branch.restore(snap)
