"""Seeded synthetic agent episodes, executed against the real tools and rendered by the real encoder.

An episode is an OpenAI-style message list (system with tools, user task, assistant turns with
`reasoning_content` and `tool_calls`, tool results, a final answer) plus the workspace files it ran in
and the exact answer it must reach. Tool results are never written by hand: each call is executed with
the same `Tool.invoke` the agent loop uses, inside a fresh LocalSandbox holding the episode's files, and
its `ToolOutcome.content` is what the transcript records. The driver then checks the scripted answer
against the one computed from the ground truth, so a tool whose output changes breaks generation
loudly instead of silently teaching the model a stale format.

The text is `encode_messages(messages, "thinking")`, and because rendering with tools is append-only,
each assistant message's span is the difference between the renderings of the prefixes before and
after it. Those spans are what the model is trained on (a deliberate mistake an episode recovers from
is shown but not trained); everything else is context. Splitting the text at exactly those boundaries
also matches inference, where the prompt and each generated turn are tokenized separately.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from agentkit.dsml.encode import encode_messages
from agentkit.tiny.tasks import Task, answer_content
from agentkit.tools.context import RunContext
from agentkit.tools.sandbox import LocalSandbox
from agentkit.tools.tool import Tool
from agentkit.train.families import FAMILIES, Draft, Final, Step
from agentkit.train.families.extra import EXTRA_FAMILIES
from agentkit.train.phrasing import Phrasing, bank, phrasing_rng
from agentkit.train.vocab import Split, episode_pools, pools

THINKING_MODE = "thinking"
SYSTEM_PROMPTS = (
    "You are a helpful assistant that solves tasks with tools. Answer with the final result.",
    "You are an agent working in a sandbox workspace. Use the tools when they help.",
    "You help users by calling tools and reporting the result.",
)


class GenerationError(RuntimeError):
    """A scripted episode disagreed with its ground truth (a tool changed, or a family has a bug)."""


@dataclass(frozen=True)
class Segment:
    text: str
    loss: bool
    """True for assistant-generated text the model is trained to produce."""


@dataclass
class Episode:
    id: str
    family: str
    split: Split
    messages: list[dict[str, Any]]
    files: dict[str, str]
    answer: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def task(self) -> str:
        return str(next(m["content"] for m in self.messages if m["role"] == "user"))

    def loss_spans(self) -> list[tuple[int, int]]:
        """Character [start, end) spans of trained text within `text`."""
        out: list[tuple[int, int]] = []
        pos = 0
        for s in self.segments:
            if s.loss:
                out.append((pos, pos + len(s.text)))
            pos += len(s.text)
        return out

    def as_task(self) -> Task:
        """The episode as a task to run through the real loop: what the run is set up with and judged by."""
        system = self.messages[0]
        return Task(
            id=self.id,
            family=self.family,
            prompt=self.task,
            instructions=str(system["content"]),
            tools=tuple(t["function"]["name"] for t in system.get("tools", [])),
            answer=self.answer,
            files=dict(self.files),
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["segments"] = [[s.text, s.loss] for s in self.segments]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Episode:
        segs = [Segment(str(t), bool(loss)) for t, loss in d["segments"]]
        return cls(
            id=d["id"],
            family=d["family"],
            split=d["split"],
            messages=list(d["messages"]),
            files=dict(d["files"]),
            answer=d["answer"],
            segments=segs,
        )


def render_segments(messages: Sequence[Mapping[str, Any]], trained: Sequence[bool]) -> list[Segment]:
    """Cut the rendered conversation into context and assistant segments (see module docstring).

    `trained[i]` says whether message i, if it is an assistant message, is a training target.
    """
    if len(trained) != len(messages):
        raise ValueError("need one trained flag per message")
    full = encode_messages(list(messages), THINKING_MODE)
    segments: list[Segment] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        # Tool results of one block merge into one user turn, so only assistant boundaries are stable.
        before = encode_messages(list(messages[:i]), THINKING_MODE)
        after = encode_messages(list(messages[: i + 1]), THINKING_MODE)
        if not before.startswith(done) or not after.startswith(before):
            raise GenerationError(f"rendering is not append-only at message {i}")
        if len(before) > len(done):
            segments.append(Segment(before[len(done) :], False))
        segments.append(Segment(after[len(before) :], bool(trained[i])))
        done = after
    if not full.startswith(done):
        raise GenerationError("rendering is not append-only at the end")
    if len(full) > len(done):
        segments.append(Segment(full[len(done) :], False))
    if "".join(s.text for s in segments) != full:
        raise GenerationError("segments do not add up to the full rendering")
    return segments


async def _invoke_all(
    tools: Mapping[str, Tool], calls: Sequence[tuple[str, dict[str, Any], str]], ctx: RunContext[None]
) -> list[str]:
    """Run one block's calls concurrently, as the loop does; results come back in call order."""
    outcomes = [""] * len(calls)

    async def one(i: int, name: str, args: dict[str, Any], call_id: str) -> None:
        outcomes[i] = (await tools[name].invoke(args, ctx, tool_call_id=call_id)).content

    async with anyio.create_task_group() as tg:
        for i, (name, args, call_id) in enumerate(calls):
            tg.start_soon(one, i, name, args, call_id)
    return outcomes


def _tool_call(call_id: str, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
    }


async def run_draft(
    draft: Draft, tools: Mapping[str, Tool], rng: random.Random
) -> tuple[list[dict[str, Any]], list[bool]]:
    """Execute the draft's script against real tools in a fresh sandbox holding its files."""
    missing = [t for t in draft.tools if t not in tools]
    if missing:
        raise GenerationError(f"family {draft.family} offers unknown tools {missing}")
    messages: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": rng.choice(SYSTEM_PROMPTS),
            "tools": [tools[t].openai_schema() for t in draft.tools],
        },
        {"role": "user", "content": draft.task},
    ]
    trained = [False, False]
    async with LocalSandbox() as sandbox:
        for path, text in draft.files.items():
            await sandbox.write_file(path, text)
        ctx: RunContext[None] = RunContext(sandbox=sandbox)
        script = draft.script()
        step = next(script)
        n_calls = 0
        while isinstance(step, Step):
            calls = []
            for c in step.calls:
                if c.name not in draft.tools:
                    raise GenerationError(f"{draft.family}: calls {c.name}, which it does not offer")
                n_calls += 1
                calls.append(_tool_call(f"call_{n_calls}", c.name, c.args))
            messages.append(
                {
                    "role": "assistant",
                    "content": step.content,
                    "reasoning_content": step.reasoning,
                    "tool_calls": calls,
                }
            )
            trained.append(step.loss)
            outcomes = await _invoke_all(
                tools,
                [(c.name, dict(c.args), tc["id"]) for c, tc in zip(step.calls, calls, strict=True)],
                ctx,
            )
            for tc, content in zip(calls, outcomes, strict=True):
                messages.append({"role": "tool", "tool_call_id": tc["id"], "content": content})
                trained.append(False)
            step = script.send(outcomes)
    if not isinstance(step, Final):
        raise GenerationError(f"{draft.family}: script ended without a Final")
    if step.answer != draft.answer:
        raise GenerationError(
            f"{draft.family}: tools led to {step.answer!r} but the ground truth is {draft.answer!r} "
            f"(task {draft.task!r}); a tool's output format may have changed"
        )
    messages.append(
        {"role": "assistant", "content": answer_content(step.answer), "reasoning_content": step.reasoning}
    )
    trained.append(True)
    return messages, trained


def episode_rng(seed: int, split: Split, index: int) -> random.Random:
    return random.Random(f"agentkit-episodes:{seed}:{split}:{index}")


ALL_FAMILIES = {**FAMILIES, **EXTRA_FAMILIES}


def draft_episode(
    seed: int,
    split: Split,
    index: int,
    family: str | None = None,
    *,
    phrasing: str | None = None,
    keep: float = 0.0,
    extra: float = 0.0,
    small: float = 0.0,
) -> tuple[Draft, random.Random]:
    """The plan for episode `index` of a split; the family is drawn by weight unless given.

    Issue 21's knobs, all drawn from the episode's phrasing generator (so without them, and for every
    episode they leave alone, the draws are the ones data v8 made): `phrasing` names the bank
    (`train` / `heldout`) that rewords the task, except with probability `keep`; `extra` is the share of
    episodes drawn from `EXTRA_FAMILIES` (combined tasks, refusals) instead of `FAMILIES`. `small` (data
    v12) is `Pools.small_numbers`: drawn from the episode's own generator, since it changes the values, so
    with it an episode's numbers differ from the same index without it.
    """
    rng = episode_rng(seed, split, index)
    prng = phrasing_rng(seed, split, index)
    names = list(FAMILIES)
    if family is None and extra > 0 and prng.random() < extra:
        more = list(EXTRA_FAMILIES)
        family = prng.choices(more, weights=[EXTRA_FAMILIES[n][1] for n in more])[0]
    chosen = family or rng.choices(names, weights=[FAMILIES[n][1] for n in names])[0]
    if chosen not in ALL_FAMILIES:
        raise ValueError(f"unknown family {chosen!r}; known: {list(ALL_FAMILIES)}")
    p = episode_pools(seed, split, index)
    if small > 0:
        p = replace(p, small_numbers=small)
    if phrasing is not None:
        p = replace(p, phrasing=Phrasing(bank(phrasing), prng, keep=keep))
    return ALL_FAMILIES[chosen][0](rng, p), rng


async def generate_async(
    n: int,
    *,
    split: Split = "train",
    seed: int = 0,
    start: int = 0,
    family: str | None = None,
    tools: Mapping[str, Tool] | None = None,
    concurrency: int = 8,
    phrasing: str | None = None,
    keep: float = 0.0,
    extra: float = 0.0,
    small: float = 0.0,
    id_prefix: str = "",
) -> list[Episode]:
    """Episodes `start .. start+n-1` of (seed, split); the same arguments always give the same list.
    `phrasing`, `keep`, `extra` and `small` as in `draft_episode`; `id_prefix` goes before every id."""
    if family is not None and family not in ALL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(ALL_FAMILIES)}")
    pools(split)  # refuses an unknown split before any work starts
    if tools is None:
        from agentkit.tiny.tools import all_tools

        tools = all_tools()
    out: list[Episode | None] = [None] * n
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async def build(k: int) -> None:
        index = start + k
        draft, rng = draft_episode(
            seed, split, index, family, phrasing=phrasing, keep=keep, extra=extra, small=small
        )
        async with limiter:
            messages, trained = await run_draft(draft, tools, rng)
        out[k] = Episode(
            id=f"{id_prefix}{split}-{seed}-{index}",
            family=draft.family,
            split=split,
            messages=messages,
            files=dict(draft.files),
            answer=draft.answer,
            segments=render_segments(messages, trained),
        )

    try:
        async with anyio.create_task_group() as tg:
            for k in range(n):
                tg.start_soon(build, k)
    except BaseExceptionGroup as eg:
        # Surface the first real failure as itself, not wrapped in a group.
        first = eg.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from eg
    return [e for e in out if e is not None]


def generate(n: int, **kwargs: Any) -> list[Episode]:
    """Blocking `generate_async`."""
    return anyio.run(lambda: generate_async(n, **kwargs))


def save_jsonl(episodes: Sequence[Episode], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in episodes:
            f.write(json.dumps(e.to_json(), ensure_ascii=False) + "\n")


def load_jsonl(path: str | Path) -> Iterator[Episode]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield Episode.from_json(json.loads(line))
