"""Evaluate a trained tiny model through the real agent loop, real tools and a real sandbox.

Each held-out episode becomes a real run: an `Agent` on the embedded backend (greedy), the episode's
tools, its system prompt as instructions, and a LocalSandbox holding its workspace files. Success means
the run completed and its final answer equals the episode's expected answer. The script also reports
whether the run's transcript is byte-identical to the episode text, which tells a formatting drift
between training data and the loop apart from a model mistake.

  python examples/eval_tiny.py --model runtime/weights/agentkit-tiny \
      --episodes runtime/weights/agentkit-tiny-data/heldout.jsonl.gz --limit 500
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from agentkit.tools.sandbox import LocalSandbox

from agentkit.agent import Agent
from agentkit.limits import Limits
from agentkit.models.embedded import EmbeddedModel
from agentkit.train.episodes import Episode, extract_answer, load_jsonl
from agentkit.train.export import load_model
from agentkit.train.toolbox import all_tools


def _episodes(path: Path) -> list[Episode]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [Episode.from_json(json.loads(line)) for line in f if line.strip()]
    return list(load_jsonl(path))


async def run_one(backend: EmbeddedModel, e: Episode, tools: dict[str, Any]) -> dict[str, Any]:
    system = e.messages[0]
    names = [t["function"]["name"] for t in system.get("tools", [])]
    async with LocalSandbox() as sb:
        for path, text in e.files.items():
            await sb.write_file(path, text)
        agent: Agent[None, str] = Agent(
            backend,
            tools=[tools[n] for n in names],
            instructions=str(system["content"]),
            thinking="high",
            sandbox=sb,
            limits=Limits(max_steps=8),
        )
        result = await agent.run(e.task)
    answer = extract_answer(result.text or "")
    return {
        "id": e.id,
        "family": e.family,
        "status": result.status,
        "ok": result.ok and answer == e.answer,
        "answer": answer,
        "expected": e.answer,
        "same_transcript": result.transcript.text == e.text,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    model, tok = load_model(args.model, device=args.device)
    backend = EmbeddedModel(model=model, tokenizer=tok, temperature=0.0, max_tokens=args.max_tokens)
    tools = all_tools()
    eps = _episodes(Path(args.episodes))[: args.limit]
    rows = []
    t0 = time.perf_counter()
    for i, e in enumerate(eps):
        rows.append(await run_one(backend, e, tools))
        if (i + 1) % 25 == 0:
            done = sum(r["ok"] for r in rows)
            print(f"{i + 1}/{len(eps)}: {done} ok ({time.perf_counter() - t0:.0f} s)", flush=True)
    fam: dict[str, list[int]] = {}
    for r in rows:
        fam.setdefault(r["family"], [0, 0])
        fam[r["family"]][0] += int(r["ok"])
        fam[r["family"]][1] += 1
    return {
        "episodes": len(rows),
        "success_rate": sum(r["ok"] for r in rows) / max(1, len(rows)),
        "same_transcript_rate": sum(r["same_transcript"] for r in rows) / max(1, len(rows)),
        "by_family": {k: f"{a}/{b}" for k, (a, b) in sorted(fam.items())},
        "failures": [r for r in rows if not r["ok"]][:20],
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runtime/weights/agentkit-tiny")
    p.add_argument("--episodes", default="runtime/weights/agentkit-tiny-data/heldout.jsonl.gz")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-tokens", type=int, default=400)
    p.add_argument("--out", default=None, help="write the JSON report here too")
    args = p.parse_args(argv)
    report = anyio.run(main_async, args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
