"""Issue 21's four evaluation sets through the real loop (as `loop_eval`: agent, embedded backend, real
tools, a fresh bubblewrap sandbox per task), each reported per family with solve rate, strict-DSML rate
of the generated turns, and the share of runs that ended in the refusal:

  template    held-out episodes worded by the families' own templates (the model card's 500 set: the
              same seed, split and indices)
  paraphrase  the same episodes (files, values, answers) worded by the held-out bank of phrasings
              (`phrasing_heldout`, never trained on)
  combined    tasks combining two shapes (`families.extra.combo_family`), held-out names and values,
              worded by the held-out bank
  refusal     tasks none of the shapes can do, from the held-out bank's refusal sentences; solved means
              the run answered exactly `REFUSAL`

  python -m agentkit.train.phrase_eval --model runtime/weights/agentkit-tiny --n 50 --jobs 2 \\
      --out /tmp/phrase-eval.json

`--n` episodes per set (indices 0..n-1; `--sets` picks some). `--jobs N` runs N processes, each with
its own model and one torch thread, taking every N-th task of every set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import anyio

from agentkit.train.episodes import Episode, generate_async
from agentkit.train.loop_eval import Outcome, Report, evaluate

SETS: dict[str, dict[str, Any]] = {
    "template": {},
    "paraphrase": {"phrasing": "heldout", "id_prefix": "para-"},
    "combined": {"phrasing": "heldout", "family": "combo", "id_prefix": "combo-"},
    "refusal": {"phrasing": "heldout", "family": "refuse", "id_prefix": "refuse-"},
}


async def episodes(name: str, n: int, seed: int = 0) -> list[Episode]:
    """Set `name`'s first `n` tasks (always the same ones)."""
    return await generate_async(n, split="heldout", seed=seed, **SETS[name])


async def _run_part(
    model: str, sets: list[str], n: int, jobs: int, part: int, sandbox: str
) -> dict[str, list[Outcome]]:
    from agentkit.backends.embedded import EmbeddedModel
    from agentkit.train.toolbox import all_tools

    backend = EmbeddedModel(model, temperature=0.0, max_tokens=512)
    tools = all_tools()
    out: dict[str, list[Outcome]] = {}
    for name in sets:
        eps = (await episodes(name, n))[part::jobs]
        t0 = time.perf_counter()
        report = await evaluate(backend, eps, tools, sandbox=sandbox)
        ok = sum(r.ok for r in report.rows)
        print(f"[{part + 1}/{jobs}] {name}: {ok}/{len(eps)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        out[name] = report.rows
    return out


def _part(
    model: str, sets: list[str], n: int, jobs: int, part: int, sandbox: str
) -> dict[str, list[Outcome]]:
    import torch

    torch.set_num_threads(1)
    return anyio.run(_run_part, model, sets, n, jobs, part, sandbox)


def run(model: str, sets: list[str], n: int, jobs: int = 1, sandbox: str = "bwrap") -> dict[str, Report]:
    if jobs <= 1:
        parts = [_part(model, sets, n, 1, 0, sandbox)]
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futs = [pool.submit(_part, model, sets, n, jobs, k, sandbox) for k in range(jobs)]
            parts = [f.result() for f in futs]
    return {name: Report([r for p in parts for r in p[name]]) for name in sets}


def to_json(reports: dict[str, Report], model: str, n: int, seconds: float) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": model, "per_set": n, "seconds": seconds, "sets": {}}
    for name, rep in reports.items():
        d = rep.to_json()
        d["failures"] = d["failures"][:60]
        d["table"] = rep.table()
        doc["sets"][name] = d
    in_scope = [
        r for name in ("template", "paraphrase", "combined") if name in reports for r in reports[name].rows
    ]
    doc["in_scope_refusal_rate"] = Report(in_scope).refusal_rate if in_scope else None
    return doc


def cli_rates(reports: dict[str, Report], n: int) -> dict[str, dict[str, float]]:
    """What `agentkit run` makes of each set: its scope check (templates only, and with the intent
    matcher a checkpoint trained on people's wording gets) decides first, then the model. For the
    in-scope sets `via_cli` is accepted and solved; for the refusal set it is refused by either."""
    from agentkit.tiny.scope import check_scope

    out: dict[str, dict[str, float]] = {}
    for name, rep in reports.items():
        tasks = {e.id: e.task for e in anyio.run(episodes, name, n)}
        rows = [(r, tasks[r.id]) for r in rep.rows]
        if not rows:
            continue
        acc = [check_scope(t, paraphrases=True).in_scope for _, t in rows]
        tmpl = [check_scope(t).in_scope for _, t in rows]
        if name == "refusal":
            via = [not a or r.ok for (r, _), a in zip(rows, acc, strict=True)]
        else:
            via = [a and r.ok for (r, _), a in zip(rows, acc, strict=True)]
        k = len(rows)
        out[name] = {
            "accepted": sum(acc) / k,
            "templates_only_accepted": sum(tmpl) / k,
            "via_cli": sum(via) / k,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runtime/weights/agentkit-tiny")
    p.add_argument("--n", type=int, default=50, help="tasks per set")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--sandbox", default="bwrap")
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        p.error(f"unknown sets {unknown}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    reports = run(args.model, sets, args.n, args.jobs, args.sandbox)
    seconds = time.perf_counter() - t0
    for name, rep in reports.items():
        print(f"\n## {name} ({len(rep.rows)} tasks)\n\n{rep.table()}")
    doc = to_json(reports, args.model, args.n, seconds)
    doc["cli"] = cli_rates(reports, args.n)
    for name, c in doc["cli"].items():
        print(f"agentkit run, {name}: scope check accepts {c['accepted']:.1%} (templates only "
              f"{c['templates_only_accepted']:.1%}); {'refused' if name == 'refusal' else 'solved'} "
              f"through the CLI {c['via_cli']:.1%}")  # fmt: skip
    print(f"\nin-scope runs that refused: {doc['in_scope_refusal_rate']}; {seconds:.0f} s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
