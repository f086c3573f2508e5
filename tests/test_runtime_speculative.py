"""Speculative decoding with the MTP block: the MTP block itself, exact rollback, greedy equality with plain
decoding, the sampled distribution, batching, and the MTP state's bytes.

Speed: each test decodes a few thousand tokens at most; the issue's full greedy bar (200 prompts x 128
tokens on both models) runs in `bench/speculative.py --equality`, whose result the README records.
"""

from __future__ import annotations

import dataclasses
import random
from functools import cache

import pytest
import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.generate import (
    GenerationError,
    SamplingParams,
    TokenStream,
    draft_length,
    generate,
    generate_batch,
)
from agentkit.runtime.loader import load_model
from agentkit.runtime.model import V4Model
from agentkit.runtime.speculative import (
    DraftState,
    accept_drafts,
    main_journal,
    probs,
    record,
    truncate,
)
from agentkit.runtime.state import LayerState, SequenceState
from safetensors.torch import load as st_load
from scipy.stats import chisquare

from tests._batch_invariant import BatchInvariant


def tensors_of(state: SequenceState) -> dict[str, torch.Tensor]:
    """The state's serialized tensors (to_bytes's safetensors header order is not deterministic, so
    compare the tensors it holds, byte for byte)."""
    return st_load(state.to_bytes())


def assert_same_bytes(a: SequenceState, b: SequenceState) -> None:
    assert a.pos == b.pos
    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].shape == tb[k].shape, k
        assert ta[k].view(torch.uint8).equal(tb[k].view(torch.uint8)), k


def assert_follows(counts: torch.Tensor, law: torch.Tensor) -> None:
    """Chi-square of observed token counts against a law; cells with small expectations are pooled into
    one, as the test needs."""
    n = counts.sum()
    big = law * n >= 5
    obs, exp = counts[big].double(), law[big].double() * n
    if (~big).any():
        obs = torch.cat((obs, counts[~big].sum()[None].double()))
        exp = torch.cat((exp, (law[~big] * n).sum()[None].double()))
    assert chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue > 1e-3


@cache
def random_model(seed: int = 3, mtp_ratio: int = 0) -> V4Model:
    cfg = ModelConfig.preset("tiny-test", compress_ratios=(0, 4, 128, 4, mtp_ratio))
    return V4Model(cfg).init_random_(seed).eval()


@cache
def tiny() -> tuple[V4Model, object]:
    from agentkit.runtime.checkpoint import shipped_checkpoint
    from agentkit.runtime.tokenizer import Tokenizer

    path = shipped_checkpoint("agentkit-tiny")
    assert path is not None
    return load_model("agentkit-tiny").eval(), Tokenizer.from_file(path)


def greedy(n: int, k: int, **kw: object) -> SamplingParams:
    return SamplingParams(
        temperature=0.0,
        max_tokens=n,
        stop_token_ids=(),
        stop_strings=(),
        speculative=k,
        **kw,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------------ the MTP block
@pytest.mark.parametrize("mtp_ratio", [0, 4, 128])
def test_mtp_inference_equals_the_training_forward(mtp_ratio: int) -> None:
    """mtp_extend over a sequence in uneven chunks == the training forward's MTP logits (batched and per
    sequence), for a window-only MTP block and for ones with a compressor (agentkit-tiny's is CSA)."""
    model = random_model(5, mtp_ratio)
    n = 150
    ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(mtp_ratio))
    with torch.no_grad():
        ref = model(ids, mtp=True).mtp_logits
        ref2 = model(ids, mtp=True, batched=False).mtp_logits
    assert ref is not None and ref2 is not None
    assert torch.allclose(ref, ref2, rtol=1e-4, atol=1e-4)
    _, hs = model.extend_hidden([model.new_state()], [ids[0]])
    layer, out, p = model.new_mtp_layer(), [], 0
    for size in (1, 7, 64, 3, 74):
        lg, _ = model.mtp_extend([layer], [p], [hs[0][p : p + size]], [ids[0, p + 1 : p + 1 + size]])
        out.append(lg[0])
        p += size
    assert p == n - 1
    got = torch.cat(out)
    assert ((got - ref[0]).abs().amax(-1) / ref[0].abs().amax(-1)).max() <= 1e-4


def test_mtp_position_zero_uses_the_real_next_token_embedding() -> None:
    """DeepSeek's MTPBlock.forward has no position-0 special case: the token at 1 changes position 0."""
    model = random_model(5)
    ids = torch.tensor([[3, 7, 9, 11]])
    other = torch.tensor([[3, 8, 9, 11]])
    with torch.no_grad():
        a, b = model(ids, mtp=True).mtp_logits, model(other, mtp=True).mtp_logits
    assert a is not None and b is not None
    assert not torch.allclose(a[0, 0], b[0, 0])


# ------------------------------------------------------------------------------------------ rollback
@pytest.mark.parametrize("prealloc", [False, True])
def test_rollback_equals_a_state_that_never_saw_the_rejected_tokens(prealloc: bool) -> None:
    """Property: extend k+1 tokens under a journal, truncate to P + kept == extend only the kept tokens,
    byte for byte (every tensor), at positions whose rejected tokens cross 4- and 128-token compression
    boundaries and wrap the window ring. Both sides run batch-invariant arithmetic, so any difference is the
    rollback's."""
    model = random_model(7)
    rng = random.Random(7)
    cases = [(126, 3, 0), (127, 3, 1), (124, 4, 2), (255, 2, 0), (250, 8, 5), (3, 2, 1), (130, 1, 0)]
    cases += [(rng.randint(1, 300), (k := rng.randint(1, 6)), rng.randint(0, k)) for _ in range(8)]
    g = torch.Generator().manual_seed(7)
    with BatchInvariant():
        for p, k, kept in cases:
            prompt = torch.randint(0, 256, (p,), generator=g)
            chunk = torch.randint(0, 256, (k + 1,), generator=g)
            base = model.new_state(max_len=512) if prealloc else model.new_state()
            model.extend(base, prompt)
            ref = model.new_state(max_len=512) if prealloc else model.new_state()
            ref.restore(base)
            journal = main_journal(model, base, k + 1)
            with record([journal]):
                model.extend(base, chunk)
            truncate(base, journal, p + kept + 1)
            model.extend(ref, chunk[: kept + 1])
            assert_same_bytes(base, ref)
            # and the rolled-back state continues exactly like the reference
            nxt = torch.randint(0, 256, (3,), generator=g)
            a, b = model.extend(base, nxt), model.extend(ref, nxt)
            assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)


@pytest.mark.parametrize("lean", [False, True])
def test_mtp_layer_rollback_after_chained_drafts_is_exact(
    lean: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """k > 1 chains the MTP block on its own streams; after the verify its layer state goes back to the
    main position: equal to an MTP layer that only ever saw the real positions (agentkit-tiny-like CSA).
    The general path (`mtp_extend`) writes the chained positions and rolls them back with a journal; the
    CPU drafting path (runtime/mtp_draft.py) never writes them (no journal)."""
    from agentkit.runtime import mtp_draft
    from agentkit.runtime.generate import _Seq
    from agentkit.runtime.speculative import draft_tokens

    model = random_model(11, 4)
    assert mtp_draft.supported(model)
    if not lean:
        monkeypatch.setattr(mtp_draft, "supported", lambda m: False)
    g = torch.Generator().manual_seed(11)
    with BatchInvariant():
        prompt = torch.randint(0, 256, (126,), generator=g)
        state = model.new_state()
        _, hs = model.extend_hidden([state], [prompt])
        d = DraftState.cold(model, 0)
        d.streams = hs[0]
        d.ids = prompt[1:].tolist()
        ref = d.snapshot()
        params = greedy(8, 4)
        toks, _, journals = draft_tokens(model, [d], [5], [4], [_Seq(params, None)])
        j = journals[0]
        assert len(toks[0]) == 4 and (j is None) == lean
        if j is not None:
            j.truncate(d.pos)
            model.mtp_extend([ref.layer], [ref.pos], [ref.streams], [[*ref.ids, 5]])
        else:
            mtp_draft.commit(model, [ref.layer], [ref.pos], [ref.streams], [[*ref.ids, 5]])
    for key, v in ref.layer.tensors().items():
        mine = d.layer.tensors()[key]
        rows = (d.pos // d.layer.ratio) if key in ("comp", "idx") else v.shape[0]
        assert mine[:rows].view(torch.uint8).equal(v[:rows].view(torch.uint8)), key


@pytest.mark.parametrize("mtp_ratio", [0, 4, 128])
def test_cpu_drafting_path_computes_the_mtp_block(mtp_ratio: int) -> None:
    """runtime/mtp_draft.py (the CPU drafting path) == `mtp_extend` up to rounding: the same logits at each
    call's last position and the same MTP layer state, over uneven chunks, for window-only, CSA and HCA
    MTP blocks; a chained draft == `mtp_extend` of that position on a copy of the state. Past
    `index_topk` entries the CSA block's indexer chooses (topk lowered to reach it)."""
    from agentkit.runtime import mtp_draft

    cfg = ModelConfig.preset("tiny-test", compress_ratios=(0, 4, 128, 4, mtp_ratio), index_topk=8)
    model = V4Model(cfg).init_random_(5).eval()
    n = 150
    ids = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(mtp_ratio))
    _, hs = model.extend_hidden([model.new_state()], [ids])
    ref, lean, p = model.new_mtp_layer(), model.new_mtp_layer(), 0
    for size in (1, 7, 64, 2, 3, 1, 71):
        h, nxt = hs[0][p : p + size], ids[p + 1 : p + 1 + size]
        want, y_ref = model.mtp_extend([ref], [p], [h], [nxt], last_only=True)
        got, y = mtp_draft.commit(model, [lean], [p], [h], [nxt.tolist()])
        assert torch.allclose(got[0], want[0][0], rtol=1e-4, atol=1e-4), size
        assert torch.allclose(y[0], y_ref[0][-1], rtol=1e-4, atol=1e-4)
        p += size
        for key, v in ref.tensors().items():
            rows = p // ref.ratio if key in ("comp", "idx") else v.shape[0]
            assert torch.allclose(lean.tensors()[key][:rows], v[:rows], rtol=1e-4, atol=1e-4), (size, key)
        # a chained position that completes a compressed entry would not see it (by design): none does here
        assert (p + 1) % 4 and (p + 1) % 128
        chained_ref = LayerState.of(ref.ratio, {k: v.clone() for k, v in ref.tensors().items()})
        want, _ = model.mtp_extend([chained_ref], [p], [y], [[7]], last_only=True)
        keys: list[torch.Tensor] = []
        got, _ = mtp_draft.chained(model, [lean], [p], y, [7], [keys])
        assert len(keys) == 1
        assert torch.allclose(got[0], want[0][0], rtol=1e-4, atol=1e-4), ("chained", size)
    assert p == n - 1


def test_cpu_drafting_path_batches_sequences() -> None:
    """mtp_draft.commit / chained over a batch of sequences (the engine's one MTP call) == each alone."""
    from agentkit.runtime import mtp_draft

    model = random_model(5, 4)
    g = torch.Generator().manual_seed(2)
    lens, chunk = [40, 9], [3, 1]
    ids = [torch.randint(0, 256, (n + c + 1,), generator=g) for n, c in zip(lens, chunk, strict=True)]
    hs = [model.extend_hidden([model.new_state()], [t])[1][0] for t in ids]
    alone, batch = [], []
    for layers in (alone, batch):
        for t, h, n in zip(ids, hs, lens, strict=True):
            layers.append(model.new_mtp_layer())
            mtp_draft.commit(model, [layers[-1]], [0], [h[:n]], [t[1 : n + 1].tolist()])
    args = [
        (h[n : n + c], t[n + 1 : n + c + 1].tolist()) for t, h, n, c in zip(ids, hs, lens, chunk, strict=True)
    ]
    one = [
        mtp_draft.commit(model, [ls], [n], [a[0]], [a[1]]) for ls, n, a in zip(alone, lens, args, strict=True)
    ]
    both = mtp_draft.commit(model, batch, [n + 0 for n in lens], [a[0] for a in args], [a[1] for a in args])
    for i in range(2):
        assert torch.allclose(both[0][i], one[i][0][0], rtol=1e-5, atol=1e-5)
        assert torch.allclose(both[1][i], one[i][1][0], rtol=1e-5, atol=1e-5)
    pos = [n + c for n, c in zip(lens, chunk, strict=True)]
    one_c = [
        mtp_draft.chained(model, [ls], [p], o[1], [5], [[]]) for ls, p, o in zip(alone, pos, one, strict=True)
    ]
    both_c = mtp_draft.chained(model, batch, pos, both[1], [5, 5], [[], []])
    for i in range(2):
        assert torch.allclose(both_c[0][i], one_c[i][0][0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ greedy equality
def test_greedy_equals_plain_on_random_weights_across_128_boundaries() -> None:
    """Random weights: drafts are almost always rejected, so nearly every step rolls back; prompts end just
    before 128 / 256 so the rejections cross HCA (128) and CSA (4) boundaries."""
    model = random_model(3)
    g = torch.Generator().manual_seed(3)
    crossed = 0
    for i, n in enumerate([120, 125, 127, 250, 60, 7, 190, 126]):
        prompt = torch.randint(0, 256, (n,), generator=g).tolist()
        plain = generate(model, model.new_state(), prompt, greedy(40, 0))
        for k in (1, 3) if i % 2 else (2,):
            st = model.new_state()
            res = generate(model, st, prompt, greedy(40, k))
            assert res.token_ids == plain.token_ids, (n, k)
            assert st.pos == n + 40 and res.drafted > 0 and res.steps < 40 + 1
            crossed += (n < 128 <= n + 40) or (n < 256 <= n + 40)
    assert crossed >= 5


def _episode_prompts(n_episodes: int) -> list[list[int]]:
    from agentkit.train.episodes import generate as episodes

    _, tok = tiny()
    prompts = []
    for ep in episodes(n_episodes, split="heldout", start=500):
        text = ""
        for seg in ep.segments:
            if seg.loss:
                prompts.append(tok.encode(text, allow_special=True))  # type: ignore[attr-defined]
            text += seg.text
    return prompts


def test_greedy_equals_plain_on_agentkit_tiny_agent_turns() -> None:
    """The shipped model on held-out episodes: every assistant turn generated from its context, stopping on
    the DSML tool-call end (a stop string) or EOS, with k = 1..3: the same tokens and the same stop."""
    model, tok = tiny()
    prompts = _episode_prompts(4)
    stops = set()
    drafted = accepted = 0
    for i, prompt in enumerate(prompts):
        params = SamplingParams(temperature=0.0, max_tokens=96, speculative=0)
        decode = tok.decode  # type: ignore[attr-defined]
        st0 = model.new_state()
        plain = generate(model, st0, prompt, params, decode=decode)
        k = 1 + i % 3
        st = model.new_state()
        res = generate(
            model, st, prompt, SamplingParams(temperature=0.0, max_tokens=96, speculative=k), decode
        )
        assert res.token_ids == plain.token_ids and res.finish_reason == plain.finish_reason
        assert st.pos == st0.pos
        stops.add(res.finish_reason)
        drafted += res.drafted - res.lookup_drafted
        accepted += res.accepted - res.lookup_accepted
    assert "stop_string" in stops and "stop_token" in stops
    assert accepted / drafted > 0.5  # the trained MTP block drafts well on agent turns


def test_feed_last_false_and_limits_match_plain() -> None:
    model = random_model(3)
    prompt = list(range(30, 60))
    for k in (0, 2):
        st = model.new_state()
        res = generate(model, st, prompt, greedy(9, k, feed_last=False))
        if k == 0:
            base, base_pos = res, st.pos
        else:
            assert res.token_ids == base.token_ids and res.pending == base.pending and st.pos == base_pos
    # a sequence that reaches max_seq_len ends with its last token pending, as in plain decoding
    small = V4Model(ModelConfig.preset("tiny-test", max_seq_len=40)).init_random_(1).eval()
    outs = [generate(small, small.new_state(), prompt, greedy(50, k)) for k in (0, 2)]
    assert outs[0].token_ids == outs[1].token_ids and outs[0].pending == outs[1].pending


def test_batched_speculative_generation_equals_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(3)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 126, 70)]
    plain = [generate(model, model.new_state(), p, greedy(20, 0)).token_ids for p in prompts]
    states = [model.new_state() for _ in prompts]
    res = generate_batch(model, states, prompts, [greedy(20, 2), greedy(12, 2), greedy(20, 1)])
    assert [r.token_ids for r in res] == [plain[0], plain[1][:12], plain[2]]
    assert [s.pos for s in states] == [25, 138, 90]
    # by default greedy speculates (adaptively), sampling stays plain unless asked, and so do states of a
    # static decoder (CUDA graphs replay its one-token step)
    import agentkit.runtime.generate as gen

    assert gen.AUTO_SPECULATIVE == 1
    monkeypatch.setattr(model, "_decoder", object())
    assert draft_length(model, [SamplingParams(temperature=0.0)]) == (0, False)
    monkeypatch.setattr(model, "_decoder", None)
    assert draft_length(model, [SamplingParams(temperature=0.0)] * 2) == (1, True)
    assert draft_length(model, [SamplingParams()]) == (0, False)
    assert draft_length(model, [SamplingParams(speculative=2)]) == (2, False)
    auto = generate(model, model.new_state(), prompts[0], SamplingParams(temperature=0.0, max_tokens=40))
    assert auto.token_ids[:20] == plain[0] and auto.drafted == 8  # random weights: it stops drafting


# ------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.8),
    ],
)
def test_speculative_acceptance_reproduces_the_target_distribution(params: SamplingParams) -> None:
    """accept_drafts with a draft q far from p: the emitted token is distributed as p (chi-square)."""
    g = torch.Generator().manual_seed(1)
    main = torch.randn(2, 12, generator=g) * 2
    mtp = torch.randn(12, generator=g) * 2
    q = probs(mtp, params)
    p = probs(main[0], params)
    n = 20000
    counts = torch.zeros(12)
    for _ in range(n):
        d = int(torch.multinomial(q, 1, generator=g))
        kept, nxt = accept_drafts(main, [d], [q], params, g)
        counts[d if kept else nxt] += 1
    support = p > 0
    assert counts[~support].sum() == 0
    assert chisquare(counts[support].numpy(), (p[support] * n).numpy()).pvalue > 1e-3


def test_model_level_next_token_distribution_is_unchanged() -> None:
    """A 12-token vocabulary model with random weights: the second generated token (the one speculative
    sampling chooses, by acceptance or from the residual) over many seeds matches the plain law computed
    from the model's own logits (chi-square)."""
    cfg = ModelConfig.preset("tiny-test", vocab_size=12)
    model = V4Model(cfg).init_random_(2).eval()
    prompt = [1, 5, 7, 3, 2, 9]
    params = SamplingParams(temperature=1.0, max_tokens=3, stop_token_ids=(), stop_strings=())
    first = probs(model.extend(model.new_state(), prompt, last_only=True), params)  # type: ignore[arg-type]
    law = torch.zeros(12)
    for x1 in range(12):
        law += first[x1] * probs(model.extend(model.new_state(), [*prompt, x1], last_only=True), params)  # type: ignore[arg-type]
    n = 500
    counts = torch.zeros(12)
    drafted = accepted = 0
    for seed in range(n):
        sp = SamplingParams(
            temperature=1.0, max_tokens=3, stop_token_ids=(), stop_strings=(), seed=seed, speculative=1
        )
        res = generate(model, model.new_state(), prompt, sp)
        counts[res.token_ids[1]] += 1
        drafted += res.drafted
        accepted += res.accepted
    assert drafted >= n and 0 < accepted < drafted  # both branches taken
    assert_follows(counts, law)


# ------------------------------------------------------------------------------------------ state and API
def test_draft_state_survives_bytes_and_resumes_with_the_same_tokens() -> None:
    model, _ = tiny()
    prompt = _episode_prompts(1)[0]
    params = SamplingParams(temperature=0.0, max_tokens=24, stop_strings=(), speculative=1)
    st = model.new_state()
    stream = TokenStream(model, st, prompt, params)
    first = list(stream)
    d = stream.draft
    assert d is not None and d.main_pos == st.pos
    d2 = DraftState.from_bytes(d.to_bytes())
    st2 = model.new_state()
    st2.restore(st)
    a = generate(model, st, [first[-1] % 50 + 10], params, draft=d)
    b = generate(model, st2, [first[-1] % 50 + 10], params, draft=d2)
    c = generate(model, st.snapshot(), [7], params)  # no draft state: a cold MTP block, same output rule
    plain = generate(model, model.new_state(), [*prompt, *first, first[-1] % 50 + 10], greedy(24, 0))
    assert a.token_ids == b.token_ids
    assert a.drafted == b.drafted and a.accepted == b.accepted
    assert c.finish_reason in ("length", "stop_token") and c.drafted > 0
    assert a.token_ids[:8] == plain.token_ids[:8]


def test_counters_and_validation() -> None:
    model = random_model(3)
    res = generate(model, model.new_state(), [1, 2, 3], greedy(10, 2))
    assert res.drafted >= res.accepted >= 0 and res.steps >= 1
    assert 0.0 <= res.acceptance_rate <= 1.0 and res.tokens_per_step == pytest.approx(10 / res.steps)
    plain = generate(model, model.new_state(), [1, 2, 3], greedy(10, 0))
    assert plain.drafted == 0 and plain.steps == 10 and plain.tokens_per_step == 1.0
    with pytest.raises(GenerationError):
        SamplingParams(speculative=-1)
    no_mtp = V4Model(
        ModelConfig.preset("tiny-test", n_mtp_layers=0, compress_ratios=(0, 4, 128, 4))
    ).init_random_(1)
    assert draft_length(no_mtp, [greedy(3, 2)]) == (0, False)  # no MTP block: plain decoding
    assert generate(no_mtp, no_mtp.new_state(), [1, 2], greedy(3, 2)).drafted == 0


# ------------------------------------------------------------------------------------------ the engine
def test_engine_speculation_gives_the_plain_tokens_for_concurrent_requests() -> None:
    """Concurrent requests on one engine (small prefill chunks, so prefills and verifies share steps), with
    different draft lengths, prompts whose rejected drafts cross 4- and 128-token boundaries, a request
    whose logits processor is speculative_safe (it speculates, processed per verified position) and one
    whose processor is not (plain): every one gets generate()'s plain greedy tokens."""
    from agentkit.runtime.engine import Engine

    model = random_model(3)
    g = torch.Generator().manual_seed(3)
    lengths = (120, 125, 7, 250, 60, 190, 126, 33)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]
    ks = [1, 2, 3, 0, 2, 1, 2, 1]

    def ban(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        out[(len(generated) * 7) % 256] = float("-inf")  # a pure function of the ids so far
        return out

    ban.speculative_safe = True  # type: ignore[attr-defined]

    def unsafe(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        return ban(generated, logits)

    procs = [None, None, None, None, None, None, ban, unsafe]
    plain = []
    for p, proc in zip(prompts, procs, strict=True):
        with Engine(model, cache_bytes=0) as one:
            plain.append(one.submit(p, greedy(30, 0), logits_processor=proc).result().token_ids)
    with Engine(model, prefill_chunk=64, cache_bytes=0) as eng:
        hs = [
            eng.submit(p, greedy(30, k), logits_processor=proc)
            for p, k, proc in zip(prompts, ks, procs, strict=True)
        ]
        rs = [h.result() for h in hs]
    for r, ref, k, proc in zip(rs, plain, ks, procs, strict=True):
        assert r.token_ids == ref
        assert (r.drafted > 0) == (k > 0 and proc is not unsafe)
        assert r.steps == 30 - r.accepted  # the first token is the prompt's; the last one is fed
    assert plain[0] == generate(model, model.new_state(), prompts[0], greedy(30, 0)).token_ids
    # by default (greedy, adaptive) random weights' drafts are given up after a probe: plain from then on
    with Engine(model, cache_bytes=0) as eng:
        auto = eng.submit(prompts[0], dataclasses.replace(greedy(30, 0), speculative=None)).result()
    assert auto.token_ids == plain[0] and auto.drafted == 8 and auto.steps == 30 - auto.accepted


def test_engine_carries_the_mtp_state_across_turns_of_a_session() -> None:
    """agentkit-tiny through the engine: a first turn kept with its state and MTP state, a second turn
    continuing both with only the new tokens (the block consumes just those): the same tokens as plain
    decoding of the whole context, drafts mostly accepted, the counters in the result."""
    from agentkit.runtime.engine import Engine

    model, tok = tiny()
    prompts = _episode_prompts(1)
    first, second = prompts[0], prompts[1]
    suffix = second[len(first) :] if second[: len(first)] == first else second[-40:]
    params = SamplingParams(temperature=0.0, max_tokens=64, speculative=1)
    decode = tok.decode  # type: ignore[attr-defined]
    with Engine(model) as eng:
        r1 = eng.submit(first, params, decode=decode, keep_state=True).result()
        assert r1.state is not None and r1.draft is not None and r1.draft.main_pos == r1.state.pos
        mtp_pos = r1.draft.pos
        r2 = eng.submit(
            suffix, params, decode=decode, keep_state=True, state=r1.state, draft=r1.draft
        ).result()
        assert r2.draft is not None and r2.state is not None and r2.draft.main_pos == r2.state.pos
        assert r1.draft.pos == mtp_pos  # the given MTP state was read, not written
    plain = dataclasses.replace(params, speculative=0)
    ref1 = generate(model, model.new_state(), first, plain, decode)
    ref2 = generate(model, model.new_state(), [*first, *r1.token_ids, *suffix], plain, decode)
    assert r1.token_ids == ref1.token_ids and r2.token_ids == ref2.token_ids
    for r in (r1, r2):
        mtp_rate = (r.accepted - r.lookup_accepted) / (r.drafted - r.lookup_drafted)
        assert r.drafted > 0 and mtp_rate > 0.5 and r.tokens_per_step > 1.4


def test_engine_speculative_sampling_equals_generate_with_the_same_seed() -> None:
    """Sampled requests that ask for drafts: the engine runs generate()'s speculative sampling step for step
    (same draws from the request's seeded generator), batched with other requests, so a seed gives the
    same tokens as generate() alone."""
    from agentkit.runtime.engine import Engine

    model = random_model(3, 4)
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (40, 127, 9)]
    params = [
        SamplingParams(temperature=t, top_k=tk, seed=s, max_tokens=24, stop_token_ids=(), speculative=k)
        for t, tk, s, k in ((1.0, 0, 1, 2), (0.7, 8, 2, 1), (1.3, 0, 3, 3))
    ]
    alone = [generate(model, model.new_state(), p, sp) for p, sp in zip(prompts, params, strict=True)]
    with Engine(model, prefill_chunk=32, cache_bytes=0) as eng:
        hs = [eng.submit(p, sp) for p, sp in zip(prompts, params, strict=True)]
        rs = [h.result() for h in hs]
    for r, a in zip(rs, alone, strict=True):
        assert r.token_ids == a.token_ids and r.drafted == a.drafted > 0 and r.accepted == a.accepted


# ------------------------------------------------------------------------------------------ prompt lookup
def test_lookup_drafts_keep_the_plain_tokens_and_are_used() -> None:
    """Prompt lookup after the MTP drafts (runtime/lookup.py). agentkit-tiny's agent turns: the same tokens
    and stop as plain decoding, and lookup drafts are proposed and kept. Random weights, 16-token vocabulary
    (most bigrams recur): lookup proposes long runs the model rejects, so most steps roll back 5-9 tokens,
    across 4- and 128-token boundaries, and the tokens and final position are still the plain ones."""
    model, tok = tiny()
    decode = tok.decode  # type: ignore[attr-defined]
    looked = kept = 0
    for i, prompt in enumerate(_episode_prompts(2)):
        base = SamplingParams(temperature=0.0, max_tokens=96, speculative=0)
        plain = generate(model, model.new_state(), prompt, base, decode=decode)
        for k, m in ((1, 4 + 4 * (i % 2)), (2, 3)):
            params = dataclasses.replace(base, speculative=k, lookup=m)
            res = generate(model, model.new_state(), prompt, params, decode)
            assert res.token_ids == plain.token_ids and res.finish_reason == plain.finish_reason
            looked += res.lookup_drafted
            kept += res.lookup_accepted
            assert res.drafted >= res.lookup_drafted and res.accepted >= res.lookup_accepted
    assert looked > 0 and kept > looked // 4  # agent turns restate their context
    rand = V4Model(ModelConfig.preset("tiny-test", vocab_size=16)).init_random_(3).eval()
    g = torch.Generator().manual_seed(11)
    crossed = rejected = 0
    for n in (118, 123, 250, 60):
        prompt = torch.randint(0, 16, (n,), generator=g).tolist()  # most bigrams recur: lookup proposes
        plain = generate(rand, rand.new_state(), prompt, greedy(30, 0))
        st = rand.new_state()
        res = generate(rand, st, prompt, greedy(30, 1, lookup=8))
        assert res.token_ids == plain.token_ids and st.pos == n + 30
        rejected += res.lookup_drafted - res.lookup_accepted
        crossed += (n < 128 <= n + 30) or (n < 256 <= n + 30)
    assert rejected > 30 and crossed >= 2


def test_lookup_drafts_keep_the_sampled_distribution() -> None:
    """A lookup draft is a point-mass proposal: accepted with probability p(d), else the token comes from p
    without d. One accept step (chi-square against p), then through the model: the third generated token
    (the first one a lookup draft can decide) over many seeds against the law from the model's own logits."""
    from types import SimpleNamespace

    from agentkit.runtime.generate import _Seq
    from agentkit.runtime.lookup import TokenLookup
    from agentkit.runtime.speculative import extend_by_lookup

    params = SamplingParams(temperature=1.0, top_k=6)
    g = torch.Generator().manual_seed(4)
    main = torch.randn(2, 12, generator=g) * 2  # row 1: the lookup draft's position, row 0: the bonus
    p = probs(main[1], params)
    order = p.argsort()
    for d in (int(order[0]), int(order[-3])):  # one the target never picks (outside the top-k), one it may
        lk = TokenLookup()
        lk.extend([3, 5, 7, d, 1])
        seq = _Seq(params, None)
        tokens, qs = [7], [probs(main[0], params)]  # an MTP draft after pending 5, and its q
        extend_by_lookup(SimpleNamespace(lookup=lk), 5, 1, seq, tokens, qs)  # type: ignore[arg-type]
        assert tokens == [7, d] and seq.result.lookup_drafted == 1
        n = 20000
        counts = torch.zeros(12)
        for _ in range(n):  # the lookup draft's own accept step (after a kept MTP draft)
            kept, nxt = accept_drafts(main.flip(0), [d], qs[1:], params, g)
            counts[d if kept else nxt] += 1
        support = p > 0
        assert counts[~support].sum() == 0
        assert chisquare(counts[support].numpy(), (p[support] * n).numpy()).pvalue > 1e-3

    cfg = ModelConfig.preset("tiny-test", vocab_size=12)
    model = V4Model(cfg).init_random_(2).eval()
    prompt = torch.randint(0, 12, (200,), generator=torch.Generator().manual_seed(5)).tolist()
    sp = SamplingParams(temperature=1.0, max_tokens=4, stop_token_ids=(), stop_strings=())

    def law_after(ids: list[int]) -> torch.Tensor:
        return probs(model.extend(model.new_state(), ids, last_only=True), sp)  # type: ignore[arg-type]

    first = law_after(prompt)
    law = torch.zeros(12)
    for x1 in range(12):
        second = law_after([*prompt, x1])
        for x2 in range(12):
            law += first[x1] * second[x2] * law_after([*prompt, x1, x2])
    runs = 600
    counts = torch.zeros(12)
    looked = kept = 0
    for seed in range(runs):
        params = dataclasses.replace(sp, seed=seed, speculative=1, lookup=2)
        res = generate(model, model.new_state(), prompt, params)
        counts[res.token_ids[2]] += 1
        looked += res.lookup_drafted
        kept += res.lookup_accepted
    assert looked >= runs // 2 and 0 < kept < looked  # lookup proposed, and was both kept and rejected
    assert_follows(counts, law)


def test_lookup_history_travels_with_the_mtp_state() -> None:
    """The lookup index is part of DraftState: snapshots copy it, bytes carry it, and a blob written before
    it existed (no `lookup` tensor) still loads, with an empty history."""
    model = random_model(3)
    st = model.new_state()
    stream = TokenStream(model, st, list(range(20, 50)), greedy(6, 1))
    out = list(stream)
    d = stream.draft
    assert d is not None and d.lookup.tokens == [*range(20, 50), *out][: st.pos]  # what the state holds
    before = list(d.lookup.tokens)
    snap = d.snapshot()
    snap.lookup.extend([1, 2])
    assert d.lookup.tokens == before and snap.lookup.tokens == [*before, 1, 2]
    back = DraftState.from_bytes(d.to_bytes())
    assert back.lookup.tokens == d.lookup.tokens and back.lookup.propose([20], 3) == d.lookup.propose([20], 3)
    from agentkit.runtime import speculative as spec
    from safetensors.torch import save as st_save

    blob = d.to_bytes()
    tensors, meta = st_load(blob), json_meta(blob)
    del tensors["lookup"]
    meta["sha256"] = spec._digest(tensors)
    old = DraftState.from_bytes(st_save(tensors, metadata=meta))
    assert old.lookup.tokens == [] and old.pos == d.pos


def json_meta(blob: bytes) -> dict[str, str]:
    import json

    n = int.from_bytes(blob[:8], "little")
    return dict(json.loads(blob[8 : 8 + n])["__metadata__"])


def test_draft_lengths_beyond_a_window_are_capped_not_an_error() -> None:
    """A verify must fit one rollback journal (at most `window_size` tokens): a request asking for more MTP
    drafts, or MTP plus lookup drafts past it, drafts what fits and keeps the plain tokens."""
    model = V4Model(ModelConfig.preset("tiny-test", window_size=16, vocab_size=16)).init_random_(1).eval()
    prompt = torch.randint(0, 16, (60,), generator=torch.Generator().manual_seed(0)).tolist()
    plain = generate(model, model.new_state(), prompt, greedy(60, 0)).token_ids
    for k, m in ((40, 0), (15, 16), (3, 16)):
        res = generate(model, model.new_state(), prompt, greedy(60, k, lookup=m))
        assert res.token_ids == plain and res.drafted > 0
        assert res.drafted - res.lookup_drafted <= 15 * res.steps
    assert res.lookup_drafted > 0


def test_engine_cold_start_indexes_the_whole_prompt_for_lookup() -> None:
    """Prefilled in small chunks, an engine request keeps only the prompt's last chunks for the MTP block's
    cold start; prompt lookup still indexes the whole prompt, as generate() does."""
    from agentkit.runtime.engine import Engine

    model, _ = tiny()
    prompt = _episode_prompts(1)[0]
    assert len(prompt) > 4 * 64
    params = SamplingParams(temperature=0.0, max_tokens=8, speculative=1)
    with Engine(model, prefill_chunk=64, cache_bytes=0) as eng:
        r = eng.submit(prompt, params, keep_state=True).result()
    st = model.new_state()
    stream = TokenStream(model, st, prompt, params)
    list(stream)
    assert r.draft is not None and stream.draft is not None
    assert r.draft.lookup.tokens == stream.draft.lookup.tokens
    assert r.draft.lookup.tokens[: len(prompt)] == prompt
