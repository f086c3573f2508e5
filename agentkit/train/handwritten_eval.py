"""agentkit-tiny on hand-written tasks (`handwritten_tasks.tsv`): a check outside both phrasing banks.

The paraphrase set of `phrase_eval` is worded by a bank the project wrote itself, with the generator's
number ranges (operands mostly of 3-5 digits) and names, so a model can improve on it and still get worse
at what people type: one- and two-digit sums, "take 58 away from 200", a politeness word in the middle.
These ~40 tasks were written by hand for this file and are never trained on or used to develop the banks
or the scope matcher; each runs as `agentkit run` runs it (the scope check's toolbox when the intent
matcher places the task, else every tool; greedy, the real loop, an empty local sandbox) and is judged
against its answer. Small, so a difference of a task or two is noise; it is a tripwire for regressions
that the generated sets cannot see, not a score to tune on.

    python -m agentkit.train.handwritten_eval [--model DIR] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

TASKS = Path(__file__).with_name("handwritten_tasks.tsv")


def tasks() -> list[tuple[str, str]]:
    """(task, expected answer) pairs; `REFUSAL` stands for the model's refusal sentence."""
    from agentkit.tiny.tasks import REFUSAL

    rows = []
    for line in TASKS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        task, expected = line.split("\t")
        rows.append((task, REFUSAL if expected == "REFUSAL" else expected))
    return rows


async def answer_as_cli(backend: Any, task: str, toolbox: tuple[str, ...] | None) -> tuple[str, str | None]:
    """One run of `task` the way `agentkit run` does it: the given toolbox (every tiny tool when None),
    the CLI's instructions and step limit, an empty sandbox. Returns (status, extracted answer)."""
    from agentkit.agent import Agent
    from agentkit.demo import RUN_INSTRUCTIONS
    from agentkit.limits import Limits
    from agentkit.tiny.tasks import MAX_STEPS, extract_answer
    from agentkit.tiny.tools import all_tools
    from agentkit.tools.sandbox import LocalSandbox

    tools = all_tools()
    names = list(toolbox) if toolbox else list(tools)
    async with LocalSandbox() as sandbox:  # these tasks name no files
        agent: Agent[None, str] = Agent(
            backend,
            tools=[tools[n] for n in names],
            instructions=RUN_INSTRUCTIONS,
            sandbox=sandbox,
            limits=Limits(max_steps=MAX_STEPS),
        )
        result = await agent.run(task)
    answer = extract_answer(result.text or "") if result.status == "completed" else None
    return result.status, answer


async def evaluate(model: str) -> dict[str, Any]:
    from agentkit.backends.embedded import EmbeddedModel
    from agentkit.tiny.scope import check_scope
    from agentkit.tiny.tasks import REFUSAL

    backend = EmbeddedModel(model, temperature=0.0, max_tokens=512)
    rows = []
    for task, expected in tasks():
        verdict = check_scope(task, paraphrases=True)
        status, answer = await answer_as_cli(backend, task, verdict.tools if verdict.in_scope else None)
        right = answer == expected
        # through `agentkit run` a task the scope check refuses ends refused before the model runs
        cli = (not verdict.in_scope and expected == REFUSAL) or (verdict.in_scope and right)
        row = {"task": task, "expected": expected, "answer": answer, "status": status}
        rows.append(row | {"scope_accepts": verdict.in_scope, "right": right, "right_through_cli": cli})
    return {"model": model, "tasks": len(rows), "right": sum(r["right"] for r in rows),
            "right_through_cli": sum(r["right_through_cli"] for r in rows), "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[2] / "runtime" / "weights" / "agentkit-tiny"
    p.add_argument("--model", default=str(default))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = anyio.run(evaluate, args.model)
    for r in result["rows"]:
        mark = "ok " if r["right"] else "BAD"
        print(f"{mark} {r['task']!r} -> {r['answer']!r} (expected {r['expected']!r})")
    n = result["tasks"]
    print(
        f"right: {result['right']}/{n} (the model on every task); through agentkit run's scope check: "
        f"{result['right_through_cli']}/{n}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
