"""Best-of-n with forks: one agent task continued n ways on one engine, keeping the answer that verifies.

The shipped agentkit-tiny model, sampled (temperature 1.0 by default), runs a task n times at once: the
task's run is forked (`agent.fork`) into n branches that share its context and batch their steps together
on one engine; each branch is a full agent run (tool calls included), and an answer is kept only if it
verifies. The default task is one tiny gets wrong greedily: a product offered next to three other tools
(it was trained to use the calculator alone for arithmetic), so most branches go wrong and the rare one
that does not is kept (1 of the 16 default branches on CPU).
`--task` picks one of `agentkit demo`'s tasks instead (index or id; tasks with
workspace files get a sandbox per branch). A verifier here is the task's expected answer, computed when
the task was made (the default task's by `agentkit.tiny.calc`, independently of the model).

  python examples/best_of_n.py                  # 16 branches of the default task
  python examples/best_of_n.py --n 4 --task 3   # a demo task
  python examples/best_of_n.py --measure        # time and memory per extra branch, n = 1, 2, 4, 8

Branch k samples with the seed of its run id (`best-of-n/k`), so a run is reproducible.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import anyio
from agentkit.runtime.engine import Engine, StepRecord

from agentkit.agent import Agent
from agentkit.backends.embedded import EmbeddedModel
from agentkit.demo import demo_tasks
from agentkit.limits import Limits
from agentkit.tiny import calc
from agentkit.tiny.tasks import MAX_STEPS, Task, extract_answer, task_sandbox
from agentkit.tiny.tools import all_tools

CHOOSE = next(t for t in demo_tasks() if t.family == "choose")
DEFAULT = Task(
    id="product-among-four-tools",
    family="choose",
    prompt="Please calculate the product of 23 and 47.",
    instructions=CHOOSE.instructions,
    tools=CHOOSE.tools,
    answer=calc.calculate("23 * 47"),
)


@dataclass
class Branch:
    k: int
    status: str
    answer: str | None
    verified: bool
    steps: int
    prompt_tokens: int
    prefilled: int
    completion: int


@dataclass
class Outcome:
    branches: list[Branch]
    seconds: float
    peak_running: int
    peak_state_bytes: int
    """What running requests' states allocated, at the step where that was largest (a branch's own window
    rings, compressor tails and new rows: the entries it shares with its parent are not allocated again)."""
    kept_bytes: int
    """Memory the branches' kept states hold after their runs (what the engine keeps between turns), shared
    entries counted once."""
    stats: Any


async def best_of_n(task: Task, n: int, temperature: float, sandbox: str, engine: Engine) -> Outcome:
    backend = EmbeddedModel(engine=engine, temperature=temperature, top_p=0.95, max_tokens=300)
    tools = all_tools()
    peak = {"running": 0, "bytes": 0}

    def watch(_: StepRecord) -> None:  # on the scheduler thread, after each step
        s = engine.stats()
        peak["running"] = max(peak["running"], s.running)
        peak["bytes"] = max(peak["bytes"], s.state_bytes)

    engine.on_step = watch
    results: list[Any] = [None] * n
    t0 = time.perf_counter()

    def agent(sb: Any = None) -> Agent[None, str]:  # as `task_agent` sets it up, the sandbox optional
        offered = [tools[name] for name in task.tools]
        limits = Limits(max_steps=MAX_STEPS)
        return Agent(backend, offered, instructions=task.instructions, sandbox=sb, limits=limits)

    async def run_branch(k: int, state: Any) -> None:
        if task.files:  # a branch may write files: each gets its own sandbox
            async with await task_sandbox(task, sandbox) as sb:
                results[k] = await agent(sb).run(state=state)
        else:
            results[k] = await agent().run(state=state)

    root = agent().new_state(task.prompt)
    root.run_id = "best-of-n"
    branches = agent().fork(root, n, run_ids=[f"best-of-n/{k}" for k in range(n)])
    async with anyio.create_task_group() as tg:
        for k, state in enumerate(branches):
            tg.start_soon(run_branch, k, state)
    seconds = time.perf_counter() - t0
    engine.on_step = None
    rows = []
    for k, r in enumerate(results):
        answer = extract_answer(r.text or "")
        rows.append(
            Branch(
                k,
                r.status,
                answer,
                answer == task.answer,
                r.usage.requests,
                r.usage.prompt_tokens,
                r.usage.prefilled_tokens,
                r.usage.completion_tokens,
            )
        )
    return Outcome(rows, seconds, peak["running"], peak["bytes"], backend.kept_state_bytes(), engine.stats())


def show(task: Task, out: Outcome) -> None:
    print(f"task: {task.prompt!r} (expected {task.answer!r})")
    head = ("branch", "status", "verified", "steps", "prompt", "prefilled", "gen")
    print("".join(f"{h:>10}" for h in head) + "  answer")
    for b in out.branches:
        ok = "yes" if b.verified else "no"
        cells = (b.k, b.status, ok, b.steps, b.prompt_tokens, b.prefilled, b.completion)
        print("".join(f"{c:>10}" for c in cells) + f"  {b.answer!r}")
    kept = next((b for b in out.branches if b.verified), None)
    print(f"kept: branch {kept.k}, answer {kept.answer!r}" if kept else "kept: none verified")
    c = out.stats.cache
    print(
        f"{out.seconds:.2f} s; at most {out.peak_running} requests running together, their states "
        f"{out.peak_state_bytes / 2**20:.2f} MiB; kept states after the runs "
        f"{out.kept_bytes / 2**20:.2f} MiB; "
        f"prefix cache: {c.hits} hits, {c.tokens_reused} tokens reused, {c.bytes_held / 2**20:.2f} MiB held"
    )


def measure(task: Task, temperature: float, sandbox: str) -> None:
    """n = 1, 2, 4, 8 on a fresh engine each (so no n profits from another's cache)."""
    rows = []
    for n in (1, 2, 4, 8):
        with Engine.load("tiny") as engine:
            out = anyio.run(best_of_n, task, n, temperature, sandbox, engine)
        rows.append((n, out))
        print(
            f"n={n}: {out.seconds:.2f} s, {sum(b.completion for b in out.branches)} tokens generated, "
            f"{sum(b.prefilled for b in out.branches)} prefilled, peak running states "
            f"{out.peak_state_bytes / 2**20:.2f} MiB, kept states {out.kept_bytes / 2**20:.2f} MiB"
        )
    (_, one), (n8, eight) = rows[0], rows[-1]
    extra = n8 - 1
    print(
        f"per extra branch (n=1 -> n={n8}): {(eight.seconds - one.seconds) / extra:.3f} s, "
        f"{(eight.peak_state_bytes - one.peak_state_bytes) / extra / 2**20:.3f} MiB of running state, "
        f"{(eight.kept_bytes - one.kept_bytes) / extra / 2**20:.3f} MiB of kept state"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--task", default=None, help="a demo task's index or id (default: see above)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--sandbox", default="auto", help="for tasks with workspace files: auto, bwrap, docker")
    ap.add_argument("--measure", action="store_true", help="time and memory per extra branch")
    args = ap.parse_args()
    task = DEFAULT
    if args.task is not None:
        tasks = demo_tasks()
        task = tasks[int(args.task)] if args.task.isdigit() else next(t for t in tasks if t.id == args.task)
    if args.measure:
        measure(task, args.temperature, args.sandbox)
        return
    with Engine.load("tiny") as engine:
        show(task, anyio.run(best_of_n, task, args.n, args.temperature, args.sandbox, engine))


if __name__ == "__main__":
    main()
