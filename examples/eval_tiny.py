"""Evaluate a trained tiny model through the real agent loop, real tools and a real sandbox.

Each held-out episode becomes a real run (`agentkit.train.loop_eval`): an `Agent` on the embedded backend
(greedy), the episode's tools and system prompt, and a fresh sandbox (bubblewrap by default; `--sandbox
docker` for containers) holding its workspace files. Success means the run completed and its final answer
equals the episode's expected answer. Prints a table per task family: success, strict-DSML rate of the
generated turns, mean steps, generated tokens/s; `--out` also writes the JSON report with every failure.

  python examples/eval_tiny.py --episodes heldout.jsonl.gz --limit 500
  python examples/eval_tiny.py --generate 500            # held-out episodes made on the fly (seed 0)
  python examples/eval_tiny.py --generate 500 --jobs 16 --engine   # 16 at once on one shared engine

`--jobs N` alone runs N processes, each with its own model, taking every N-th episode. With `--engine` it
is one process instead: N episodes run at once as tasks of one event loop, their agents sharing the
process's engine, which batches their decode steps (bench/eval_engine.py compares the two).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import anyio

from agentkit.backends.embedded import EmbeddedModel
from agentkit.train.episodes import Episode, generate_async, load_jsonl
from agentkit.train.loop_eval import Report, evaluate
from agentkit.train.toolbox import all_tools


def _episodes(path: Path) -> list[Episode]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [Episode.from_json(json.loads(line)) for line in f if line.strip()]
    return list(load_jsonl(path))


async def _load_episodes(args: argparse.Namespace) -> list[Episode]:
    if args.generate:
        return await generate_async(args.generate, split="heldout", seed=args.seed)
    return _episodes(Path(args.episodes))[: args.limit]


async def main_async(args: argparse.Namespace, part: int = 0) -> Report:
    """Evaluate episodes part, part + jobs, part + 2 jobs, ... (all of them when jobs is 1, or with
    --engine, where all of them run here, `jobs` at a time)."""
    t0 = time.perf_counter()
    backend = EmbeddedModel(args.model, temperature=0.0, max_tokens=args.max_tokens, device=args.device)
    parts = 1 if args.engine else args.jobs
    tag = f"[{part + 1}/{parts}] " if parts > 1 else ""
    print(f"{tag}loaded {backend.name} in {time.perf_counter() - t0:.1f} s", flush=True)
    eps = (await _load_episodes(args))[part::parts]
    t1 = time.perf_counter()

    def progress(i: int, report: Report) -> None:
        if i % 25 == 0 or i == len(eps):
            ok = sum(r.ok for r in report.rows)
            print(f"{tag}{i}/{len(eps)}: {ok} ok ({time.perf_counter() - t1:.0f} s)", flush=True)

    concurrency = args.jobs if args.engine else 1
    return await evaluate(
        backend, eps, all_tools(), sandbox=args.sandbox, on_progress=progress, concurrency=concurrency
    )


def _run_part(args: argparse.Namespace, part: int) -> Report:
    # One process per part: a 7.7M model decodes one token at a time, so two single-threaded processes
    # on two cores do about twice the work of one process with two threads.
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    return anyio.run(main_async, args, part)


def run_all(args: argparse.Namespace) -> Report:
    if args.jobs <= 1 or args.engine:
        return anyio.run(main_async, args)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(_run_part, [args] * args.jobs, range(args.jobs)))
    # back into the episodes' order: part k holds episodes k, k + jobs, ...
    rows = [p.rows[i] for i in range(max(len(p.rows) for p in parts)) for p in parts if i < len(p.rows)]
    return Report(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default="tiny", help="checkpoint directory or preset (default: the shipped one)"
    )
    p.add_argument("--episodes", default=None, help="episodes file (.jsonl or .jsonl.gz)")
    p.add_argument("--generate", type=int, default=0, help="generate this many held-out episodes instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--sandbox", default="bwrap", choices=["auto", "docker", "bwrap"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-tokens", type=int, default=400)
    p.add_argument("--jobs", type=int, default=1, help="evaluate in N processes (same rows, any N)")
    p.add_argument(
        "--engine", action="store_true", help="--jobs episodes at once in one process, on one shared engine"
    )
    p.add_argument("--out", default=None, help="write the JSON report here too")
    args = p.parse_args(argv)
    if not args.generate and not args.episodes:
        p.error("give --episodes FILE or --generate N")
    report = run_all(args)
    print(report.table())
    summary: dict[str, Any] = report.to_json()
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
