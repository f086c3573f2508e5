"""Per-step framework overhead of the agent loop, and whether it stays flat as history grows.

A scripted model (no network, no inference) answers every step with one DSML call to a no-op tool, so
everything measured is the framework: streaming parse, events, dispatch through a task group, the
typed tool's validation, the transcript suffix, usage accounting. For N steps of history we report the
mean per step over the whole run and the median of the last 10 steps (history ~N) — the second is the
number that must not grow with N.

    python bench/loop.py                 # 10, 100, 1000 steps, asyncio
    python bench/loop.py --backend trio --steps 10 100 1000 --repeat 3
    python bench/loop.py --sync-tool      # a sync tool adds its worker-thread hop
    python bench/loop.py --resume 500 2000 8000   # embedded: resume a saved session with vs without KV
    python bench/loop.py --store-overhead         # durable runs: file / file+fsync / SQLite store per step

Anchors (same harness idea, 2-vCPU VM; see research/agent-anchors.md §7.1): smolagents 0.47 ms/turn,
LangGraph 2.0 ms, pydantic-ai 3.8-4.4 ms, OpenAI Agents SDK 3.9-6.9 ms.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any

import anyio
from agentkit.tools.tool import tool

from agentkit.agent import Agent
from agentkit.backends import ScriptedModel
from agentkit.dsml import render_assistant_turn
from agentkit.events import Event, StepStart
from agentkit.limits import Limits


@tool(name="noop")
async def noop(x: int) -> str:
    """Do nothing."""
    return "ok"


@tool(name="noop")
def noop_sync(x: int) -> str:
    """Do nothing (a sync tool: runs in a worker thread, as sync tools do)."""
    return "ok"


def completion(step: int) -> str:
    msg = {
        "reasoning_content": f"step {step}: call the tool",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "noop", "arguments": f'{{"x": {step}}}'}}],
    }
    return render_assistant_turn(msg, "thinking")


FINAL = render_assistant_turn({"reasoning_content": "done", "content": "finished"}, "thinking")


async def one_run(
    steps: int, chunk: int | None, sync_tool: bool = False, store: Any = None
) -> tuple[float, list[float]]:
    outputs = [completion(i) for i in range(steps)] + [FINAL]
    model = ScriptedModel(outputs, chunk_size=chunk, record_prompts=False)
    tools = [noop_sync if sync_tool else noop]
    agent: Agent[None, str] = Agent(model, tools, limits=Limits(max_steps=None), store=store)
    stamps: list[float] = []
    t0 = time.perf_counter()
    async for event in agent.stream("benchmark"):
        if isinstance(event, StepStart):
            stamps.append(time.perf_counter())
        last: Event = event
    total = time.perf_counter() - t0
    result: Any = getattr(last, "result", None)
    assert result is not None and result.ok, result
    per_step = [b - a for a, b in itertools.pairwise(stamps)]
    return total, per_step


async def bench(
    steps_list: list[int], repeat: int, chunk: int | None, sync_tool: bool
) -> list[tuple[int, float, float]]:
    await one_run(10, chunk, sync_tool)  # warm-up: imports, pydantic schema caches
    rows = []
    for steps in steps_list:
        means, tails = [], []
        for _ in range(repeat):
            total, per_step = await one_run(steps, chunk, sync_tool)
            means.append(total / (steps + 1))
            tails.append(statistics.median(per_step[-10:]))
        rows.append((steps, statistics.median(means) * 1e3, statistics.median(tails) * 1e3))
    return rows


async def store_bench(steps_list: list[int], repeat: int, tmp: str) -> list[tuple[str, int, float, float]]:
    """Mean ms/step with each store against none (every checkpoint of every step saved)."""
    from agentkit.store import FileStore, SQLiteStore

    kinds = {
        "none": lambda d: None,
        "file": lambda d: FileStore(d),
        "file, fsync": lambda d: FileStore(d, fsync=True),
        "sqlite (WAL)": lambda d: SQLiteStore(f"{d}.db"),
    }
    await one_run(10, None)
    rows = []
    for steps in steps_list:
        base = 0.0
        for name, make in kinds.items():
            means = []
            for r in range(repeat):
                total, _ = await one_run(
                    steps, None, store=make(f"{tmp}/{name}-{steps}-{r}".replace(" ", ""))
                )
                means.append(total / (steps + 1) * 1e3)
            mean = statistics.median(means)
            base = mean if name == "none" else base
            rows.append((name, steps, mean, mean - base))
    return rows


def resume_bench(history_chars: list[int], tmp: str) -> list[tuple[int, int, float, int, float]]:
    """Embedded backend: resume a saved session with its KV state vs. from the transcript alone.

    Runtime tiny-test preset, seeded random weights, a byte-level tokenizer with the V4 added tokens,
    outputs forced through a logits processor; one torch thread (the ops are tiny)."""
    from pathlib import Path

    import torch
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.model import V4Model
    from agentkit.runtime.tokenizer import AddedToken, Tokenizer

    from agentkit.backends.embedded import EmbeddedModel
    from agentkit.dsml import ASSISTANT, BOS, DSML, EOS, THINK_END, THINK_START, USER
    from agentkit.session import load_session

    torch.set_num_threads(1)
    specials = [BOS, EOS, USER, ASSISTANT, THINK_START, THINK_END, DSML]
    tok = Tokenizer(
        [], {bytes([b]): b for b in range(256)}, [AddedToken(t, 256 + i) for i, t in enumerate(specials)]
    )
    model = V4Model(ModelConfig.preset("tiny-test", vocab_size=256 + len(specials))).init_random_(0)
    answer = render_assistant_turn({"reasoning_content": "r", "content": "ok"}, "thinking")

    def backend() -> EmbeddedModel:
        forced = tok.encode(answer, allow_special=True)

        def force(generated: list[int], logits: Any) -> Any:
            out = torch.full_like(logits, float("-inf"))
            out[forced[len(generated)]] = 0.0
            return out

        return EmbeddedModel(model=model, tokenizer=tok, logits_processor=force)

    rows = []
    for n in history_chars:
        agent: Agent[None, str] = Agent(backend(), [], instructions="s")
        first = agent.run_sync("x" * n)
        path = agent.save_session(Path(tmp) / f"run{n}.json", first)
        results = []
        for with_kv in (True, False):
            again: Agent[None, str] = Agent(backend(), [], instructions="s")
            state = again.load_session(path) if with_kv else load_session(path)[0]
            before = state.usage.prefilled_tokens
            t0 = time.perf_counter()
            second = again.run_sync("and now?", state=state)
            results.append((second.usage.prefilled_tokens - before, (time.perf_counter() - t0) * 1e3))
        history = first.usage.prompt_tokens + first.usage.completion_tokens
        rows.append((history, results[0][0], results[0][1], results[1][0], results[1][1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ap.add_argument("--chunk", type=int, default=0, help="stream chunk size in chars (0 = whole output)")
    ap.add_argument("--sync-tool", action="store_true", help="a sync no-op tool (adds a worker-thread hop)")
    ap.add_argument(
        "--resume",
        type=int,
        nargs="*",
        metavar="CHARS",
        help="instead: embedded session resume with/without KV",
    )
    ap.add_argument("--store-overhead", action="store_true", help="instead: per-step cost of each run store")
    args = ap.parse_args()
    if args.store_overhead:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            srows = anyio.run(store_bench, [20, 200], args.repeat, tmp)
        print("durable-run store overhead (scripted model, async no-op tool, every checkpoint saved)")
        print("| store | steps | mean ms/step | overhead ms/step |")
        print("|---|---:|---:|---:|")
        for name, steps, mean, over in srows:
            print(f"| {name} | {steps} | {mean:.3f} | {over:+.3f} |")
        return
    if args.resume is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            table = resume_bench(args.resume or [500, 2000, 8000], tmp)
        print("embedded session resume (tiny-test preset, CPU, 1 thread): first request after loading a save")
        print(
            "| history tokens | with KV: prefilled | with KV: ms | without KV: prefilled | without KV: ms |"
        )
        print("|---:|---:|---:|---:|---:|")
        for history, p_kv, ms_kv, p_no, ms_no in table:
            print(f"| {history} | {p_kv} | {ms_kv:.0f} | {p_no} | {ms_no:.0f} |")
        return
    chunk = args.chunk or None
    rows = anyio.run(bench, args.steps, args.repeat, chunk, args.sync_tool, backend=args.backend)
    kind = "sync" if args.sync_tool else "async"
    print(
        f"agent loop overhead ({args.backend}, scripted model, {kind} no-op tool, "
        f"chunk={args.chunk or 'whole'}, events consumed through agent.stream)"
    )
    print("| steps of history | mean ms/step (whole run) | ms/step at end (median of last 10) |")
    print("|---:|---:|---:|")
    for steps, mean, tail in rows:
        print(f"| {steps} | {mean:.3f} | {tail:.3f} |")


if __name__ == "__main__":
    main()
