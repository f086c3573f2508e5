"""A long-context prefill's Lightning Indexer step alone: `prefill_scores` launch settings and `stable_topk`.

Run on a CUDA machine: `python bench/index_scores.py [--queries 64 --entries 262144 --heads 64 --dim 128]
[--specs "index_be=64;index_be=128,index_warps=8;..."] [--out results.json]`.

Why: at 1M tokens of context a 32K extend spent 1.26 of its 5.2 GPU-seconds in the indexer's scoring
kernel and ~1.2 s in the top-k's torch ops (profile-extend, H100, 267b3fc). Here one query block of a CSA
layer at that context (`_core`'s block: 64 queries against 256K entries, V4-Flash's 64 indexer heads of
128) is scored under each setting: ms per call, TFLOP/s (2 * queries * heads * entries * dim), and the
largest difference to the torch reference (`index_scores_ref`, fp32 sums: summation order only); then
the top-k (k = 512) both ways, checked against the stable sort: `stable_topk` of the scores, and the
kernel writing order keys that one torch.topk takes (`Attention._select`'s path for long rows).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from agentkit.runtime.kernels.indexer import index_scores_ref, prefill_scores
from agentkit.runtime.layers.topk import stable_topk
from sweep import timed, tuned  # bench/sweep.py (this folder is on sys.path when run)

DEFAULT_SPECS = ";".join(
    [
        "index_be=64,index_bq=16,index_warps=4",
        "index_be=128,index_bq=16,index_warps=4",
        "index_be=128,index_bq=16,index_warps=8",
        "index_be=256,index_bq=16,index_warps=8",
        "index_be=128,index_bq=32,index_warps=8",
        "index_be=256,index_bq=32,index_warps=8",
        "index_be=64,index_bq=32,index_warps=4",
    ]
)


def best_spec(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if "ms" in r and r["max_rel_diff"] < 1e-4 and r["same_inf"]]
    return str(min(ok, key=lambda r: r["ms"])["spec"]) if ok else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--entries", type=int, default=262144)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--topk", type=int, default=512)
    ap.add_argument("--specs", default=DEFAULT_SPECS, help="settings separated by ';'")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    b, h, d, c = args.queries, args.heads, args.dim, args.entries
    q = torch.randn(b, h, d, device=dev, generator=g).to(torch.bfloat16)
    w = torch.randn(b, h, device=dev, generator=g)
    keys = torch.randn(c, d, device=dev, generator=g).to(torch.bfloat16)
    count = torch.arange(c - b + 1, c + 1, device=dev)  # a chunk's last queries: all but the newest visible
    ref = index_scores_ref(q, w, keys[None], torch.zeros(b, dtype=torch.long, device=dev), count)
    flop = 2 * b * h * c * d
    rows: list[dict[str, Any]] = []
    scores = ref
    for spec in args.specs.split(";"):
        row: dict[str, Any] = {"spec": spec}
        try:
            with tuned(spec):  # over the kernels' defaults
                got = prefill_scores(q, w, keys, count)
                fin = ref.isfinite()
                row["max_rel_diff"] = ((got - ref)[fin].abs().max() / ref[fin].abs().max()).item()
                row["same_inf"] = bool(torch.equal(got.isinf(), ref.isinf()))
                ms = timed(lambda: prefill_scores(q, w, keys, count))
                row |= {"ms": ms, "tflop_s": flop / ms / 1e9}
                scores = got
        except Exception as exc:  # a setting that does not compile is a row, not the end of the sweep
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        print(
            f"{spec:50s} {row.get('ms', float('nan')):8.3f} ms {row.get('tflop_s', 0):7.1f} TFLOP/s "
            f"diff {row.get('max_rel_diff', float('nan')):.2e} {row.get('error', '')}",
            flush=True,
        )
    want = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, : args.topk]
    os.environ["AGENTKIT_KERNEL_TUNE"] = best_spec(rows)

    def keys_path() -> torch.Tensor:  # what `Attention._select` runs for long rows: keys, one torch.topk
        return torch.topk(prefill_scores(q, w, keys, count, keys_out=True), args.topk, dim=-1).indices

    topk = {
        "keys_path_ms": timed(keys_path),
        "keys_path_equal_to_sort": bool(torch.equal(keys_path(), want)),
        "ms": timed(lambda: stable_topk(scores, args.topk)),
        "sort_ms": timed(lambda: torch.sort(scores, dim=-1, descending=True, stable=True)),
        "equal_to_sort": bool(torch.equal(stable_topk(scores, args.topk), want)),
    }
    # exact ties: small integers make every score an exact integer, so the kernel's sums equal the
    # reference's and only the tie rule decides the order (the selection must be the stable sort's)
    gi = torch.Generator().manual_seed(1)
    qi = torch.randint(-2, 3, (100, 8, 64), generator=gi).to(torch.bfloat16)
    wi = torch.randint(-2, 3, (100, 8), generator=gi).float()
    ki = torch.randint(-2, 3, (9000, 64), generator=gi).to(torch.bfloat16)
    ci = torch.arange(9000 - 99, 9001)
    si = index_scores_ref(qi, wi, ki[None], torch.zeros(100, dtype=torch.long), ci)
    want_i = torch.sort(si, dim=-1, descending=True, stable=True).indices[:, : args.topk]
    keys_i = prefill_scores(qi.to(dev), wi.to(dev), ki.to(dev), ci.to(dev), keys_out=True)
    topk["ties_keys_path_equal_to_sort"] = bool(
        torch.equal(torch.topk(keys_i, args.topk, dim=-1).indices.cpu(), want_i)
    )
    got_i = stable_topk(si.to(dev), args.topk).cpu()
    topk["ties_stable_topk_equal_to_sort"] = bool(torch.equal(got_i, want_i))
    del os.environ["AGENTKIT_KERNEL_TUNE"]
    print(f"exact ties: keys path equal to the sort {topk['ties_keys_path_equal_to_sort']}, stable_topk "
          f"{topk['ties_stable_topk_equal_to_sort']}", flush=True)  # fmt: skip
    print(f"stable_topk k={args.topk}: {topk['ms']:.3f} ms (full stable sort {topk['sort_ms']:.3f} ms), "
          f"equal to the sort: {topk['equal_to_sort']}; scores as order keys + torch.topk "
          f"{topk['keys_path_ms']:.3f} ms, equal: {topk['keys_path_equal_to_sort']}", flush=True)  # fmt: skip
    out = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shapes": {"queries": b, "entries": c, "heads": h, "dim": d, "topk": args.topk},
        "rows": rows,
        "stable_topk": topk,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
