"""Static decode (runtime/decode.py) == the general extend path, slab-backed states behave as states, and the
indexer / fused-MoE kernels == their torch references (CPU: TRITON_INTERPRET=1 in a child process)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.decode import DecodeError, StaticDecoder, _pool_step
from agentkit.runtime.layers.compressor import Compressor
from agentkit.runtime.model import ModelInputError, V4Model
from agentkit.runtime.state import SequenceState, StateError, fresh_tail


@pytest.fixture(scope="module")
def model() -> V4Model:
    cfg = ModelConfig.preset("tiny-test", window_size=16)
    return V4Model(cfg).init_random_(3).eval()


def _greedy_pair(model: V4Model, prompts: list[list[int]], steps: int, max_len: int = 400):
    dec = StaticDecoder(model, max_batch=len(prompts) + 1, max_len=max_len, graphs=False)
    slab = [dec.new_state() for _ in prompts]
    ref = [model.new_state() for _ in prompts]
    for s, r, p in zip(slab, ref, prompts, strict=True):
        a = model.extend(s, p, last_only=True)
        b = model.extend(r, p, last_only=True)
        assert torch.equal(a, b)  # prefill into a slab row is the general path itself
    cur = [int(model.extend(r, [p[-1]], last_only=True).argmax()) for r, p in zip(ref, prompts, strict=True)]
    for s, p in zip(slab, prompts, strict=True):
        model.extend(s, [p[-1]])
    worst, toks_a, toks_b = 0.0, [], []
    cur_b = list(cur)
    for _ in range(steps):
        la = dec.step(slab, cur)
        lb = torch.stack(model.extend(ref, [[c] for c in cur_b], last_only=True))  # type: ignore[arg-type]
        worst = max(worst, ((la - lb).abs().max() / lb.abs().max()).item())
        cur, cur_b = la.argmax(-1).tolist(), lb.argmax(-1).tolist()
        toks_a.append(cur)
        toks_b.append(cur_b)
    return dec, slab, ref, toks_a, toks_b, worst


def test_static_decode_equals_extend_batched_over_block_edges(model: V4Model) -> None:
    g = torch.Generator().manual_seed(0)
    v = model.config.vocab_size
    # lengths around the window (16), the CSA block (4) and the HCA block (128) edges, decoded past 128
    prompts = [torch.randint(0, v, (n,), generator=g).tolist() for n in (1, 15, 17, 126)]
    _, slab, ref, a, b, worst = _greedy_pair(model, prompts, 40)
    assert a == b
    assert worst < 1e-4, worst
    for s, r in zip(slab, ref, strict=True):
        assert s.pos == r.pos
        for la, lb in zip(s.snapshot().layers, r.snapshot().layers, strict=True):
            for k, t in la.tensors().items():
                u = getattr(lb, k)
                assert t.shape == u.shape, k
                assert torch.allclose(t.nan_to_num(), u.nan_to_num(), rtol=1e-4, atol=1e-4), k


@pytest.mark.parametrize("ratio", [4, 8])
def test_branch_free_compressor_step_equals_pool_bytes(ratio: int) -> None:
    """Property: feeding tokens one at a time through `_pool_step` leaves the same tail bytes as `pool`, and
    the pooled entry equals pool's wherever a block completes."""
    torch.manual_seed(ratio)
    comp = Compressor(32, 8, ratio, 1e-6, torch.float32, torch.float32)
    c = comp.c
    tkv, tsc = fresh_tail(ratio, 8, None)
    slab_kv, slab_sc = tkv[None].clone().repeat(3, 1, 1), tsc[None].clone().repeat(3, 1, 1)
    slot = torch.tensor([1])
    for p in range(5 * ratio + 3):
        kv, sc = torch.randn(1, c * 8), torch.randn(1, c * 8)
        pooled, first, tkv, tsc = comp.pool(tkv, tsc, kv, sc, p)
        got = _pool_step(comp, slab_kv, slab_sc, kv, sc, torch.tensor([p]), slot)
        assert torch.equal(slab_kv[1], tkv) and torch.equal(slab_sc[1], tsc), p
        if pooled.shape[0]:
            assert first == p // ratio and torch.equal(got, pooled), p
    assert torch.equal(slab_kv[0], fresh_tail(ratio, 8, None)[0])  # other slots untouched


def test_slab_state_snapshot_restore_and_bytes_round_trip(model: V4Model) -> None:
    dec = StaticDecoder(model, max_batch=2, max_len=300, graphs=False)
    s = dec.new_state()
    model.extend(s, list(range(3, 140)))
    ptr = s.layers[2].comp.data_ptr()  # type: ignore[union-attr]
    snap = s.snapshot()
    blob = s.to_bytes()
    first = [dec.step([s], [7]).argmax().item() for _ in range(1)]
    for _ in range(5):
        dec.step([s], [9])
    s.restore(SequenceState.from_bytes(blob))
    assert s.pos == snap.pos and s.layers[2].comp.data_ptr() == ptr  # type: ignore[union-attr]
    assert dec.owns(s)
    assert [dec.step([s], [7]).argmax().item()] == first
    s.restore(snap)
    plain = model.new_state()
    plain.restore(snap)
    assert torch.equal(model.extend(plain, [5]), model.extend(s, [5]))


def test_slots_are_bounded_reset_and_recycled(model: V4Model) -> None:
    dec = StaticDecoder(model, max_batch=2, max_len=64, graphs=False)
    a, b = dec.new_state(), dec.new_state()
    with pytest.raises(DecodeError):
        dec.new_state()
    model.extend(a, list(range(10, 50)))
    dec.release(a)
    with pytest.raises(StateError):
        model.extend(a, [1])
    c = dec.new_state()  # a's slot again: no leftovers of a
    fresh = SequenceState.fresh(model.config, dtype=model.dtype, max_len=64)
    for lc, lf in zip(c.layers, fresh.layers, strict=True):
        for k, t in lf.tensors().items():
            assert torch.equal(getattr(lc, k), t), k
    del a, b, c  # a was released already: its collection must not free its slot a second time
    gc.collect()
    assert dec.free_slots == 2


def test_decoder_refuses_bad_requests_without_touching_state(model: V4Model) -> None:
    dec = StaticDecoder(model, max_batch=2, max_len=20, graphs=False)
    s = dec.new_state()
    model.extend(s, list(range(1, 20)))
    with pytest.raises(ModelInputError):
        model.extend(s, [1, 2])  # past the state's capacity
    snap = s.snapshot()
    with pytest.raises(DecodeError):
        dec.step([s], [model.config.vocab_size])
    with pytest.raises(DecodeError):
        dec.step([model.new_state()], [1])
    with pytest.raises(DecodeError):
        dec.step([s, s], [1, 1])
    dec.step([s], [1])
    with pytest.raises(DecodeError):
        dec.step([s], [1])  # max_len reached
    assert s.pos == snap.pos + 1


_KERNELS_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.kernels import indexer as IX, moe as MK
    g = torch.Generator().manual_seed(0)

    # indexer scores: odd capacities, counts on block edges, bf16 and fp32, several slots
    for dtype in (torch.float32, torch.bfloat16):
        for h, d, cap in ((8, 64, 130), (16, 32, 64), (3, 24, 7)):
            keys = torch.randn(5, cap, d, generator=g).to(dtype)
            q = torch.randn(4, h, d, generator=g).to(dtype)
            w = torch.randn(4, h, generator=g)
            slots = torch.tensor([4, 0, 2, 1])
            count = torch.tensor([0, 1, min(cap, 64), cap])
            got = IX.index_scores(q, w, keys, slots, count, block_e=32)
            ref = IX.index_scores_ref(q, w, keys, slots, count)
            assert torch.equal(torch.isinf(got), torch.isinf(ref))
            fin = torch.isfinite(ref)
            assert torch.allclose(got[fin], ref[fin], rtol=1e-5, atol=1e-4), (got - ref)[fin].abs().max()

    # prefill scores: one sequence, many queries per program (partial last group), causal counts
    for dtype in (torch.float32, torch.bfloat16):
        for nq, h, d, cap, per in ((37, 8, 64, 150, 16), (5, 3, 24, 9, 4), (16, 16, 32, 64, 16)):
            keys = torch.randn(cap, d, generator=g).to(dtype)
            q = torch.randn(nq, h, d, generator=g).to(dtype)
            w = torch.randn(nq, h, generator=g)
            count = (torch.arange(nq) * cap // nq + 1).clamp(max=cap)
            count[0] = 0
            got = IX.prefill_scores(q, w, keys, count, queries_per_program=per)
            ref = IX.index_scores_ref(q, w, keys[None], torch.zeros(nq, dtype=torch.long), count)
            assert torch.equal(torch.isinf(got), torch.isinf(ref))
            fin = torch.isfinite(ref)
            assert torch.allclose(got[fin], ref[fin], rtol=1e-5, atol=1e-4), (got - ref)[fin].abs().max()

    # prefill scores under the launch knobs (key tile width, queries per program, warps): same scores
    import os
    keys = torch.randn(300, 64, generator=g).to(torch.bfloat16)
    q = torch.randn(37, 8, 64, generator=g).to(torch.bfloat16)
    w = torch.randn(37, 8, generator=g)
    count = torch.arange(264, 301)
    ref = IX.index_scores_ref(q, w, keys[None], torch.zeros(37, dtype=torch.long), count)
    fin = torch.isfinite(ref)
    for spec in ("index_be=128,index_warps=8", "index_be=256,index_bq=32"):
        os.environ["AGENTKIT_KERNEL_TUNE"] = spec
        got = IX.prefill_scores(q, w, keys, count)
        del os.environ["AGENTKIT_KERNEL_TUNE"]
        assert torch.equal(torch.isinf(got), torch.isinf(ref)), spec
        assert torch.allclose(got[fin], ref[fin], rtol=1e-5, atol=1e-4), spec
    # the order keys the kernel writes for long rows == order_key of its scores (ties, -0.0, -inf included)
    from agentkit.runtime.layers.topk import order_key
    w[:, :4] = -w[:, :4].abs()  # negative head weights: negative scores and -0.0 from ReLU's zeros
    w[3] = 0.0  # a row of exact zeros: every entry tied
    kv = torch.randn(300, 64, generator=g).to(torch.bfloat16)
    got = IX.prefill_scores(q, w, kv, count, keys_out=True)
    want = order_key(IX.prefill_scores(q, w, kv, count))
    assert got.dtype == torch.int64 and torch.equal(got, want)
    want_idx = torch.sort(IX.index_scores_ref(q, w, kv[None], torch.zeros(37, dtype=torch.long), count),
                          dim=-1, descending=True, stable=True).indices[:, :40]
    assert torch.equal(torch.topk(got, 40, dim=-1).indices[:4], want_idx[:4])  # exact-tie rows included

    # routing blocks: each pair exactly once, one expert per block, at most BM rows
    for t, k, e, bm in ((1, 6, 16, 16), (40, 4, 8, 16), (33, 2, 64, 32)):
        idx = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
        order, bexp, lo, hi = MK.route_blocks(idx, e, bm)
        seen = []
        for b in range(bexp.shape[0]):
            rows = order[lo[b]:hi[b]].long()
            assert hi[b] - lo[b] <= bm
            assert (idx.reshape(-1)[rows] == bexp[b]).all()
            seen += rows.tolist()
        assert sorted(seen) == list(range(t * k))

    # fused routed experts == the per-expert loop, every storage format, decode and prefill-sized batches
    from agentkit.runtime.model import V4Model
    cases = [({}, torch.float32), ({}, torch.bfloat16)]
    for ed in ("fp4", "fp8"):
        q = {"weight_format": "quantized", "dtype": "fp8", "expert_dtype": ed}
        cases += [(q, torch.float32), (q, torch.bfloat16)]
    for over, dtype in cases:
        cfg = ModelConfig.preset("tiny-test", dim=256, moe_inter_dim=192, n_routed_experts=8,
                                 n_activated_experts=3, **over)
        m = V4Model(cfg, dtype=dtype).init_random_(1)
        for layer in (0, 3):  # a hash layer and a biased top-k layer
            moe = m.layers[layer].ffn
            for t in (1, 5, 23):
                x = (torch.randn(t, cfg.dim, generator=g) * 2).to(dtype)
                ids = torch.randint(0, cfg.vocab_size, (t,), generator=g)
                with torch.no_grad():
                    ref = moe(x, ids).float()
                    w, idx = moe.gate(x, ids)
                    got = (moe.fused(x, w, idx) + moe.shared_experts(x).float()).to(dtype).float()
                    again = moe(x, ids).float()  # the loop still works on the stacked views
                assert torch.equal(ref, again)
                if dtype == torch.float32:
                    err = (got - ref).abs().max()
                    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (over, layer, t, err)
                else:  # bf16: equal up to the summation order inside a dot
                    assert torch.allclose(got, ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item()), (over, t)

    # the whole static decode step with every kernel on == the general path with every kernel off
    from agentkit.runtime.decode import StaticDecoder
    from agentkit.runtime.kernels import compressor as CK, lowp_gemm as LG, mhc as MH
    from agentkit.runtime.kernels import pointwise as PW, sparse_attn as SA
    cfg = ModelConfig.preset("tiny-test", weight_format="quantized", dtype="fp8", expert_dtype="fp4",
                             moe_inter_dim=128, window_size=16)
    model = V4Model(cfg).init_random_(4).eval()
    prompt = torch.randint(0, cfg.vocab_size, (29,), generator=g).tolist()
    def on(flag):
        for mod in (SA, LG, IX, MK, PW, MH, CK):
            mod.supported = (lambda *a: True) if flag else (lambda *a: False)
    on(False)
    ref_state = model.new_state()
    model.extend(ref_state, prompt)
    dec = StaticDecoder(model, max_batch=2, max_len=64, graphs=False)
    st = dec.new_state()
    st.restore(ref_state)
    cur_a = cur_b = [3]
    for _ in range(12):
        on(True)
        la = dec.step([st], cur_a)[0]
        on(False)
        lb = model.extend(ref_state, cur_b)[-1]
        assert torch.allclose(la, lb, rtol=1e-4, atol=1e-4 * lb.abs().max().item()), (la - lb).abs().max()
        cur_a, cur_b = [int(la.argmax())], [int(lb.argmax())]
        assert cur_a == cur_b
    print("ok")
    """
)


def test_indexer_and_moe_kernels_and_kernel_decode_match_reference_interpreted() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _KERNELS_CHILD], env=env, capture_output=True, text=True, timeout=1200
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_graph_decode_equals_eager_static_decode() -> None:
    cfg = ModelConfig.preset("tiny-test", window_size=16)
    model = V4Model(cfg, dtype=torch.bfloat16, device="cuda").init_random_(3).eval()
    prompts = [list(range(5, 5 + n)) for n in (3, 40, 130)]
    outs = []
    for graphs in (False, True):
        dec = StaticDecoder(model, max_batch=4, max_len=300, graphs=graphs)
        st = [dec.new_state() for _ in prompts]
        for s, p in zip(st, prompts, strict=True):
            model.extend(s, p)
        cur, toks = [1, 2, 3], []
        for _ in range(20):
            cur = dec.step(st, cur).argmax(-1).tolist()
            toks.append(cur)
        outs.append(toks)
    assert outs[0] == outs[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_graph_decoder_with_the_moe_kernel_off_steps_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch MoE path syncs with the host, which a graph capture cannot hold: with the MoE kernel off a
    graph decoder must still step (eagerly) and give the eager decoder's tokens, not fail its capture."""
    cfg = ModelConfig.preset("tiny-test", window_size=16)
    model = V4Model(cfg, dtype=torch.bfloat16, device="cuda").init_random_(3).eval()
    monkeypatch.setenv("AGENTKIT_KERNELS_OFF", "moe")
    outs = []
    for graphs in (False, True):
        dec = StaticDecoder(model, max_batch=2, max_len=128, graphs=graphs)
        st = dec.new_state()
        model.extend(st, list(range(5, 45)))
        cur, toks = [1], []
        for _ in range(8):
            cur = dec.step([st], cur).argmax(-1).tolist()
            toks.append(cur)
        outs.append(toks)
    assert outs[0] == outs[1]


def test_extend_and_generate_route_decoder_states_through_the_static_step(model: V4Model) -> None:
    """With `model.static_decoder(...)` set, one-token extends of its states run `StaticDecoder.step` and
    give what the general path gives; plain states and multi-token chunks keep the general path."""
    from agentkit.runtime.generate import SamplingParams, generate_batch

    twin = V4Model(model.config).eval()
    twin.load_state_dict(model.state_dict())
    dec = twin.static_decoder(max_batch=3, max_len=200, graphs=False)
    calls: list[int] = []
    step = dec.step

    def counting(states, tokens):  # type: ignore[no-untyped-def]
        calls.append(len(states))
        return step(states, tokens)

    greedy = dec.step_greedy

    def counting_greedy(states, tokens):  # type: ignore[no-untyped-def]
        calls.append(len(states))
        return greedy(states, tokens)

    dec.step = counting  # type: ignore[method-assign]
    dec.step_greedy = counting_greedy  # type: ignore[method-assign]
    prompts = [[3, 4, 5, 6, 7], list(range(40, 60)), [9]]
    params = SamplingParams(temperature=0.0, max_tokens=30)
    owned = [dec.new_state() for _ in prompts]
    got = generate_batch(twin, owned, prompts, params)
    want = generate_batch(model, [model.new_state() for _ in prompts], prompts, params)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert calls and max(calls) == 3  # the batched decode steps went through the static step
    n = len(calls)
    plain = twin.new_state()
    twin.extend(plain, [1, 2])
    twin.extend(plain, [3])  # not the decoder's: general path
    dec.release(owned[0])
    mixed = [dec.new_state(), twin.new_state()]
    twin.extend(mixed, [[1], [2]])  # one state is not the decoder's: general path for the batch
    assert len(calls) == n


@pytest.mark.parametrize("seed", range(6))
def test_stable_topk_equals_the_stable_sort_prefix(seed: int) -> None:
    """Property: `stable_topk` == the first k of a stable descending sort, on rows full of exact ties (small
    integer scores, as ReLU's zeros make them; negative ones, as negative head weights make them; -0.0
    beside +0.0, which the sort takes as equal), random reals and invisible (-inf) entries."""
    from agentkit.runtime.layers.topk import stable_topk

    g = torch.Generator().manual_seed(seed)
    rows, n = 7, int(torch.randint(1, 300, (1,), generator=g))
    scores = torch.randint(-3, 4, (rows, n), generator=g).float()
    scores[0] = scores[0].clamp_min(0)
    scores[1] = scores[1] * torch.tensor([-0.0, 0.5, -2.0])[torch.randint(0, 3, (n,), generator=g)]
    scores[2] = torch.randn(n, generator=g) * 1e3
    visible = torch.randint(0, n + 1, (rows, 1), generator=g)
    scores = scores.masked_fill(torch.arange(n)[None] >= visible, float("-inf"))
    scores[3] = scores[3].masked_fill(torch.rand(n, generator=g) < 0.3, float("-inf"))
    for k in {1, min(n, 5), min(n, 64), n}:
        want = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
        got = stable_topk(scores, k)
        assert torch.equal(got, want), (seed, k)
        assert all(len(set(r.tolist())) == k for r in got)  # k distinct entries


def _twin(model: V4Model) -> V4Model:
    twin = V4Model(model.config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.parametrize("case", ["stops", "lengths", "max_seq_len", "one"])
def test_pipelined_greedy_generation_equals_the_plain_loop(model: V4Model, case: str) -> None:
    """Differential: greedy generate_batch over a static decoder (the pipelined loop, `step_greedy` feeding
    the device's argmax) == the plain loop over general-path states: tokens, finish reasons, pending tokens,
    step counts and the states' final positions, when sequences end at different steps (stop tokens, their
    own max_tokens, max_seq_len) and the rest go on."""
    from agentkit.runtime.generate import SamplingParams, generate_batch

    prompts = [[3, 4, 5, 6, 7], list(range(40, 60)), [9], [11, 12]]
    if case == "one":
        prompts = prompts[1:2]
    probe = generate_batch(
        model, [model.new_state() for _ in prompts], prompts, SamplingParams(temperature=0.0, max_tokens=24)
    )
    seen = [t for r in probe for t in r.token_ids]
    if case == "stops":  # a token one sequence emits mid-way stops it (and maybe others) early
        stop = max(set(seen[3:]), key=seen.count)
        params = [SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=(stop,), speculative=0)] * 4
    elif case == "lengths":
        lengths = (5, 17, 1, 24)
        params = [SamplingParams(top_k=1, max_tokens=n, stop_token_ids=(), speculative=0) for n in lengths]
    else:
        params = [SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=(), speculative=0)] * 4
    params = params[: len(prompts)]  # plain decoding on both sides, so the step counts compare
    if case == "max_seq_len":  # the longest prompt hits the model's limit after a few tokens
        cfg = ModelConfig.preset("tiny-test", window_size=16, max_seq_len=30)
        model = V4Model(cfg).init_random_(3).eval()
    twin = _twin(model)
    room = min(200, model.config.max_seq_len)
    dec = twin.static_decoder(max_batch=len(prompts) + 1, max_len=room, graphs=False)
    greedy_steps: list[int] = []
    real = dec.step_greedy

    def counting(states, tokens):  # type: ignore[no-untyped-def]
        greedy_steps.append(len(states))
        return real(states, tokens)

    dec.step_greedy = counting  # type: ignore[method-assign]
    fast = [dec.new_state() for _ in prompts]
    plain = [model.new_state() for _ in prompts]
    got = generate_batch(twin, fast, prompts, params)
    want = generate_batch(model, plain, prompts, params)
    assert greedy_steps  # the pipelined loop ran
    for g, w in zip(got, want, strict=True):
        assert (g.token_ids, g.finish_reason, g.stop, g.pending, g.steps) == (
            w.token_ids, w.finish_reason, w.stop, w.pending, w.steps,
        )  # fmt: skip
    assert [s.pos for s in fast] == [s.pos for s in plain]
    if case == "stops":
        assert any(r.finish_reason == "stop_token" for r in want)
    if case == "max_seq_len":
        assert any(r.pending for r in want)
    # the next turn extends both states alike: the slabs hold what the general states hold
    if case == "max_seq_len":
        return
    nxt = [[5, 6] for _ in prompts]
    a = twin.extend(fast, nxt, last_only=True)
    b = model.extend(plain, nxt, last_only=True)
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x, y, atol=1e-4, rtol=1e-4)


def test_pipelined_greedy_launches_the_next_step_before_reading_a_token(model: V4Model) -> None:
    """The point of the pipelined loop: the step that feeds token n is launched before the host reads token
    n, so the GPU never waits for the host's stop checks. Order of events, recorded on CPU."""
    from agentkit.runtime import decode
    from agentkit.runtime.generate import SamplingParams, TokenStream

    twin = _twin(model)
    dec = twin.static_decoder(max_batch=2, max_len=200, graphs=False)
    events: list[str] = []
    real_step, real_read = dec.step_greedy, decode.GreedyStep.tolist

    def step(states, tokens):  # type: ignore[no-untyped-def]
        events.append("launch-device" if isinstance(tokens, decode.GreedyStep) else "launch-host")
        return real_step(states, tokens)

    def read(self):  # type: ignore[no-untyped-def]
        events.append("read")
        return real_read(self)

    dec.step_greedy = step  # type: ignore[method-assign]
    decode.GreedyStep.tolist = read  # type: ignore[method-assign]
    try:
        st = dec.new_state()
        params = SamplingParams(temperature=0.0, max_tokens=6, stop_token_ids=())
        for _ in TokenStream(twin, st, [3, 4, 5], params):
            events.append("yield")
    finally:
        decode.GreedyStep.tolist = real_read  # type: ignore[method-assign]
    # token 1 comes from the prompt's logits; every later token is read only after the step feeding it
    assert events == ["launch-host", "yield"] + ["launch-device", "read", "yield"] * 5
    assert st.pos == 3 + 6  # feed_last: all six tokens are in the state


def test_step_greedy_refuses_a_foreign_or_stale_previous_step(model: V4Model) -> None:
    dec = StaticDecoder(model, max_batch=3, max_len=100, graphs=False)
    a, b = dec.new_state(), dec.new_state()
    model.extend([a, b], [[1, 2, 3], [4, 5]])
    g = dec.step_greedy([a, b], [7, 8])
    assert len(g.tolist()) == 2
    with pytest.raises(DecodeError, match="right after it"):
        dec.step_greedy([b, a], g)  # other order: the ids would go to the wrong rows
    dec.step([a, b], [1, 1])
    with pytest.raises(DecodeError, match="right after it"):
        dec.step_greedy([a, b], g)  # stale: the states moved on since
    pos = (a.pos, b.pos)
    with pytest.raises(DecodeError, match="out of range"):
        dec.step_greedy([a, b], [1, 10**9])
    assert (a.pos, b.pos) == pos  # refused before anything ran
    g2 = dec.step_greedy([a, b], [2, 2])
    g3 = dec.step_greedy([a, b], g2)
    ref = StaticDecoder(model, max_batch=3, max_len=100, graphs=False)
    assert g3.pos == (a.pos, b.pos) and ref is not None


def test_a_step_that_fails_when_read_marks_its_states_broken(model: V4Model) -> None:
    """An error that surfaces only when the host reads a greedy step (an asynchronous device fault) leaves
    its states marked broken, as a failed launch does, instead of letting the next step extend them."""
    dec = StaticDecoder(model, max_batch=2, max_len=100, graphs=False)
    a, b = dec.new_state(), dec.new_state()
    model.extend([a, b], [[1, 2, 3], [4, 5]])
    g = dec.step_greedy([a, b], [7, 8])

    class Fault:
        def synchronize(self) -> None:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    g._event = Fault()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="illegal memory access"):
        g.tolist()
    assert a.broken and b.broken and "position 3" in a.broken
    with pytest.raises(StateError, match="broken"):
        dec.step_greedy([a, b], [1, 1])
