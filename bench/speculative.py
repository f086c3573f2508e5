"""Speculative decoding with the MTP block: acceptance and decode tokens/s with and without it.

    python bench/speculative.py                       # agentkit-tiny on held-out agent turns, 1 and 2 threads
    python bench/speculative.py --equality            # + the greedy-equality bar (both models)
    python bench/speculative.py --preset flash-reduced --device cuda   # verification overhead, random weights

agentkit-tiny rows: every assistant turn of held-out episodes (the demo tasks' distribution), generated
greedily from its context until the DSML tool-call end / EOS (max 128 tokens); decode tok/s counts the time
after the first token (the prompt's prefill excluded, the MTP block's pass over the prompt included).
Random-weights rows: acceptance means nothing there, so they report the verification overhead instead:
the time of one main extend of k + 1 tokens relative to a one-token step at the same position, and of
one MTP block call. Prints a markdown table; `--out` writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from agentkit.runtime.generate import SamplingParams, TokenStream, generate
from agentkit.runtime.loader import load_model
from agentkit.runtime.model import V4Model
from agentkit.runtime.speculative import DraftState


def turn_prompts(n_episodes: int, start: int, tok: Any) -> list[list[int]]:
    from agentkit.train.episodes import generate as episodes

    out = []
    for ep in episodes(n_episodes, split="heldout", start=start):
        text = ""
        for seg in ep.segments:
            if seg.loss:
                out.append(tok.encode(text, allow_special=True))
            text += seg.text
    return out


def run_tiny(model: V4Model, tok: Any, prompts: list[list[int]], k: int, max_tokens: int) -> dict[str, Any]:
    decoded = drafted = accepted = steps = 0
    secs = 0.0
    outs = []
    for p in prompts:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, speculative=k)
        ts = TokenStream(model, model.new_state(), p, params, decode=tok.decode)
        it = iter(ts)
        next(it)
        t0 = time.perf_counter()
        for _ in it:
            pass
        secs += time.perf_counter() - t0
        r = ts.result
        decoded += len(r.token_ids) - 1
        drafted += r.drafted
        accepted += r.accepted
        steps += r.steps
        outs.append(r.token_ids)
    return {
        "k": k,
        "tokens": decoded,
        "decode_tok_s": decoded / secs,
        "acceptance": accepted / drafted if drafted else None,
        "tokens_per_step": (decoded + len(prompts)) / steps if steps else None,
        "outputs": outs,
    }


def overhead(model: V4Model, ctx: int, ks: list[int], reps: int) -> list[dict[str, Any]]:
    """ms of a main extend of k+1 tokens at position ctx (and of one MTP call) vs a one-token step."""
    dev = model.device
    ids = torch.randint(0, model.config.vocab_size, (ctx + 8,), generator=torch.Generator().manual_seed(0))
    base = model.new_state()
    model.extend(base, ids[:ctx])

    def timed(fn: Any) -> float:
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps * 1e3

    def step(n: int) -> Any:
        def fn() -> None:
            s = base.snapshot()
            model.extend_hidden([s], [ids[ctx : ctx + n]])

        return fn

    snap_ms = timed(lambda: base.snapshot())
    one = timed(step(1)) - snap_ms
    d = DraftState.cold(model, ctx)
    h = torch.zeros(1, model.config.hc_mult, model.config.dim, dtype=model.dtype, device=dev)

    def mtp() -> None:
        layer = d.snapshot().layer
        model.mtp_extend([layer], [ctx], [h], [[3]])

    mtp_ms = timed(mtp) - timed(lambda: d.snapshot())
    rows = []
    for k in ks:
        ms = timed(step(k + 1)) - snap_ms
        rows.append(
            {"k": k, "ctx": ctx, "verify_ms": ms, "step_ms": one, "ratio": ms / one, "mtp_ms": mtp_ms}
        )
    return rows


def equality(model: V4Model, prompts: list[list[int]], tokens: int, k: int, decode: Any) -> int:
    """Number of prompts whose greedy tokens differ with speculation on vs off."""
    bad = 0
    for p in prompts:
        outs = []
        for kk in (0, k):
            params = SamplingParams(temperature=0.0, max_tokens=tokens, speculative=kk)
            outs.append(generate(model, model.new_state(), p, params, decode=decode).token_ids)
        bad += outs[0] != outs[1]
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--start", type=int, default=2000, help="first held-out episode index")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ks", default="0,1,2,3")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--preset", default="tiny-test", help="random-weights preset for the overhead rows")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--equality", action="store_true", help="also run the greedy-equality bar")
    ap.add_argument("--eq-prompts", type=int, default=200)
    ap.add_argument("--eq-tokens", type=int, default=128)
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    ks = [int(x) for x in a.ks.split(",")]
    result: dict[str, Any] = {"tiny": [], "overhead": [], "equality": []}
    if not a.skip_tiny:
        from agentkit.runtime.checkpoint import shipped_checkpoint
        from agentkit.runtime.tokenizer import Tokenizer

        path = shipped_checkpoint("agentkit-tiny")
        assert path is not None
        tok = Tokenizer.from_file(path)
        tiny = load_model("agentkit-tiny", device=a.device).eval()
        prompts = turn_prompts(a.episodes, a.start, tok)
        print(f"agentkit-tiny: {len(prompts)} assistant turns of {a.episodes} held-out episodes\n")
        print("| threads | k | tokens | decode tok/s | speedup | acceptance | tokens/step | same tokens |")
        print("|---|---|---|---|---|---|---|---|")
        for th in [int(x) for x in a.threads.split(",")]:
            torch.set_num_threads(th)
            base: dict[str, Any] | None = None
            for k in ks:
                row = run_tiny(tiny, tok, prompts, k, a.max_tokens)
                base = base or dict(row)
                same = row.pop("outputs") == base["outputs"]
                row.update(threads=th, speedup=row["decode_tok_s"] / base["decode_tok_s"], same_tokens=same)
                result["tiny"].append(row)
                acc = "-" if row["acceptance"] is None else f"{row['acceptance']:.3f}"
                print(
                    f"| {th} | {k} | {row['tokens']} | {row['decode_tok_s']:.1f} | {row['speedup']:.2f}x | "
                    f"{acc} | {row['tokens_per_step']:.2f} | {same} |"
                )
        if a.equality:
            torch.set_num_threads(2)
            eq_prompts = turn_prompts(a.eq_prompts, a.start + 10_000, tok)[: a.eq_prompts]
            bad = equality(tiny, eq_prompts, a.eq_tokens, 1, tok.decode)
            result["equality"].append({"model": "agentkit-tiny", "prompts": len(eq_prompts), "differ": bad})
            print(f"\ngreedy equality agentkit-tiny: {len(eq_prompts) - bad}/{len(eq_prompts)} identical")
    rnd = load_model(a.preset, device=a.device, random_seed=0).eval()
    print(f"\n{a.preset} (random weights, {a.device}): verification overhead at {a.ctx} tokens of context\n")
    print("| k | k+1-token verify ms | 1-token step ms | ratio | MTP call ms |")
    print("|---|---|---|---|---|")
    for row in overhead(rnd, a.ctx, [k for k in ks if k], a.reps):
        result["overhead"].append({"preset": a.preset, "device": a.device, **row})
        print(
            f"| {row['k']} | {row['verify_ms']:.2f} | {row['step_ms']:.2f} | {row['ratio']:.2f} | "
            f"{row['mtp_ms']:.2f} |"
        )
    if a.equality:
        g = torch.Generator().manual_seed(1)
        eq = [
            torch.randint(0, rnd.config.vocab_size, (int(n),), generator=g).tolist()
            for n in torch.randint(1, 400, (a.eq_prompts,), generator=g)
        ]
        bad = equality(rnd, eq, a.eq_tokens, 2, None)
        result["equality"].append({"model": a.preset, "prompts": len(eq), "differ": bad})
        print(f"\ngreedy equality {a.preset} (k=2): {len(eq) - bad}/{len(eq)} identical")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
