"""Trainer: masked packing, loss goes down, determinism, checkpoint round trip, greedy replay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkit.dsml.tokens import BOS, USER
from agentkit.train.bpe import BPETokenizer, train_bpe
from agentkit.train.data import IGNORE, Example, concat, copy_rows, pack, pack_flat, tokenize_episode
from agentkit.train.episodes import Episode, Segment, generate
from agentkit.train.evaluate import forced, replay
from agentkit.train.export import load_model, save_model
from agentkit.train.trainer import LoadBalancer, TrainConfig, build_model, copy_phase, micro_config, train

TAIL = 128  # tokens per smoke example: the end of an episode, where the assistant turns are


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return generate(12, seed=5)


@pytest.fixture(scope="module")
def tok(episodes: list[Episode]) -> BPETokenizer:
    return train_bpe([e.text for e in episodes], 1500)


@pytest.fixture(scope="module")
def tails(episodes: list[Episode], tok: BPETokenizer) -> list[Example]:
    out = []
    for e in episodes:
        ex = tokenize_episode(tok.encode, e)
        out.append(Example(ex.ids[-TAIL:], ex.loss[-TAIL:]))
    return out


def test_labels_are_exactly_the_assistant_tokens(episodes: list[Episode], tok: BPETokenizer) -> None:
    exs = [tokenize_episode(tok.encode, e) for e in episodes[:4]]
    data = pack(exs, max(len(x.ids) for x in exs) * 2, pad_id=2)
    assert len(data) < 4  # packing put more than one episode in a row
    trained_text = "".join(s.text for e in episodes[:4] for s in e.segments if s.loss)
    got = [int(t) for row in data.labels for t in row if int(t) != IGNORE]
    assert tok.decode(got) == trained_text
    # every row starts an episode at position 0 with BOS
    assert all(int(r[0]) == 0 for r in data.inputs)
    with pytest.raises(ValueError, match="does not fit"):
        pack(exs, 10, pad_id=2)


def _cfg(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=2, lr=1e-2, warmup=3, log_every=1, seed=3, device="cpu")


def test_smoke_training_loss_decreases(tails: list[Example], tok: BPETokenizer) -> None:
    data = pack(tails, TAIL, pad_id=2)
    model, hist = train(micro_config(tok.vocab_size), data, _cfg(20))
    losses = [r["loss"] for r in hist.records]
    mtp = [r["mtp_loss"] for r in hist.records]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert sum(mtp[-3:]) / 3 < sum(mtp[:3]) / 3, mtp
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_same_seed_same_run(tails: list[Example], tok: BPETokenizer) -> None:
    data = pack(tails, TAIL, pad_id=2)
    cfg = micro_config(tok.vocab_size)
    _, h1 = train(cfg, data, _cfg(2))
    _, h2 = train(cfg, data, _cfg(2))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in h1.records]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in h2.records]


def test_refuses_rows_without_trained_tokens(tails: list[Example], tok: BPETokenizer) -> None:
    data = pack([Example(x.ids, [False] * len(x.ids)) for x in tails], TAIL, pad_id=2)
    with pytest.raises(ValueError, match="no trained"):
        train(micro_config(tok.vocab_size), data, _cfg(1))


def test_checkpoint_round_trip(tok: BPETokenizer, tmp_path: Path) -> None:
    cfg = micro_config(tok.vocab_size)
    model = build_model(cfg, 0, torch.device("cpu"))
    save_model(model, tok, tmp_path, meta={"note": "test"})
    assert (tmp_path / "config.json").exists() and (tmp_path / "tokenizer.json").exists()
    back, tok2 = load_model(tmp_path)
    assert tok2.merges == tok.merges
    # every tensor comes back exactly, or (matrices, stored bf16 like V4's non-quantized layout) rounded
    original, loaded = model.state_dict(), back.state_dict()
    assert original.keys() == loaded.keys()
    rounded = 0
    for name, t in original.items():
        got = loaded[name]
        if torch.equal(got, t):
            continue
        assert t.is_floating_point() and torch.equal(got, t.to(torch.bfloat16).to(got.dtype)), name
        rounded += 1
    assert rounded > 0
    x = torch.randint(0, tok.vocab_size, (1, 40))
    with torch.no_grad():
        model.load_state_dict(loaded)
        torch.testing.assert_close(back(x).logits, model(x).logits)


def _short(e: Episode) -> Episode:
    """The episode with its long tools section swapped for a bare prompt (turns and results unchanged),
    to keep CPU cost down where the test is about the machinery, not the prompt."""
    first = e.segments[0]
    short = Segment(BOS + first.text[first.text.index(USER) :], False)
    return dataclasses.replace(e, segments=[short, *e.segments[1:]])


def test_replay_follows_teacher_forced_argmax(episodes: list[Episode], tok: BPETokenizer) -> None:
    """Incremental greedy replay agrees with the full-sequence forward on the reference prefix."""
    model = build_model(micro_config(tok.vocab_size), 1, torch.device("cpu"))
    eps = [_short(e) for e in episodes[:3]]
    res = replay(model, tok.encode, tok.decode, eps, batch=3, keep_failures=3)
    one_pass = forced(model, tok.encode, eps)
    assert [f.generated_ids for f in one_pass.failures] == [f.generated_ids for f in res.failures]
    assert one_pass.succeeded == res.succeeded
    assert res.episodes == 3 and res.succeeded == 0 and len(res.failures) == 3  # an untrained model fails
    for e, f in zip(eps, res.failures, strict=True):
        assert f.episode_id == e.id
        ids = tokenize_episode(tok.encode, e).ids
        start = len(tok.encode(e.text[: e.loss_spans()[0][0]]))
        gen = list(f.generated_ids)
        with torch.no_grad():
            logits = model(torch.tensor([ids[: start + len(gen)]])).logits[0]
        want = [int(t) for t in logits[start - 1 : start - 1 + len(gen)].argmax(-1)]
        assert gen == want
        assert ids[start : start + len(gen) - 1] == gen[:-1]  # all but the last token were right
        assert ids[start + len(gen) - 1] != gen[-1]


def test_replay_succeeds_on_a_memorized_episode(episodes: list[Episode], tok: BPETokenizer) -> None:
    """Train on one multi-turn episode until it is memorized: replay must then reproduce every turn.

    The long tools section is swapped for a short prompt to keep the CPU cost down; the turns, tool
    results and their boundaries are the real episode's.
    """
    e = _short(next(x for x in episodes if len([s for s in x.segments if s.loss]) >= 2))
    ex = tokenize_episode(tok.encode, e)
    data = pack([ex], len(ex.ids), pad_id=2)
    cfg = TrainConfig(steps=30, batch_size=1, lr=1e-2, warmup=3, log_every=10, seed=0, device="cpu")
    model, _ = train(micro_config(tok.vocab_size), data, cfg)
    res = replay(model, tok.encode, tok.decode, [e])
    assert res.success_rate == 1.0, res.failures
    assert forced(model, tok.encode, [e]).success_rate == 1.0


def test_load_balancer_moves_biases_toward_idle_experts() -> None:
    model = build_model(micro_config(300), 0, torch.device("cpu"))
    bal = LoadBalancer(model, 0.01)
    assert bal.gates and all(g.bias is not None and not g.bias.requires_grad for g in bal.gates)
    loads: dict[int, torch.Tensor] = {}

    def grab(module: torch.nn.Module, args: object, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        loads[id(module)] = torch.bincount(out[1].flatten(), minlength=8).float()

    handles = [g.register_forward_hook(grab) for g in bal.gates]
    with torch.no_grad():
        model(torch.randint(3, 300, (2, 64)), mtp=True)
    for h in handles:
        h.remove()
    ratio = bal.step()
    assert ratio is not None and float(ratio) >= 1.0
    for g in bal.gates:
        assert g.bias is not None
        load = loads[id(g)]
        torch.testing.assert_close(g.bias, 0.01 * torch.sign(load.mean() - load))
    bal.close()


def test_flat_packing_equals_list_packing(episodes: list[Episode], tok: BPETokenizer) -> None:
    """pack (lists) and pack_flat (the compact on-disk form) are the same function."""
    exs = [tokenize_episode(tok.encode, e) for e in episodes]
    a = pack(exs, 1500, pad_id=2)
    lengths = np.array([len(x.ids) for x in exs])
    ids = np.concatenate([np.array(x.ids) for x in exs])
    mask = np.concatenate([np.array(x.loss) for x in exs])
    b = pack_flat(ids, mask, lengths, 1500, pad_id=2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    # packing is first-fit in order: every row but the last is too full for the next episode
    assert len(a) < len(exs)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(40, 300), st.integers(0, 2**31 - 1))
def test_copy_rows_train_only_on_repeated_tokens(n_rows: int, seq_len: int, seed: int) -> None:
    p = copy_rows(n_rows, seq_len, (3, 50), seed, span=(2, 9))
    assert p.inputs.shape == p.labels.shape == (n_rows, seq_len)
    assert int(p.inputs.min()) >= 3 and int(p.inputs.max()) < 50
    for r in range(n_rows):
        x, lab = p.inputs[r].tolist(), p.labels[r].tolist()
        trained = [i for i in range(seq_len) if lab[i] != IGNORE]
        # blocks of 2n hold n-1 trained tokens, n in 2..9 (the last block may be cut short)
        assert len(trained) >= seq_len // 4 - 9
        for i in trained:
            assert lab[i] == x[i + 1]
            # the target and the token before it both repeat what stood n places earlier
            assert any(i - n >= 0 and x[i + 1 - n] == x[i + 1] and x[i - n] == x[i] for n in range(2, 10))
    assert len(concat(p, p)) == 2 * n_rows


def test_copy_phase_trains_in_place_on_copy_rows() -> None:
    model = build_model(micro_config(64), 0, torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    recs = copy_phase(model, (3, 27), steps=60, lr=6e-3, batch=4, seq_len=64, span=(2, 6), seed=0)
    assert [r["step"] for r in recs] == [0.0, 25.0, 50.0, 59.0]
    # at least the token range is learned (uniform over 64 outputs -> over 24 tokens)
    assert recs[-1]["loss"] < recs[0]["loss"] - 0.5, recs
    assert all(0.0 <= r["copy_accuracy"] <= 1.0 for r in recs)
    assert not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
