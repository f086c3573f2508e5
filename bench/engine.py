"""Engine benchmark: aggregate decode throughput under continuous batching, and the prefix cache's TTFT.

    python bench/engine.py --device cpu --config tiny-test --out bench/results/engine_cpu_tiny_test.json
    python bench/engine.py --device cpu --config tiny --prefix 2048 --tokens 32     # agentkit-tiny (shipped)
    python bench/engine.py --device cuda --config flash-reduced --out bench/results/engine_h200.json

Rows:
  decode c=N    N requests (prompt `--prompt` random ids, `--tokens` greedy tokens each, no stop tokens)
                submitted at once; tok/s = tokens generated after every request has its first token,
                divided by the time from then to the last one's end (so prefill is not in it).
  ... static    the same with the engine's sequences in a StaticDecoder slab (`Engine(decoder=...)`):
                all-decode steps replay its CUDA graph for the batch (`--static`, both on CUDA).
  ttft-16th     15 requests sharing a `--prefix`-token prefix (each with its own 32-token suffix) are
                served one after another, then the 16th is timed from submit to its first token; with the
                prefix cache (it restores the prefix) and without (it prefills all of it). Same outputs.

`--config` is a preset (its shipped checkpoint when there is one, e.g. `tiny` = agentkit-tiny, otherwise
random weights) or a checkpoint directory. Times are wall clock of this process (one warm-up run first).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from typing import Any

import torch
from agentkit.runtime.checkpoint_read import shipped_checkpoint
from agentkit.runtime.engine import Engine
from agentkit.runtime.generate import SamplingParams
from agentkit.runtime.loader import load_model
from agentkit.runtime.model import V4Model


def decode_row(
    model: V4Model, conc: int, prompt_len: int, tokens: int, seed: int, static: bool = False
) -> dict[str, Any]:
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=tokens, stop_token_ids=(), stop_strings=())
    model._decoder = None
    # static: sequences live in a StaticDecoder's slab, so all-decode steps replay its CUDA graphs
    dec = model.static_decoder(max_batch=max(conc, 1), max_len=prompt_len + tokens + 16) if static else None
    with Engine(model, max_seqs=max(conc, 1), cache_bytes=0, decoder=dec) as eng:
        hs = [eng.submit([rng.randrange(2, vocab) for _ in range(prompt_len)], params) for _ in range(conc)]
        for h in hs:  # blocking waits (no polling: a spinning reader would steal the GIL from the engine)
            next(iter(h))
        t0, n0 = time.perf_counter(), sum(len(h.tokens) for h in hs)
        for h in hs:
            h.result()
        dt = time.perf_counter() - t0
        n1 = sum(len(h.result().token_ids) for h in hs)
        steps = eng.stats().steps
    model._decoder = None
    return {
        "row": f"decode c={conc}" + (" static" if static else ""),
        "concurrency": conc,
        "tokens": n1 - n0,
        "seconds": dt,
        "tok_s": (n1 - n0) / dt,
        "steps": steps,
    }


def ttft_row(model: V4Model, prefix_len: int, cache: bool, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    prefix = [rng.randrange(2, vocab) for _ in range(prefix_len)]
    prompts = [prefix + [100 + k] + [rng.randrange(2, vocab) for _ in range(31)] for k in range(16)]
    params = SamplingParams(temperature=0.0, max_tokens=4, stop_token_ids=(), stop_strings=())
    with Engine(model, cache_bytes=(4 << 30) if cache else 0) as eng:
        outs = [eng.generate(p, params).token_ids for p in prompts[:15]]
        t0 = time.perf_counter()
        h = eng.submit(prompts[15], params)
        next(iter(h))
        ttft = time.perf_counter() - t0
        outs.append(h.result().token_ids)
        st = eng.stats()
    return {
        "row": f"ttft-16th cache={'on' if cache else 'off'}",
        "prefix": prefix_len,
        "ttft_s": ttft,
        "prefill_tokens": st.prefill_tokens,
        "hits": st.cache.hits,
        "tokens_reused": st.cache.tokens_reused,
        "cache_bytes_held": st.cache.bytes_held,
        "outputs": outs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny-test", help="preset name or checkpoint directory")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens of each decode request")
    ap.add_argument("--tokens", type=int, default=64, help="generated tokens per decode request")
    ap.add_argument("--prefix", type=int, default=8192, help="shared prefix of the TTFT rows")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--static",
        default="auto",
        choices=["auto", "off", "on", "both"],
        help="decode rows through a StaticDecoder slab (CUDA graphs); auto: both on CUDA, off on CPU",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON report path")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.device == "cpu" else torch.bfloat16
    model = load_model(a.config, device=a.device, dtype=dtype, random_seed=a.seed).eval()
    weights = "shipped" if shipped_checkpoint(a.config) else ("checkpoint" if "/" in a.config else "random")
    decode_row(model, 2, 16, 4, a.seed)  # warm-up
    mode = ("both" if a.device == "cuda" else "off") if a.static == "auto" else a.static
    kinds = {"off": [False], "on": [True], "both": [False, True]}[mode]
    rows = [
        decode_row(model, int(c), a.prompt, a.tokens, a.seed, static=k)
        for k in kinds
        for c in a.concurrency.split(",")
    ]
    on, off = ttft_row(model, a.prefix, True, a.seed), ttft_row(model, a.prefix, False, a.seed)
    same = on.pop("outputs") == off.pop("outputs")
    report = {
        "config": a.config,
        "weights": weights,
        "device": a.device if a.device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "prompt": a.prompt,
        "tokens": a.tokens,
        "decode": rows,
        "ttft": [on, off],
        "ttft_speedup": off["ttft_s"] / on["ttft_s"],
        "outputs_identical_with_and_without_cache": same,
    }
    print(f"\nengine on {report['device']} ({a.config}, {weights} weights, {report['dtype']}, "
          f"{report['threads']} threads)\n")  # fmt: skip
    print("| row | value | notes |\n|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['tok_s']:.1f} tok/s | {r['tokens']} tokens in {r['seconds']:.2f} s |")
    for r in (on, off):
        print(
            f"| {r['row']} | {r['ttft_s'] * 1e3:.1f} ms | prefix {r['prefix']}, {r['hits']} hits, "
            f"{r['tokens_reused']} tokens reused, {r['prefill_tokens']} prefilled in all |"
        )
    print(f"| ttft speedup | {report['ttft_speedup']:.1f}x | outputs identical: {same} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
