"""Agents on the engine (agentkit/backends/embedded.py over runtime/engine.py), with the shipped agentkit-tiny
model on CPU: real model, real loop, real DSML parser, real tools; nothing of the model is faked.

What must hold: many concurrent runs through one shared engine give exactly the runs done one by one (token
ids, answers, event streams); a model string means one engine per process; an `Engine` is a model; a
cancelled run frees its request; forks share their parent's state and prefill only their new tokens.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from agentkit.runtime.checkpoint import shipped_checkpoint
from agentkit.runtime.engine import Engine, StepRecord
from agentkit.runtime.engine_request import EngineClosed
from agentkit.runtime.generate import SamplingParams

from agentkit import events as ev
from agentkit.agent import Agent
from agentkit.backends import ModelError, resolve
from agentkit.backends.embedded import EmbeddedModel
from agentkit.limits import Limits
from agentkit.session import RunState
from agentkit.tiny.tasks import extract_answer
from agentkit.tiny.tools import all_tools

INSTRUCTIONS = "You are a helpful assistant that solves tasks with tools. Answer with the final result."
TOOLS = ("count_words", "convert_units", "calculator", "days_between")  # as the "choose" episodes offer them
PROMPTS = [
    *(f"How many cm is {150 + 13 * i} m?" for i in range(5)),
    *(f"How many g is {3 + 2 * i} kg?" for i in range(3)),
    *(f"How many days are there from 2024-01-0{1 + i} to 2024-03-{10 + 3 * i}?" for i in range(4)),
    "How many words are in this text: the quick brown fox jumps over the lazy dog",
    "How many words are in this text: agents share one engine",
    "How many ml is 3 l?",
    "How many s is 4 min?",
]


@pytest.fixture(autouse=True, scope="module")
def _two_threads() -> Iterator[None]:
    """Engines run with their creator's thread count: the same one for every engine in this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


def _agent(backend: Any) -> Agent[None, str]:
    tools = all_tools()
    return Agent(backend, [tools[n] for n in TOOLS], instructions=INSTRUCTIONS, limits=Limits(max_steps=4))


def _ids(result: Any) -> list[int]:
    return [i for s in result.transcript.segments for i in (s.token_ids or [])]


def _event(e: ev.Event) -> tuple[Any, ...]:
    """An event without what legitimately differs between the two ways of running (call ids, usage: the
    shared engine's prefix cache serves part of each prompt, so fewer tokens are prefilled)."""
    if isinstance(e, ev.UsageUpdate):
        return ("usage", e.step)
    if isinstance(e, ev.RunEnd):
        return ("run_end", e.status, e.output)
    if isinstance(e, ev.ToolCallEnd):
        return ("tool_call_end", e.step, e.index, e.call.name, e.call.arguments)
    d = dataclasses.asdict(e)
    d.pop("call_id", None)
    return tuple(sorted(d.items()))


async def _streamed(agent: Agent[None, str], prompt: str) -> tuple[list[tuple[Any, ...]], Any]:
    events, result = [], None
    async for e in agent.stream(prompt):
        events.append(_event(e))
        if isinstance(e, ev.RunEnd):
            result = e.result
    return events, result


def test_16_concurrent_agent_runs_on_one_shared_engine_equal_the_runs_one_by_one() -> None:
    shared = EmbeddedModel("tiny", max_tokens=200)
    steps: list[StepRecord] = []
    shared.engine.on_step = steps.append
    base = shared.engine.stats()

    async def together() -> list[Any]:
        out: list[Any] = [None] * len(PROMPTS)

        async def one(i: int) -> None:
            out[i] = await _streamed(_agent(shared), PROMPTS[i])

        async with anyio.create_task_group() as tg:
            for i in range(len(PROMPTS)):
                tg.start_soon(one, i)
        return out

    concurrent = anyio.run(together)
    shared.engine.on_step = None
    # the reference: a separate engine serving one request at a time, no prefix cache
    alone = Engine(shared.model, max_seqs=1, cache_bytes=0)
    one_by_one = EmbeddedModel(engine=alone, tokenizer=shared.tokenizer, max_tokens=200)
    sequential = [anyio.run(_streamed, _agent(one_by_one), p) for p in PROMPTS]
    alone.close()

    assert len(concurrent) == len(sequential) == 16
    for (ev_c, res_c), (ev_s, res_s) in zip(concurrent, sequential, strict=True):
        assert _ids(res_c) == _ids(res_s)
        assert res_c.status == res_s.status and res_c.text == res_s.text
        assert ev_c == ev_s
    answers = [extract_answer(r.text or "") for _, r in concurrent]
    assert answers[0] == "15000 cm"  # the model is doing the task, not just agreeing with itself
    # they really were batched, and the shared system prompt was prefilled once, not 16 times
    assert max(len(s.decode) + len(s.prefill) for s in steps) >= 2
    cache = shared.engine.stats().cache
    assert cache.hits - base.cache.hits >= len(PROMPTS) - 1
    prefilled_shared = sum(r.usage.prefilled_tokens for _, r in concurrent)
    prefilled_alone = sum(r.usage.prefilled_tokens for _, r in sequential)
    assert prefilled_shared < prefilled_alone
    assert sum(r.usage.prompt_tokens for _, r in concurrent) == sum(
        r.usage.prompt_tokens for _, r in sequential
    )
    assert shared.engine.stats().running == 0 and shared.engine.stats().state_bytes == 0


def test_the_same_model_string_means_one_engine_in_the_process() -> None:
    a, b = EmbeddedModel("tiny"), EmbeddedModel("tiny", temperature=0.7, seed=3)
    agent = Agent("embedded:tiny")
    assert isinstance(agent.model, EmbeddedModel)
    assert a.engine is b.engine is agent.model.engine
    folder = shipped_checkpoint("tiny")
    assert folder is not None
    c, d = EmbeddedModel(str(folder)), Agent(f"embedded:{folder}")
    assert isinstance(d.model, EmbeddedModel)
    assert c.engine is d.model.engine and c.engine is not a.engine
    # the engine lives as long as some backend uses it, and is closed after the last one is gone
    engine = c.engine
    assert engine.generate([1, 2, 3], SamplingParams(temperature=0.0, max_tokens=2)).token_ids
    del c, d
    gc.collect()
    with pytest.raises(EngineClosed):
        engine.submit([1, 2, 3])
    again = EmbeddedModel(str(folder))
    assert again.engine is not engine and again.engine.generate([1, 2, 3]).token_ids


def test_an_engine_is_a_model() -> None:
    engine = Engine.load("tiny", max_seqs=4)
    try:
        first, second = _agent(engine), _agent(engine)
        assert isinstance(first.model, EmbeddedModel) and first.model.engine is engine
        assert isinstance(second.model, EmbeddedModel) and second.model.engine is engine
        result = first.run_sync(PROMPTS[0])
        assert result.ok and extract_answer(result.text or "") == "15000 cm"
        # the second agent's first prompt shares the system prompt: the engine's cache served it
        again = second.run_sync(PROMPTS[1])
        assert again.steps[0].model is not None and again.steps[0].model.cached_tokens > 0
        # an engine built from a bare model has no tokenizer: say so, or take one explicitly
        bare = Engine(engine.model)
        with pytest.raises(ModelError, match="no tokenizer"):
            Agent(bare)
        explicit = resolve(bare, tokenizer=first.model.tokenizer)
        assert isinstance(explicit, EmbeddedModel) and explicit.engine is bare
        assert _agent(explicit).run_sync(PROMPTS[0]).text == result.text
        bare.close()
    finally:
        engine.close()


def test_a_cancelled_run_frees_its_request() -> None:
    """Closing the event stream cancels the run; its engine request ends and its state is freed."""
    with Engine.load("tiny") as engine:

        def never_stop(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
            out = logits.clone()
            out[backend.eos_id] = float("-inf")
            return out

        backend = EmbeddedModel(engine=engine, max_tokens=2000, logits_processor=never_stop)
        handles: list[Any] = []
        submit = engine.submit

        def recording_submit(*args: Any, **kwargs: Any) -> Any:  # the real submit, its handle kept
            handles.append(submit(*args, **kwargs))
            return handles[-1]

        engine.submit = recording_submit  # type: ignore[method-assign]
        agent = Agent(backend, [], instructions=INSTRUCTIONS)
        seen: list[ev.Event] = []

        async def start_then_close() -> None:
            stream = agent.stream("Write a very long story.")
            async for e in stream:
                seen.append(e)
                if sum(isinstance(x, ev.ReasoningDelta | ev.TextDelta) for x in seen) >= 5:
                    break
            await stream.aclose()  # type: ignore[attr-defined]

        anyio.run(start_then_close)
        engine.submit = submit  # type: ignore[method-assign]
        assert not any(isinstance(e, ev.RunEnd) for e in seen)
        (handle,) = handles
        assert handle.result().finish_reason == "cancelled" and len(handle.tokens) < 2000
        # a later request runs after the scheduler's next step boundary, where ended requests are freed
        assert engine.generate([1, 2, 3], SamplingParams(temperature=0.0, max_tokens=1)).token_ids
        stats = engine.stats()
        assert stats.running == 0 and stats.waiting == 0 and stats.state_bytes == 0


def test_fork_branches_share_the_parent_state_and_equal_a_continuation_from_scratch(tmp_path: Path) -> None:
    with Engine.load("tiny") as engine:
        backend = EmbeddedModel(engine=engine, max_tokens=200)
        agent = _agent(backend)
        parent = agent.run_sync(PROMPTS[0])
        assert parent.ok
        saved = parent.state.to_json()
        follow = "How many g is 5 kg?"
        branches = agent.fork(parent, 3, run_ids=["b0", "b1", "b2"])
        assert [b.run_id for b in branches] == ["b0", "b1", "b2"] and parent.state.run_id not in {"b0", "b1"}

        async def all_branches() -> list[Any]:
            out: list[Any] = [None] * 3

            async def one(i: int) -> None:
                out[i] = await agent.run(follow, state=branches[i])

            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(one, i)
            return out

        results = anyio.run(all_branches)
        # the reference: the same follow-up on a backend that never saw this run (prefills everything)
        with Engine(engine.model, cache_bytes=0) as ref_engine:
            reference = _agent(EmbeddedModel(engine=ref_engine, tokenizer=backend.tokenizer, max_tokens=200))
            expected = reference.run_sync(follow, state=RunState.from_json(saved))
        before = parent.usage.prefilled_tokens
        new_part = expected.usage.prompt_tokens - parent.usage.prompt_tokens
        for r in results:
            assert r.status == expected.status and _ids(r) == _ids(expected)
            first = r.steps[len(parent.steps)].model
            assert first is not None
            # the parent's context came from its kept state: only the follow-up turn was prefilled
            assert first.cached_tokens == len(_ids(parent))
            assert r.usage.prefilled_tokens - before < new_part
        assert parent.state.transcript.text == RunState.from_json(saved).transcript.text  # parent untouched

        # the branches' state saves and resumes like any run's (the saved KV is the engine's kept state)
        path = agent.save_session(tmp_path / "b0.json", results[0])
        other = _agent(EmbeddedModel(engine=engine, max_tokens=200))
        loaded = other.load_session(path)
        more = other.run_sync("How many m is 3 km?", state=loaded)
        assert more.steps[len(results[0].steps)].model is not None
        assert more.steps[len(results[0].steps)].model.cached_tokens == len(_ids(results[0]))


def test_sampled_fork_branches_differ_and_reproduce_from_their_run_ids() -> None:
    with Engine.load("tiny") as engine:
        backend = EmbeddedModel(engine=engine, temperature=0.8, top_p=0.9, max_tokens=60)
        agent = Agent(backend, [], instructions=INSTRUCTIONS, limits=Limits(max_steps=1))
        root = agent.new_state("Tell me something about the sea.")

        def texts(run_ids: list[str]) -> list[list[int]]:
            return [_ids(agent.run_sync(state=b)) for b in agent.fork(root, len(run_ids), run_ids=run_ids)]

        first = texts(["x0", "x1", "x2", "x3"])
        assert len({tuple(t) for t in first}) > 1
        assert texts(["x0", "x1"]) == first[:2]
        with pytest.raises(ValueError, match="distinct"):
            agent.fork(root, 2, run_ids=["same", "same"])


def test_speculative_runs_keep_their_tokens_and_count_drafts_in_usage() -> None:
    """The embedded backend with MTP speculation on and off: the same transcripts (greedy), and the run's
    usage counts drafted / accepted tokens and decode steps; each later turn of a run hands the engine the
    MTP state its previous turn left, beside the kept state."""
    on = EmbeddedModel("tiny", max_tokens=200, speculative=1)
    off = EmbeddedModel("tiny", max_tokens=200, speculative=0)
    given: list[Any] = []
    submit = on.engine.submit

    def spy(*args: Any, **kw: Any) -> Any:
        given.append((kw.get("state"), kw.get("draft")))
        return submit(*args, **kw)

    on.engine.submit = spy  # type: ignore[method-assign]  # (off shares this engine: spy on `on` only)
    try:
        fast_runs = [_agent(on).run_sync(p) for p in PROMPTS[:3]]
    finally:
        del on.engine.submit
    plain_runs = [_agent(off).run_sync(p) for p in PROMPTS[:3]]
    for fast, plain in zip(fast_runs, plain_runs, strict=True):
        assert _ids(fast) == _ids(plain) and fast.text == plain.text
        u, p = fast.usage, plain.usage
        assert p.drafted_tokens == p.accepted_tokens == 0 and p.tokens_per_step == 1.0
        assert p.decode_steps == p.completion_tokens
        assert 0 < u.accepted_tokens <= u.drafted_tokens and u.acceptance_rate > 0.3
        assert 0 <= u.lookup_accepted_tokens <= u.lookup_drafted_tokens < u.drafted_tokens
        mtp_drafted = u.drafted_tokens - u.lookup_drafted_tokens
        assert (u.accepted_tokens - u.lookup_accepted_tokens) / mtp_drafted > 0.5
        assert u.completion_tokens == p.completion_tokens and u.tokens_per_step > 1.3
        assert u.decode_steps == u.completion_tokens - u.accepted_tokens
    later = [(s, d) for s, d in given if s is not None]
    assert later and all(d is not None and d.main_pos == s.pos for s, d in later)
