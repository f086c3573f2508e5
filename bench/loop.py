"""Per-step framework overhead of the agent loop, and whether it stays flat as history grows.

A scripted model (no network, no inference) answers every step with one DSML call to a no-op tool, so
everything measured is the framework: streaming parse, events, dispatch through a task group, the
typed tool's validation, the transcript suffix, usage accounting. For N steps of history we report the
mean per step over the whole run and the median of the last 10 steps (history ~N) — the second is the
number that must not grow with N.

    python bench/loop.py                 # 10, 100, 1000 steps, asyncio
    python bench/loop.py --backend trio --steps 10 100 1000 --repeat 3
    python bench/loop.py --sync-tool      # a sync tool adds its worker-thread hop

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
from agentkit.dsml import render_assistant_turn
from agentkit.events import Event, StepStart
from agentkit.limits import Limits
from agentkit.models import ScriptedModel


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


async def one_run(steps: int, chunk: int | None, sync_tool: bool = False) -> tuple[float, list[float]]:
    outputs = [completion(i) for i in range(steps)] + [FINAL]
    model = ScriptedModel(outputs, chunk_size=chunk, record_prompts=False)
    agent: Agent[None, str] = Agent(model, [noop_sync if sync_tool else noop], limits=Limits(max_steps=None))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ap.add_argument("--chunk", type=int, default=0, help="stream chunk size in chars (0 = whole output)")
    ap.add_argument("--sync-tool", action="store_true", help="a sync no-op tool (adds a worker-thread hop)")
    args = ap.parse_args()
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
