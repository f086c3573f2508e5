"""A prefill's routed experts alone: the blocked MoE kernels' tiles (`moe_bm`, `moe_bn`, `moe_big_warps`,
`moe_big_stages`) swept on the GPU.

Run on a CUDA machine: `python bench/moe_prefill.py [--tokens 4096 --dim 4096 --inter 2048 --experts 16
--topk 6] [--specs "moe_bm=64,moe_bn=64;..."] [--out results.json]`.

Why: the experts were the largest item of a 32K prefill (`_moe_up` + `_moe_down` 253 of 1,023 GPU ms, about
280 TFLOP/s; profile-prefill-32k, H100, cfd1eaa) and their tile was fixed at 64 x 64, 4 warps, 3 stages. Here
bf16 experts at flash-reduced's shapes take `--tokens` tokens routed uniformly at random: ms per call,
TFLOP/s (2 * 3 * pairs * dim * inter) and the largest difference to the default setting relative to its
largest value (tiles change the summation order only: bf16 rounding of the hidden values apart).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from agentkit.runtime.kernels.moe import fused_moe
from sweep import timed, tuned  # bench/sweep.py (this folder is on sys.path when run)

DEFAULT_SPECS = ";".join(
    [
        "moe_bm=64,moe_bn=64,moe_big_warps=4,moe_big_stages=3",
        "moe_bm=64,moe_bn=64,moe_big_warps=8,moe_big_stages=3",
        "moe_bm=128,moe_bn=64,moe_big_warps=8,moe_big_stages=3",
        "moe_bm=128,moe_bn=64,moe_big_warps=8,moe_big_stages=2",
        "moe_bm=64,moe_bn=128,moe_big_warps=8,moe_big_stages=3",
        "moe_bm=128,moe_bn=128,moe_big_warps=8,moe_big_stages=2",
        "moe_bm=64,moe_bn=64,moe_big_warps=4,moe_big_stages=4",
        "moe_bm=128,moe_bn=32,moe_big_warps=4,moe_big_stages=3",
    ]
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--topk", type=int, default=6)
    ap.add_argument("--specs", default=DEFAULT_SPECS, help="settings separated by ';'")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    t, d, i, e, k = args.tokens, args.dim, args.inter, args.experts, args.topk
    bf = torch.bfloat16
    x = torch.randn(t, d, device=dev, generator=g).to(bf)
    shapes = ((e, i, d), (e, i, d), (e, d, i))
    w = tuple((torch.randn(*s, device=dev, generator=g) * 0.02).to(bf) for s in shapes)
    idx = torch.rand(t, e, device=dev, generator=g).topk(k, dim=-1).indices
    rw = torch.rand(t, k, device=dev, generator=g)

    def call() -> torch.Tensor:
        return fused_moe(x, rw, idx, w, None, "float", act_quant=False, limit=10.0)  # type: ignore[arg-type]

    ref = call()
    flop = 2 * 3 * t * k * d * i
    rows: list[dict[str, Any]] = []
    for spec in args.specs.split(";"):
        row: dict[str, Any] = {"spec": spec}
        try:
            with tuned(spec):  # over the kernels' defaults
                got = call()
                row["max_rel_diff"] = ((got - ref).abs().max() / ref.abs().max()).item()
                ms = timed(call)
                row |= {"ms": ms, "tflop_s": flop / ms / 1e9}
        except Exception as exc:  # a setting that does not compile is a row, not the end of the sweep
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        print(
            f"{spec:58s} {row.get('ms', float('nan')):8.3f} ms {row.get('tflop_s', 0):7.1f} TFLOP/s "
            f"diff {row.get('max_rel_diff', float('nan')):.2e} {row.get('error', '')}",
            flush=True,
        )
    ok = [r for r in rows if "ms" in r and r["max_rel_diff"] < 1e-2]
    out = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shapes": {"tokens": t, "dim": d, "inter": i, "experts": e, "topk": k},
        "rows": rows,
        "best": str(min(ok, key=lambda r: r["ms"])["spec"]) if ok else "",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
