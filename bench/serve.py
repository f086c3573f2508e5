"""`agentkit serve` benchmark: requests/s and time to first token over HTTP, at 1 and 32 concurrent clients.

    python bench/serve.py --out bench/results/serve_cpu_tiny.json

The server is started as users start it (`python -m agentkit.cli serve MODEL --port P` in its own process,
so the clients here do not share its interpreter); the clients are the official `openai` AsyncOpenAI
client, streaming. Each request is one agentkit-tiny agent turn: the system prompt with the four tool
schemas the model was trained with and "How many cm is N m?" (N differs per request, so every prompt
shares the system prompt, which the engine's prefix cache serves, and nothing else); the model thinks
and calls `convert_units` (~580 prompt tokens, ~90 completion tokens, greedy).

Rows (`--concurrency 1 32`): C clients each send `--requests` requests one after another (after one warm-up
request). requests/s = all requests / wall time; TTFT = request sent -> first streamed token (a reasoning
or content delta), p50 and p90 over all requests; completion tok/s = completion tokens / wall time.
Every answer is checked (a `convert_units` call with its own N), so a row never counts wrong output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import torch

from agentkit.agent import Agent
from agentkit.tiny.tools import all_tools

INSTRUCTIONS = "You are a helpful assistant that solves tasks with tools. Answer with the final result."
TOOLS = ("count_words", "convert_units", "calculator", "days_between")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _one(client: openai.AsyncOpenAI, model: str, tools: list[Any], n: int) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": f"How many cm is {n} m?"},
    ]
    t0 = time.perf_counter()
    ttft = None
    args, usage = "", None
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        tools=tools,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            d = c.delta
            if ttft is None and (getattr(d, "reasoning_content", None) or d.content or d.tool_calls):
                ttft = time.perf_counter() - t0
            for tc in d.tool_calls or []:
                args += (tc.function.arguments if tc.function else None) or ""
    total = time.perf_counter() - t0
    ok = bool(args) and json.loads(args) == {"value": n, "from_unit": "m", "to_unit": "cm"}
    assert usage is not None
    return {
        "ttft": ttft or total,
        "latency": total,
        "completion_tokens": usage.completion_tokens,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0,
        "ok": ok,
    }


async def _row(
    base_url: str, model: str, tools: list[Any], conc: int, per_client: int, seed: int
) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    await _one(client, model, tools, 10_000 + seed)  # warm-up

    async def worker(w: int) -> list[dict[str, Any]]:
        return [await _one(client, model, tools, 100 + seed + w * per_client + k) for k in range(per_client)]

    t0 = time.perf_counter()
    done = await asyncio.gather(*(worker(w) for w in range(conc)))
    wall = time.perf_counter() - t0
    results = [r for rs in done for r in rs]
    ttfts = sorted(r["ttft"] for r in results)
    return {
        "row": f"c={conc}",
        "concurrency": conc,
        "requests": len(results),
        "correct": sum(r["ok"] for r in results),
        "seconds": wall,
        "requests_s": len(results) / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p90_s": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
        "latency_p50_s": statistics.median(r["latency"] for r in results),
        "completion_tok_s": sum(r["completion_tokens"] for r in results) / wall,
        "mean_prompt_tokens": statistics.mean(r["prompt_tokens"] for r in results),
        "mean_cached_tokens": statistics.mean(r["cached_tokens"] for r in results),
        "mean_completion_tokens": statistics.mean(r["completion_tokens"] for r in results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", default="embedded:tiny")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--requests", type=int, default=0, help="per client (default: 8 at c=1, 2 above)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tools = all_tools()
    schemas = Agent("scripted:", [tools[n] for n in TOOLS], instructions=INSTRUCTIONS).tool_schemas
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "agentkit.cli",
        "serve",
        args.model,
        "--port",
        str(port),
        "--max-concurrency",
        "32",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    rows = []
    load_before = os.getloadavg()[0]
    try:
        sync = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                model = sync.models.list().data[0].id
                break
            except openai.APIConnectionError:
                assert server.poll() is None, server.stderr.read() if server.stderr else "server died"
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        for i, conc in enumerate(args.concurrency):
            per_client = args.requests or (8 if conc == 1 else 2)
            row = asyncio.run(_row(base_url, model, schemas, conc, per_client, seed=1000 * (i + 1)))
            rows.append(row)
            print(
                f"{row['row']:>6}  {row['requests']:3d} req  {row['requests_s']:6.2f} req/s  "
                f"TTFT p50 {row['ttft_p50_s'] * 1000:7.1f} ms  p90 {row['ttft_p90_s'] * 1000:7.1f} ms  "
                f"{row['completion_tok_s']:6.1f} tok/s  correct {row['correct']}/{row['requests']}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "model": args.model,
        "command": " ".join(["python", "bench/serve.py", *sys.argv[1:]]),
        "server": " ".join(["agentkit", "serve", args.model, "--max-concurrency", "32"]),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "rows": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
