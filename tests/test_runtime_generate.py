"""Generation: greedy == argmax of a fresh forward, seeded sampling, filters, stops, streaming, batching."""

from __future__ import annotations

import pytest
import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.generate import (
    GREEDY,
    GenerationError,
    SamplingParams,
    TokenStream,
    generate,
    generate_batch,
    sample,
)
from agentkit.runtime.model import V4Model


@pytest.fixture(scope="module")
def model() -> V4Model:
    return V4Model(ModelConfig.preset("tiny-test", n_layers=2, compress_ratios=(4, 0, 0))).init_random_(9)


def _decode(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i % 26) for i in ids)


def greedy_no_stop(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, stop_token_ids=(), stop_strings=())


def test_greedy_tokens_are_argmax_of_a_fresh_forward(model: V4Model) -> None:
    prompt = [5, 17, 42, 8, 99, 3, 200]
    st = model.new_state()
    res = generate(model, st, prompt, greedy_no_stop(12))
    assert len(res.token_ids) == 12 and res.finish_reason == "length"
    assert st.pos == len(prompt) + 12  # feed_last: the state holds every generated token
    full = model.extend(model.new_state(), prompt + res.token_ids)
    assert isinstance(full, torch.Tensor)
    assert full[len(prompt) - 1 : -1].argmax(-1).tolist() == res.token_ids


def test_feed_last_false_leaves_the_last_token_pending(model: V4Model) -> None:
    st = model.new_state()
    res = generate(
        model, st, [1, 2, 3], SamplingParams(temperature=0, max_tokens=5, stop_token_ids=(), feed_last=False)
    )
    assert st.pos == 3 + 4 and res.pending == [res.token_ids[-1]]
    # continuing with pending + suffix equals one fresh pass
    cont = model.extend(st, [*res.pending, 7, 8])
    ref = model.extend(model.new_state(), [1, 2, 3, *res.token_ids, 7, 8])
    assert isinstance(cont, torch.Tensor) and isinstance(ref, torch.Tensor)
    assert torch.allclose(cont, ref[-3:], rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_stops_by_token_sequence_and_string(model: V4Model) -> None:
    prompt = [11, 12, 13]
    base = generate(model, model.new_state(), prompt, greedy_no_stop(10)).token_ids
    tok = base[3]
    r = generate(
        model, model.new_state(), prompt, SamplingParams(temperature=0, max_tokens=10, stop_token_ids=(tok,))
    )
    assert r.finish_reason == "stop_token" and r.stop == tok and r.token_ids == base[: base.index(tok) + 1]
    seq = tuple(base[4:6])
    r = generate(
        model,
        model.new_state(),
        prompt,
        SamplingParams(temperature=0, max_tokens=10, stop_token_ids=(), stop_sequences=(seq,)),
    )
    first = next(i for i in range(1, 10) if tuple(base[i - 1 : i + 1]) == seq)
    assert r.finish_reason == "stop_sequence" and r.token_ids == base[: first + 1]
    text = _decode(base[5:7])
    r = generate(
        model,
        model.new_state(),
        prompt,
        SamplingParams(temperature=0, max_tokens=10, stop_token_ids=(), stop_strings=(text,)),
        decode=_decode,
    )
    first = next(i for i in range(10) if text in _decode(base[: i + 1]))
    assert r.finish_reason == "stop_string" and r.stop == text and r.token_ids == base[: first + 1]


def test_dsml_block_end_stops_by_default(model: V4Model) -> None:
    """A decoder that renders one token as the DSML closing tag stops generation right there."""
    base = generate(model, model.new_state(), [4, 5], greedy_no_stop(6)).token_ids
    marker = base[2]

    def dec(ids: list[int]) -> str:
        return "".join("</｜DSML｜tool_calls>" if i == marker else "x" for i in ids)

    r = generate(
        model, model.new_state(), [4, 5], SamplingParams(temperature=0, max_tokens=6, stop_token_ids=()), dec
    )
    assert r.finish_reason == "stop_string" and r.token_ids == base[: base.index(marker) + 1]


def test_seeded_sampling_is_reproducible_and_streams(model: V4Model) -> None:
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=123, max_tokens=15, stop_token_ids=())
    a = generate(model, model.new_state(), [3, 1, 4], p).token_ids
    seen: list[int] = []
    b = generate(model, model.new_state(), [3, 1, 4], p, on_token=seen.append).token_ids
    assert a == b == seen
    stream = TokenStream(model, model.new_state(), [3, 1, 4], p)
    streamed = []
    for tok in stream:
        streamed.append(tok)
        assert stream.result.token_ids == streamed  # the result grows as tokens are yielded
    assert streamed == a and stream.result.finish_reason == "length"
    other = generate(
        model, model.new_state(), [3, 1, 4], SamplingParams(seed=124, max_tokens=15, stop_token_ids=())
    )
    assert other.token_ids != a


def test_sample_filters_and_frequencies() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    g = torch.Generator().manual_seed(0)
    assert {sample(logits, SamplingParams(top_k=2), g) for _ in range(300)} == {0, 1}
    assert {sample(logits, SamplingParams(top_p=0.5), g) for _ in range(100)} == {0}  # p(0) = 0.61 >= 0.5
    assert {sample(logits, SamplingParams(top_p=0.7), g) for _ in range(300)} == {0, 1}
    assert sample(logits, GREEDY, g) == 0
    n = 6000
    counts = torch.bincount(
        torch.tensor([sample(logits, SamplingParams(temperature=2.0), g) for _ in range(n)]), minlength=5
    )
    expected = torch.softmax(logits / 2.0, 0)
    assert (counts / n - expected).abs().max() < 0.03


def test_batch_generation_equals_one_by_one(model: V4Model) -> None:
    prompts = [[1, 2, 3], [9] * 40, [7, 7]]
    params = [greedy_no_stop(4), greedy_no_stop(9), SamplingParams(seed=5, max_tokens=6, stop_token_ids=())]
    events: list[tuple[int, int]] = []
    batch_states = [model.new_state() for _ in prompts]
    batch = generate_batch(model, batch_states, prompts, params, on_token=lambda i, t: events.append((i, t)))
    for i, (pr, pa) in enumerate(zip(prompts, params, strict=True)):
        st = model.new_state()
        solo = generate(model, st, pr, pa)
        assert batch[i].token_ids == solo.token_ids
        assert batch_states[i].pos == st.pos
        assert [t for j, t in events if j == i] == solo.token_ids


def test_invalid_requests_and_length_limit() -> None:
    for bad in (
        dict(temperature=-1.0),
        dict(top_p=0.0),
        dict(top_k=-1),
        dict(max_tokens=0),
        dict(stop_strings=("",)),
    ):
        with pytest.raises(GenerationError):
            SamplingParams(**bad)  # type: ignore[arg-type]
    m = V4Model(
        ModelConfig.preset("tiny-test", n_layers=1, compress_ratios=(0, 0), max_seq_len=10)
    ).init_random_(0)
    with pytest.raises(GenerationError):
        generate(m, m.new_state(), [])
    st = m.new_state()
    r = generate(m, st, [1, 2, 3, 4, 5, 6], greedy_no_stop(100))
    assert (
        r.finish_reason == "length"
        and st.pos == 10
        and len(r.token_ids) == 5
        and r.pending == r.token_ids[-1:]
    )
