"""A prefill chunk's sparse attention alone: `sparse_prefill` launch settings at V4-Flash's shapes.

Run on a CUDA machine: `python bench/sparse_prefill.py [--queries 4096 --context 32768]
[--specs "spf_bh=16,spf_bk=32,spf_warps=4;..."] [--out results.json]`.

Why: the torch path of a prefill's attention (`Attention._core`: score GEMMs with fp32 output, masks,
concatenations, softmax, gathers over query blocks) was about a third of a 32K prefill's GPU time (the
profile-prefill-32k row, H100, cfd1eaa). The kernel walks each query's window and compressed entries without
building them. Here the last `--queries` queries of a `--context` prefill (V4-Flash: 64 heads of 512, a
128-token window, CSA top-512 of context/4 entries, HCA's context/128 entries) run through each layer kind
under each setting: ms per kind and summed, TFLOP/s (2 * 2 * heads * dim per attended row), and the largest
difference to `sparse_prefill_ref` on 256 of the queries (relative to the largest output: bf16 rounding of the
probabilities and of the output only).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from agentkit.runtime.kernels.sparse_prefill import candidates, sparse_prefill, sparse_prefill_ref
from sweep import timed, tuned  # bench/sweep.py (this folder is on sys.path when run)

DEFAULT_SPECS = ";".join(
    [
        "",  # the defaults
        "spf_bq=1,spf_bh=16,spf_bk=32,spf_warps=4,spf_csa_bh=16,spf_csa_bk=32,spf_csa_warps=4",
        "spf_bq=2,spf_warps=4,spf_csa_bh=32,spf_csa_bk=16",
        "spf_bq=2,spf_bh=32,spf_csa_bh=32,spf_csa_bk=32",
        "spf_bq=8,spf_bh=8,spf_bk=16,spf_csa_warps=4",
        "spf_bq=4,spf_bh=16,spf_bk=16,spf_csa_bk=32",
    ]
)


def best_spec(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if "ms" in r and r["max_rel_diff"] < 2e-2]
    return str(min(ok, key=lambda r: r["ms"])["spec"]) if ok else ""  # "" = the defaults


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--topk", type=int, default=512)
    ap.add_argument("--specs", default=DEFAULT_SPECS, help="settings separated by ';'")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(device=dev).manual_seed(0)
    n, h, d, w = args.queries, args.heads, args.dim, args.window
    pos, w_old = args.context - n, min(args.context - n, w - 1)
    bf = torch.bfloat16
    q = torch.randn(n, h, d, device=dev, generator=g).to(bf)
    kw = torch.randn(w_old + n, d, device=dev, generator=g).to(bf)
    sink = torch.randn(h, device=dev, generator=g)
    hca = torch.randn(args.context // 128, d, device=dev, generator=g).to(bf)
    csa = torch.randn(args.context // 4, d, device=dev, generator=g).to(bf)
    # the indexer's picks: top-k of random scores over each query's visible entries
    vis = (pos + torch.arange(n, device=dev) + 1) // 4
    sc = torch.rand(n, csa.shape[0], device=dev, generator=g)
    sc = sc.masked_fill(torch.arange(csa.shape[0], device=dev)[None] >= vis[:, None], -1.0)
    order = sc.topk(min(args.topk, csa.shape[0]), dim=-1).indices
    del sc
    kinds = {"window": (None, None, 0), "hca": (hca, None, 128), "csa": (csa, order, 4)}
    scale = d**-0.5
    flop = {}
    for kind, (comp, ordr, ratio) in kinds.items():
        idx = candidates(n, w_old, pos, w, 0 if comp is None else comp.shape[0], ratio, ordr, dev)
        flop[kind] = 4 * h * d * int((idx >= 0).sum())
    rows: list[dict[str, Any]] = []
    s0 = max(0, n - 256)  # the reference on the last 256 queries: shift the window and positions to them
    for spec in args.specs.split(";"):
        row: dict[str, Any] = {"spec": spec}
        try:
            with tuned(spec):  # over the kernels' defaults
                diff = 0.0
                for kind, (comp, ordr, ratio) in kinds.items():

                    def run(comp: Any = comp, ordr: Any = ordr, ratio: int = ratio) -> torch.Tensor:
                        return sparse_prefill(q, kw, w_old, pos, w, comp, ordr, ratio, sink, scale)

                    got = run()[s0:].float()
                    ref = sparse_prefill_ref(
                        q[s0:], kw[s0:], w_old, pos + s0, w, comp, None if ordr is None else ordr[s0:], ratio,
                        sink, scale,
                    ).float()  # fmt: skip
                    diff = max(diff, ((got - ref).abs().max() / ref.abs().max()).item())
                    ms = timed(run)
                    row[f"{kind}_ms"] = ms
                    row[f"{kind}_tflop_s"] = flop[kind] / ms / 1e9
                row["ms"] = sum(row[f"{k}_ms"] for k in kinds)
                row["tflop_s"] = sum(flop.values()) / row["ms"] / 1e9
                row["max_rel_diff"] = diff
        except Exception as exc:  # a setting that does not compile is a row, not the end of the sweep
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        print(
            f"{spec:36s} " + " ".join(f"{k} {row.get(f'{k}_ms', float('nan')):7.3f} ms" for k in kinds)
            + f" | {row.get('tflop_s', 0):6.1f} TFLOP/s diff {row.get('max_rel_diff', float('nan')):.2e}"
            f" {row.get('error', '')}",
            flush=True,
        )  # fmt: skip
    out = {
        "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (interpreter dry run)",
        "torch": torch.__version__,
        "shapes": {"queries": n, "context": args.context, "heads": h, "dim": d, "window": w},
        "topk": args.topk,
        "flop": flop,
        "rows": rows,
        "best": best_spec(rows),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
