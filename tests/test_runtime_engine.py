"""Engine (runtime/engine.py) and prefix cache (runtime/prefix_cache.py) on CPU with the tiny-test preset.

Every output is compared token for token with `generate()` run alone on a fresh state: continuous batching,
chunked prefill, cached prefixes, forks, eviction and the disk tier must not change a single token. No
test depends on wall-clock time: interleaving is checked from the engine's step records.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.engine import Engine, StepRecord
from agentkit.runtime.engine_request import (
    EngineClosed,
    EngineError,
    RequestError,
    RequestHandle,
)
from agentkit.runtime.generate import SamplingParams, generate
from agentkit.runtime.model import V4Model
from agentkit.runtime.state import SequenceState

SEED = 0


@cache
def _model() -> V4Model:
    return V4Model(ModelConfig.preset("tiny-test")).init_random_(SEED).eval()


@pytest.fixture(scope="module")
def model() -> V4Model:
    return _model()


@pytest.fixture
def engine(model: V4Model) -> Iterator[Engine]:
    with Engine(model) as e:
        yield e


def greedy(n: int, **kw: object) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, **kw)  # type: ignore[arg-type]


def reference(model: V4Model, prompt: list[int], params: SamplingParams) -> list[int]:
    """What `generate()` gives for the request run alone on a fresh state, decoding plainly (where
    generate.py knows speculative decoding, a seeded sample would draw its random numbers differently)."""
    if "speculative" in {f.name for f in dataclasses.fields(SamplingParams)}:
        params = dataclasses.replace(params, speculative=0)  # type: ignore[call-arg]
    return generate(model, model.new_state(), prompt, params).token_ids


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(2, 256) for _ in range(n)]


# ---------------------------------------------------------------------- continuous batching
def test_32_concurrent_requests_from_threads_equal_generate_alone(model: V4Model) -> None:
    """32 requests of different lengths from 4 threads at random moments, 6 cancelled midway, under a
    tight max_seqs and byte budget: each finished one equals generate() alone; each cancelled one got a
    prefix of it; no step exceeded the prefill budget or the byte budget; everything is freed at the end."""
    rng = random.Random(1)
    lengths = [1, 2, 17, 127, 128, 129, 255, 300, 513, 700, 1100, 40] * 3
    reqs = []
    for i in range(32):
        prompt = ids(rng, lengths[i])
        if i % 5 == 3 and len([r for r in reqs if r[2]]) < 6:  # cancelled: long, so it cannot end first
            reqs.append((prompt, greedy(400, stop_token_ids=()), True))
        elif i % 7 == 0:  # seeded sampling must match too
            reqs.append((prompt, SamplingParams(temperature=0.8, top_k=20, seed=i, max_tokens=12), False))
        else:
            reqs.append((prompt, greedy(rng.randrange(3, 25)), False))
    budget = 0
    steps: list[StepRecord] = []
    over_budget: list[int] = []

    def on_step(rec: StepRecord) -> None:
        steps.append(rec)
        if eng.stats().state_bytes > budget:
            over_budget.append(rec.step)

    eng = Engine(model, max_seqs=12, prefill_chunk=256, on_step=on_step, cache_bytes=0)
    budget = 8 * eng._bytes_for(1100 + 25)
    eng.state_bytes_limit = budget
    handles: dict[int, RequestHandle] = {}
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def consume(i: int, h: RequestHandle, cancel: bool) -> None:
        try:
            toks = []
            for t in h:
                toks.append(t)
                if cancel and len(toks) == 3:
                    h.cancel()
            got[i] = toks
        except BaseException as e:
            errors.append(e)

    def submitter(part: list[int], seed: int) -> None:
        r = random.Random(seed)
        consumers = []
        for i in part:
            threading.Event().wait(r.random() * 0.03)
            prompt, params, cancel = reqs[i]
            h = eng.submit(prompt, params)
            handles[i] = h
            t = threading.Thread(target=consume, args=(i, h, cancel))
            t.start()
            consumers.append(t)
        for t in consumers:
            t.join()

    order = list(range(32))
    rng.shuffle(order)
    threads = [threading.Thread(target=submitter, args=(order[k::4], k)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    n_cancelled = 0
    for i, (prompt, params, cancel) in enumerate(reqs):
        res = handles[i].result()
        assert res.token_ids == got[i]
        if cancel:
            n_cancelled += 1
            assert res.finish_reason == "cancelled"
            assert 3 <= len(got[i]) < 400
            assert got[i] == reference(model, prompt, greedy(len(got[i]), stop_token_ids=())), i
        else:
            assert res.finish_reason != "cancelled"
            assert got[i] == reference(model, prompt, params), i
    assert n_cancelled == 6
    assert not over_budget
    assert all(sum(n for _, n in s.prefill) <= 256 for s in steps)
    assert max(len(s.decode) + len(s.prefill) for s in steps) <= 12
    assert any(s.decode and s.prefill for s in steps)  # decode and prefill shared steps
    st = eng.stats()
    assert st.running == st.waiting == st.state_bytes == 0
    eng.close()


def test_decoding_sequences_keep_streaming_during_a_long_prefill(engine: Engine, model: V4Model) -> None:
    """A 2000-token prompt is extended in chunks of prefill_chunk, and the running sequence gets a token in
    every one of those steps (from the step records, not from timing)."""
    steps: list[StepRecord] = []
    engine.on_step = steps.append
    rng = random.Random(2)
    a = engine.submit(ids(rng, 20), greedy(60, stop_token_ids=()))
    next(iter(a))  # a is decoding
    long_prompt = ids(rng, 2000)
    b = engine.submit(long_prompt, greedy(5))
    assert b.result().token_ids == reference(model, long_prompt, greedy(5))
    prefill_steps = [s for s in steps if any(rid == b.id for rid, _ in s.prefill)]
    assert len(prefill_steps) >= 2000 // engine.prefill_chunk
    assert all(n <= engine.prefill_chunk for s in prefill_steps for rid, n in s.prefill if rid == b.id)
    assert all(a.id in s.decode for s in prefill_steps)
    a.cancel()


def test_state_bytes_are_exact_and_bound_admission(model: V4Model) -> None:
    """The reservation equals the bytes a preallocated state really holds, and a budget for two
    sequences never runs three at once (the third waits, then runs and matches)."""
    with Engine(model, cache_bytes=0) as probe:
        st = model.new_state(max_len=777)
        real = sum(t.numel() * t.element_size() for ls in st.layers for t in ls.tensors().values())
        assert probe._bytes_for(777) == real
        per = probe._bytes_for(50 + 20)
    peak: list[int] = []
    eng = Engine(
        model, state_bytes=2 * per, cache_bytes=0, on_step=lambda r: peak.append(eng.stats().running)
    )
    rng = random.Random(3)
    prompts = [ids(rng, 50) for _ in range(3)]
    hs = [eng.submit(p, greedy(20, stop_token_ids=())) for p in prompts]
    for p, h in zip(prompts, hs, strict=True):
        assert h.result().token_ids == reference(model, p, greedy(20, stop_token_ids=()))
    assert max(peak) == 2
    with pytest.raises(RequestError, match="state_bytes"):
        eng.submit(ids(rng, 20000), greedy(20))
    eng.close()


def test_static_decoder_states(model: V4Model) -> None:
    """With a StaticDecoder the engine's states are slab rows (all-decode steps take its fixed-shape step);
    outputs still equal generate() alone and every slot goes back to the slab."""
    rng = random.Random(12)
    prompts = [ids(rng, n) for n in (5, 130, 300, 600, 40, 9)]
    params = greedy(12, stop_token_ids=())
    other = V4Model(model.config).init_random_(SEED).eval()  # static_decoder() attaches to its model
    dec = other.static_decoder(max_batch=4, max_len=1024, graphs=False)
    steps: list[StepRecord] = []
    with Engine(other, decoder=dec, on_step=steps.append) as eng:
        assert eng.max_seqs == 4
        outs = [h.result().token_ids for h in [eng.submit(p, params) for p in prompts]]
    assert outs == [reference(model, p, params) for p in prompts]
    assert dec.free_slots == 4
    assert any(s.decode and not s.prefill for s in steps)


# ---------------------------------------------------------------------- prefix cache
def test_shared_prefix_is_prefilled_once_and_outputs_match_without_cache(model: V4Model) -> None:
    rng = random.Random(4)
    prefix = ids(rng, 1024)
    suffixes = [ids(rng, rng.randrange(1, 300)) for _ in range(16)]
    for k, s in enumerate(suffixes):  # distinct first suffix tokens: the shared part is exactly the prefix
        s[0] = 100 + k
    prompts = [prefix + s for s in suffixes]
    params = greedy(8)
    outs = {}
    for cache_on in (True, False):
        with Engine(model, cache_bytes=(64 << 20) if cache_on else 0) as eng:
            hs = [eng.submit(p, params) for p in prompts]  # all at once: later ones wait for the snapshot
            outs[cache_on] = [h.result() for h in hs]
            st = eng.stats()
        if cache_on:
            assert st.cache.misses == 1 and st.cache.hits == 15
            assert st.cache.tokens_reused == 15 * 1024
            assert sorted(r.cached_tokens for r in outs[True]) == [0] + [1024] * 15
            # the prefix was extended once: every prompt token counted, minus 15 restored prefixes
            assert st.prefill_tokens == sum(map(len, prompts)) - 15 * 1024
        else:
            assert st.prefill_tokens == sum(map(len, prompts))
            assert st.cache.hits == 0
    for p, a, b in zip(prompts, outs[True], outs[False], strict=True):
        assert a.token_ids == b.token_ids == reference(model, p, params)


def test_repeated_and_extended_prompts_reuse_their_last_block(engine: Engine, model: V4Model) -> None:
    rng = random.Random(5)
    p = ids(rng, 700)
    first = engine.generate(p, greedy(6))
    again = engine.generate(p, greedy(6))
    extended = p + first.token_ids + ids(rng, 30)
    longer = engine.generate(extended, greedy(6))
    assert first.cached_tokens == 0 and again.cached_tokens == 640 and longer.cached_tokens == 640
    assert first.token_ids == again.token_ids == reference(model, p, greedy(6))
    assert longer.token_ids == reference(model, extended, greedy(6))


def test_eviction_under_a_tiny_budget_keeps_outputs(model: V4Model) -> None:
    rng = random.Random(6)
    snap = model.new_state()
    model.extend(snap, ids(rng, 384))
    one = snap.snapshot().nbytes()
    with Engine(model, cache_bytes=one + one // 4, snapshot_every=None) as eng:
        prefixes = [ids(rng, 384) for _ in range(3)]
        prompts = [pre + ids(rng, 20) for pre in prefixes for _ in range(2)]
        order = [0, 1, 2, 4, 3, 5]  # A1 A2 B1 C1 B2 C2: A2 hits, B1 evicts A, C1 evicts B, B2 misses
        outs = {i: eng.generate(prompts[i], greedy(5)) for i in order}
        st = eng.stats().cache
    assert st.evictions >= 2 and st.bytes_held <= one + one // 4 and st.snapshots == 1
    assert outs[1].cached_tokens == 384 and outs[3].cached_tokens == 0
    for i in order:
        assert outs[i].token_ids == reference(model, prompts[i], greedy(5)), i


_CHILD = """
import json, sys, torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.engine import Engine
from agentkit.runtime.generate import SamplingParams
from agentkit.runtime.model import V4Model
torch.set_num_threads(1)
model = V4Model(ModelConfig.preset("tiny-test")).init_random_(int(sys.argv[2])).eval()
prompt = json.loads(sys.argv[3])
with Engine(model, cache_bytes=0, cache_dir=sys.argv[1]) as eng:
    res = eng.generate(prompt, SamplingParams(temperature=0.0, max_tokens=8))
    st = eng.stats().cache
print(json.dumps({"tokens": res.token_ids, "cached": res.cached_tokens, "disk_hits": st.disk_hits,
                  "hits": st.hits, "corrupt": st.disk_corrupt}))
"""


def _child(cache_dir: Path, prompt: list[int]) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cache_dir), str(SEED), json.dumps(prompt)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_disk_tier_round_trip_in_a_new_process_and_corrupt_files(model: V4Model, tmp_path: Path) -> None:
    rng = random.Random(7)
    prompt = ids(rng, 400)
    want = reference(model, prompt, greedy(8))
    with Engine(model, cache_bytes=0, cache_dir=tmp_path, snapshot_every=128) as eng:
        assert eng.generate(prompt, greedy(8)).token_ids == want
        files = eng.cache.files()
        assert eng.stats().cache.disk_writes == len(files) == 3  # 128, 256, 384
    child = _child(tmp_path, prompt)
    assert child == {"tokens": want, "cached": 384, "disk_hits": 1, "hits": 1, "corrupt": 0}

    # a flipped byte anywhere (header, tensor data, last byte) is detected, the file dropped, the next
    # shorter prefix used and the rest recomputed, and the file written again
    deepest = max(files, key=lambda f: SequenceState.from_bytes(f.read_bytes()).pos)
    size = deepest.stat().st_size
    for offset in (12, size // 2, size - 1):
        blob = bytearray(deepest.read_bytes())
        blob[offset] ^= 0x5A
        deepest.write_bytes(bytes(blob))
        with Engine(model, cache_bytes=0, cache_dir=tmp_path, snapshot_every=128) as eng:
            res = eng.generate(prompt, greedy(8))
            st = eng.stats().cache
        assert res.token_ids == want, offset
        assert st.disk_corrupt == 1 and st.disk_hits == 1 and res.cached_tokens == 256, offset
        assert SequenceState.from_bytes(deepest.read_bytes()).pos == 384  # rewritten whole
    assert _child(tmp_path, prompt)["tokens"] == want


# ---------------------------------------------------------------------- forks
def test_fork_8_ways_equals_each_continuation_from_scratch(engine: Engine, model: V4Model) -> None:
    rng = random.Random(8)
    prompt = ids(rng, 300)
    src = engine.submit(prompt, greedy(10, stop_token_ids=()), keep_state=True)
    parent = src.result()
    assert parent.state is not None and parent.state.pos == 310 and parent.last_logits is not None
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=12, stop_token_ids=()) for s in range(8)]
    before = engine.stats().prefill_tokens
    branches = [h.result() for h in engine.fork(src, 8, params)]
    assert engine.stats().prefill_tokens == before  # nothing re-prefilled
    context = prompt + parent.token_ids
    for p, b in zip(params, branches, strict=True):
        assert b.cached_tokens == 310
        assert b.token_ids == reference(model, context, p)
    assert len({tuple(b.token_ids) for b in branches}) > 1

    # with new tokens: only they are extended; from a bare state too
    suffix = ids(rng, 5)
    before = engine.stats().prefill_tokens
    outs = [h.result().token_ids for h in engine.fork(src, 3, greedy(6), suffix=suffix)]
    assert engine.stats().prefill_tokens == before + 3 * 5
    assert outs == [reference(model, context + suffix, greedy(6))] * 3
    assert parent.state is not None
    (h,) = engine.fork(parent.state, 1, greedy(6), suffix=suffix)
    assert h.result().token_ids == outs[0]
    with pytest.raises(RequestError, match="at least one new token"):
        engine.fork(parent.state, 2, greedy(6))
    no_state = engine.submit(prompt, greedy(2))
    no_state.result()
    with pytest.raises(RequestError, match="keep_state"):
        engine.fork(no_state, 2, greedy(6))


def test_fork_continues_a_pending_token(engine: Engine, model: V4Model) -> None:
    """feed_last=False leaves the last token out of the state; a fork extends it first."""
    rng = random.Random(9)
    prompt = ids(rng, 200)
    src = engine.submit(prompt, greedy(7, stop_token_ids=(), feed_last=False), keep_state=True)
    res = src.result()
    assert res.pending == res.token_ids[-1:] and res.state is not None and res.state.pos == 206
    (h,) = engine.fork(src, 1, greedy(5))
    assert h.result().token_ids == reference(model, prompt + res.token_ids, greedy(5))


def test_submit_continues_a_kept_state_and_never_writes_it(engine: Engine, model: V4Model) -> None:
    """An agent's next turn: `submit(new_ids, state=kept)` extends only the new ids, equals the whole
    context run from scratch, and leaves the kept state as it was, so two continuations of it can run at
    once (an agent's forked branches) and a third later still gets the same answer."""
    rng = random.Random(11)
    prompt = ids(rng, 260)
    first = engine.submit(prompt, greedy(6, stop_token_ids=()), keep_state=True).result()
    kept = first.state
    assert kept is not None and kept.pos == 266
    frozen = [{k: v.clone() for k, v in ls.tensors().items()} for ls in kept.layers]
    context = prompt + first.token_ids
    suffixes = [ids(rng, 7), ids(rng, 150)]
    before = engine.stats().prefill_tokens
    hs = [engine.submit(sfx, greedy(8), state=kept, keep_state=True) for sfx in suffixes]
    outs = [h.result() for h in hs]
    assert engine.stats().prefill_tokens == before + 7 + 150  # the kept context was not prefilled again
    for sfx, out in zip(suffixes, outs, strict=True):
        assert out.cached_tokens == 266 and out.prompt_tokens == len(sfx)
        assert out.token_ids == reference(model, context + sfx, greedy(8))
        assert out.state is not None and out.state.pos == 266 + len(sfx) + len(out.token_ids)
    assert kept.pos == 266
    for ls, was in zip(kept.layers, frozen, strict=True):
        assert all(torch.equal(v, was[k]) for k, v in ls.tensors().items())
    again = engine.submit(suffixes[0], greedy(8), state=kept).result()
    assert again.token_ids == outs[0].token_ids


def test_a_later_turn_given_its_context_files_its_boundaries_in_the_prefix_cache(
    engine: Engine, model: V4Model
) -> None:
    """An agent's later turn (`submit(suffix, state=kept, context=history)`) snapshots the block boundaries
    of its suffix under history + suffix, so another request sharing that history restores them."""
    rng = random.Random(12)
    prompt = ids(rng, 300)
    first = engine.submit(prompt, greedy(6, stop_token_ids=()), keep_state=True).result()
    history = prompt + first.token_ids  # what the kept state covers: 306 ids, a snapshot at 256
    assert first.state is not None and first.state.pos == len(history)
    turn = ids(rng, 200)  # prefills 306..506: the boundary at 384 falls in it
    second = engine.submit(
        turn, greedy(6, stop_token_ids=()), state=first.state, context=history, keep_state=True
    ).result()
    assert second.cached_tokens == 306 and second.prompt_tokens == 200
    other = history + turn + second.token_ids + ids(rng, 20)  # a new request sharing the whole history
    hits = engine.stats().cache.hits
    res = engine.submit(other, greedy(8)).result()
    assert res.cached_tokens == 384 and engine.stats().cache.hits == hits + 1
    assert res.token_ids == reference(model, other, greedy(8))
    # without its context a continuation files nothing (it cannot know what its state covers)
    with Engine(model) as bare:
        kept = bare.submit(prompt, greedy(6, stop_token_ids=()), keep_state=True).result().state
        bare.submit(turn, greedy(6, stop_token_ids=()), state=kept).result()
        assert bare.submit(other, greedy(8)).result().cached_tokens == 256
    with pytest.raises(RequestError, match="context has"):
        engine.submit(turn, greedy(2), state=first.state, context=history[:-1])
    with pytest.raises(RequestError, match="pass the state"):
        engine.submit(turn, greedy(2), context=history)


def test_logits_processor_shapes_each_sample_and_its_failure_is_the_request_s_own(
    engine: Engine, model: V4Model
) -> None:
    forced = [7, 8, 9, 10]
    seen: list[list[int]] = []

    def force(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        seen.append(list(generated))
        out = torch.full_like(logits, float("-inf"))
        out[forced[len(generated)]] = 0.0
        return out

    def broken(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        raise ValueError("bad constraint")

    rng = random.Random(12)
    prompt = ids(rng, 40)
    ok = engine.submit(prompt, greedy(4, stop_token_ids=()), logits_processor=force)
    bad = engine.submit(prompt, greedy(4), logits_processor=broken)
    plain = engine.submit(prompt, greedy(4, stop_token_ids=()))
    assert ok.result().token_ids == forced
    assert seen == [forced[:k] for k in range(4)]
    with pytest.raises(EngineError, match="bad constraint"):
        bad.result()
    assert plain.result().token_ids == reference(model, prompt, greedy(4, stop_token_ids=()))


# ---------------------------------------------------------------------- errors and cancellation
def test_bad_requests_get_typed_errors_and_do_not_disturb_others(engine: Engine, model: V4Model) -> None:
    rng = random.Random(10)
    good_prompt = ids(rng, 150)
    good = engine.submit(good_prompt, greedy(40, stop_token_ids=()))
    for bad in ([], [256], [-1], [3, 1.5], list(range(2, 256)) * 300):
        with pytest.raises(RequestError):
            engine.submit(bad)  # type: ignore[arg-type]
    with pytest.raises(RequestError):
        engine.submit(torch.zeros(3))

    def broken_decode(_: list[int]) -> str:
        raise UnicodeError("decoder blew up")

    failing = engine.submit(ids(rng, 30), SamplingParams(temperature=0.0, max_tokens=5), decode=broken_decode)
    with pytest.raises(EngineError, match="decoder blew up"):
        list(failing)
    with pytest.raises(EngineError):
        failing.result()
    queued = engine.submit(ids(rng, 10), greedy(5))
    queued.cancel()
    assert queued.result().finish_reason == "cancelled"
    assert good.result().token_ids == reference(model, good_prompt, greedy(40, stop_token_ids=()))
    engine.close()
    with pytest.raises(EngineClosed):
        engine.submit([5])


def test_forward_failure_fails_only_that_batch(model: V4Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward that raises ends its batch's requests with EngineError; the engine keeps serving."""
    with Engine(model, cache_bytes=0) as eng:
        calls = {"n": 0}

        def flaky(real: Any) -> Any:  # the engine's forward: extend, or extend_hidden when speculating
            def fn(*a: object, **kw: object) -> object:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise MemoryError("simulated")
                return real(*a, **kw)

            return fn

        for name in ("extend", "extend_hidden"):
            monkeypatch.setattr(model, name, flaky(getattr(model, name)))
        first = eng.submit([5, 6, 7], greedy(3))
        with pytest.raises(EngineError, match="simulated"):
            first.result()
        monkeypatch.undo()
        assert eng.generate([5, 6, 7], greedy(3)).token_ids == reference(model, [5, 6, 7], greedy(3))


# ---------------------------------------------------------------------- async (asyncio and trio)
BACKENDS = ["asyncio"] + (["trio"] if importlib.util.find_spec("trio") else [])


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_async_streams_under_anyio(anyio_backend: str, model: V4Model) -> None:
    rng = random.Random(11)
    prompts = [ids(rng, n) for n in (5, 140, 300, 600)]
    with Engine(model, cache_bytes=0) as eng:
        handles = [eng.submit(p, greedy(12)) for p in prompts]
        got: dict[int, list[int]] = {}

        async def consume(h: RequestHandle) -> None:
            got[h.id] = [t async for t in h]

        long = eng.submit(ids(rng, 50), greedy(400, stop_token_ids=()))
        partial: list[int] = []

        async def cancel_after_three() -> None:
            async for t in long:
                partial.append(t)
                if len(partial) == 3:
                    long.cancel()

        blocked = eng.submit(ids(rng, 50), greedy(400, stop_token_ids=()))

        async def waits_forever() -> None:
            async for _ in blocked:
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            for h in handles:
                tg.start_soon(consume, h)
            tg.start_soon(cancel_after_three)
            async with anyio.create_task_group() as inner:  # a consumer cancelled while it waits
                inner.start_soon(waits_forever)
                await anyio.wait_all_tasks_blocked()
                inner.cancel_scope.cancel()
        assert not blocked.done  # cancelling a reader does not cancel the request
        blocked.cancel()
        for p, h in zip(prompts, handles, strict=True):
            assert got[h.id] == reference(model, p, greedy(12))
            assert (await h.aresult()).token_ids == got[h.id]
        assert (await long.aresult()).finish_reason == "cancelled"
        assert 3 <= len(partial) < 400
