"""Measure agentkit-tiny's scope check (`agentkit.tiny.scope`): false negatives and false positives.

In shape: 200 tasks drafted by the episode generator on the held-out split (held-out names and values,
never in training), 20 of each of the ten shapes, at indices from `IN_SHAPE_START` (no other
evaluation uses them). A refusal is a false negative. Out of shape: the 200 hand-written tasks of
`scope_out_of_shape.txt` (everyday requests and near misses of the trained shapes, written apart from
the templates); an acceptance is a false positive. Each in-shape task is checked as the CLI checks it,
both without tools (the shape picks them) and with the toolbox its episode offered.

    python -m agentkit.train.scope_eval [--write]    # --write: scope-eval.json beside the model card
    python -m agentkit.train.scope_eval --near-misses [--write]

`--near-misses` runs agentkit-tiny itself (the real loop, greedy, CPU) on the out-of-shape tasks for
which `suggest` finds a trained spelling, once as the user wrote it (what `--no-scope-check` gets) and
once as suggested, with the suggested shape's toolbox both times, and judges both answers: what the
refusal saves the user from, and whether its suggestion helps (`scope-near-misses.json`).

Training code: the CLI never imports it (it only reads the classifier in `agentkit.tiny`).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from agentkit.tiny.scope import SHAPES, check_scope
from agentkit.train.episodes import draft_episode

PER_SHAPE = 20
IN_SHAPE_START = 900_000
SEED = 0
OUT_OF_SHAPE = Path(__file__).with_name("scope_out_of_shape.txt")
RESULT = Path(__file__).resolve().parents[2] / "runtime" / "weights" / "agentkit-tiny" / "scope-eval.json"
NEAR_MISSES = RESULT.with_name("scope-near-misses.json")
#: The right answer of each near miss in scope_out_of_shape.txt that has a suggested spelling.
NEAR_MISS_ANSWERS = {"17*23": "391", "17 * 23": "391", "417": "15012", "10 kg": "10000 g", "12": "42"}


def in_shape_tasks(per_shape: int = PER_SHAPE) -> list[tuple[str, str, tuple[str, ...]]]:
    """(shape, task, tools offered) for `per_shape` held-out drafts of each shape, deterministic."""
    want = {s.name: per_shape for s in SHAPES}
    out: list[tuple[str, str, tuple[str, ...]]] = []
    index = IN_SHAPE_START
    while any(want.values()):
        draft, _ = draft_episode(SEED, "heldout", index)
        index += 1
        if want.get(draft.family, 0) > 0:
            want[draft.family] -= 1
            out.append((draft.family, draft.task, tuple(draft.tools)))
    return out


def out_of_shape_tasks() -> list[str]:
    lines = OUT_OF_SHAPE.read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("#")]


def evaluate() -> dict[str, Any]:
    """The measured rates, per shape, and every misjudged task (so the card can show them)."""
    ins = in_shape_tasks()
    outs = out_of_shape_tasks()
    refused = [(shape, task) for shape, task, _ in ins if not check_scope(task).in_scope]
    refused_with_tools = [(s, t) for s, t, tools in ins if not check_scope(t, tools).in_scope]
    other_shape = [(s, t, check_scope(t).shape) for s, t, _ in ins if check_scope(t).shape not in (s, None)]
    accepted = [(t, check_scope(t).shape) for t in outs if check_scope(t).in_scope]
    per_shape = Counter(s for s, _, _ in ins)
    refused_by_shape = Counter(s for s, _ in refused)
    return {
        "in_shape": len(ins),
        "out_of_shape": len(outs),
        "false_negative_rate": len(refused) / len(ins),
        "false_negative_rate_with_episode_tools": len(refused_with_tools) / len(ins),
        "false_positive_rate": len(accepted) / len(outs),
        "by_shape": {s: {"tasks": per_shape[s], "refused": refused_by_shape[s]} for s in sorted(per_shape)},
        "refused": [{"shape": s, "task": t} for s, t in refused],
        "refused_with_episode_tools": [{"shape": s, "task": t} for s, t in refused_with_tools],
        "matched_another_shape": [{"shape": s, "task": t, "matched": m} for s, t, m in other_shape],
        "accepted_out_of_shape": [{"task": t, "matched": m} for t, m in accepted],
        "seed": SEED,
        "heldout_indices_from": IN_SHAPE_START,
    }


def _expected(task: str) -> str:
    return next(v for k, v in NEAR_MISS_ANSWERS.items() if k in task)


async def _near_misses() -> dict[str, Any]:
    from agentkit.backends import resolve
    from agentkit.tiny.scope import suggest
    from agentkit.train.handwritten_eval import answer_as_cli

    backend = resolve("embedded:tiny")
    rows = []
    for task in out_of_shape_tasks():
        spelling = suggest(task)
        if spelling is None:
            continue
        toolbox = check_scope(spelling).tools
        row: dict[str, Any] = {"task": task, "suggested": spelling, "expected": _expected(task)}
        for key, text in (("as_written", task), ("as_suggested", spelling)):
            status, answer = await answer_as_cli(backend, text, toolbox)
            row[key] = {"status": status, "answer": answer, "right": answer == row["expected"]}
        rows.append(row)
    n = len(rows)
    return {
        "tasks": n,
        "right_as_written": sum(r["as_written"]["right"] for r in rows),
        "right_as_suggested": sum(r["as_suggested"]["right"] for r in rows),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--write", action="store_true", help=f"write {RESULT.name} beside the model card")
    p.add_argument("--near-misses", action="store_true", help="run agentkit-tiny on the near misses")
    args = p.parse_args(argv)
    if args.near_misses:
        import anyio

        nm = anyio.run(_near_misses)
        for row in nm["rows"]:
            w, g = row["as_written"], row["as_suggested"]
            verdicts = ["right" if x["right"] else "wrong" for x in (w, g)]
            print(f"{row['task']!r}: {w['answer']!r} ({verdicts[0]}); "
                  f"as {row['suggested']!r}: {g['answer']!r} ({verdicts[1]})")  # fmt: skip
        print(f"right as written: {nm['right_as_written']}/{nm['tasks']}; "
              f"as suggested: {nm['right_as_suggested']}/{nm['tasks']}")  # fmt: skip
        if args.write:
            NEAR_MISSES.write_text(json.dumps(nm, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"wrote {NEAR_MISSES}")
        return 0
    r = evaluate()
    print(
        f"false negatives: {r['false_negative_rate']:.1%} of {r['in_shape']} held-out in-shape tasks "
        f"({r['false_negative_rate_with_episode_tools']:.1%} with the episode's own tools)\n"
        f"false positives: {r['false_positive_rate']:.1%} of {r['out_of_shape']} out-of-shape tasks"
    )
    for item in r["refused"]:
        print(f"  refused ({item['shape']}): {item['task']}")
    for item in r["accepted_out_of_shape"]:
        print(f"  accepted ({item['matched']}): {item['task']}")
    for item in r["matched_another_shape"]:
        print(f"  {item['shape']} task matched as {item['matched']}: {item['task']}")
    if args.write:
        RESULT.write_text(json.dumps(r, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
