"""Decode's routed FP4 experts alone: `moe_pairs` launch settings swept on the GPU, bytes/s and equality.

Run on a CUDA machine: `python bench/moe_pairs.py [--dim 4096 --inter 2048 --experts 64 --topk 6]
[--specs "moe_pairs_bn=16,moe_pairs_warps=2;..."] [--out results.json]`.

Why apart from `bench/runtime.py --tune`: a whole-model decode sweep costs ~40 s a setting; the experts are
the largest item of the FP8/FP4 decode step (1.43 of 3.37 ms on an H100 at cfd1eaa), so their settings are
swept here in a second each. Random packed FP4 experts at V4-Flash's shapes, one token with `--topk` pairs,
the experts drawn anew each call from `--experts` (more bytes than L2 holds, so reads come from HBM like
decode's). For every setting: the up + down kernels' time per token (CUDA events over a CUDA graph of 64
calls), the bytes they read (weights + E8M0 scales) per second, and the largest difference to the blocked
expert path (`moe_pairs_max=0`) relative to its largest value. Summation order alone moves an hidden value
across a bf16 (and then e4m3) rounding boundary now and then, so settings differ by up to ~1e-3 here; a
wrong result differs by ~1 (greedy tokens on the model are the A/B's check: `bench/kernel_ab.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from agentkit.runtime.kernels.moe import fused_moe

DEFAULT_SPECS = ";".join(
    [
        "moe_pairs_bn=16,moe_pairs_warps=2",
        "moe_pairs_bn=8,moe_pairs_warps=1",
        "moe_pairs_bn=8,moe_pairs_warps=1,moe_pairs_groups=8",
        "moe_pairs_bn=8,moe_pairs_warps=1,moe_pairs_groups=16,moe_pairs_dec=1",
        "moe_pairs_bn=4,moe_pairs_warps=1",
        "moe_pairs_bn=4,moe_pairs_warps=1,moe_pairs_groups=8",
        "moe_pairs_bn=4,moe_pairs_warps=1,moe_pairs_groups=16",
        "moe_pairs_bn=4,moe_pairs_warps=1,moe_pairs_groups=16,moe_pairs_dec=1",
        "moe_pairs_bn=2,moe_pairs_warps=1,moe_pairs_groups=16",
        "moe_pairs_bn=2,moe_pairs_warps=1,moe_pairs_groups=16,moe_pairs_dec=1",
        "moe_pairs_bn=4,moe_pairs_warps=1,moe_pairs_groups=16,moe_pairs_stages=2",
        "moe_pairs_bn=4,moe_pairs_warps=1,moe_pairs_groups=16,moe_pairs_stages=4",
    ]
)
"""The settings swept by default: around the best of the first H100 sweep (267b3fc: 8 rows x 1 warp 0.112
ms, 4 x 1 x 16 groups 0.110 ms, the then default 16 x 2 0.189 ms): fewer rows per program, more programs."""


def with_tune(spec: str, fn: Any) -> Any:
    old = os.environ.get("AGENTKIT_KERNEL_TUNE")
    os.environ["AGENTKIT_KERNEL_TUNE"] = spec
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["AGENTKIT_KERNEL_TUNE"]
        else:
            os.environ["AGENTKIT_KERNEL_TUNE"] = old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--topk", type=int, default=6)
    ap.add_argument("--calls", type=int, default=64, help="calls per CUDA graph (each with other experts)")
    ap.add_argument("--specs", default=DEFAULT_SPECS, help="settings separated by ';'")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run (TRITON_INTERPRET=1), no timing")
    args = ap.parse_args(argv)
    dev = args.device
    g = torch.Generator(device=dev).manual_seed(0)
    e, i, d, k = args.experts, args.inter, args.dim, args.topk

    def packed(*shape: int) -> torch.Tensor:
        return torch.randint(-128, 128, shape, device=dev, generator=g, dtype=torch.int8)

    def scales(*shape: int) -> torch.Tensor:  # E8M0 around 2^-6 so values stay in a sane range
        return torch.randint(118, 124, shape, device=dev, generator=g, dtype=torch.uint8)

    w = (packed(e, i, d // 2), packed(e, i, d // 2), packed(e, d, i // 2))
    s = (scales(e, i, d // 32), scales(e, i, d // 32), scales(e, d, i // 32))
    x = torch.randn(1, d, device=dev, generator=g).to(torch.bfloat16)
    rw = torch.rand(1, k, device=dev, generator=g)
    idxs = [torch.randperm(e, device=dev, generator=g)[:k].view(1, k) for _ in range(args.calls)]
    bytes_per_call = k * (3 * i * d // 2 + 3 * i * d // 32)

    def call(idx: torch.Tensor) -> torch.Tensor:
        return fused_moe(x, rw, idx, w, s, "fp4", act_quant=True, limit=10.0)

    ref = [with_tune("moe_pairs_max=0", lambda ix=ix: call(ix)) for ix in idxs[:4]]
    rows: list[dict[str, Any]] = []
    for spec in args.specs.split(";"):
        row: dict[str, Any] = {"spec": spec}
        try:

            def measure(spec: str = spec) -> dict[str, Any]:
                got = [call(ix) for ix in idxs[:4]]
                pairs = zip(got, ref, strict=True)
                diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in pairs)
                if dev != "cuda":
                    return {"max_rel_diff": diff}
                for ix in idxs:  # compile + warm
                    call(ix)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for ix in idxs:
                        call(ix)
                best = float("inf")
                for _ in range(5):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    graph.replay()
                    b.record()
                    torch.cuda.synchronize()
                    best = min(best, a.elapsed_time(b) / len(idxs))
                return {"ms_per_token": best, "GB_s": bytes_per_call / best / 1e6, "max_rel_diff": diff}

            row |= with_tune(spec, measure)
        except Exception as exc:  # a setting that does not compile is a row, not the end of the sweep
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        print(
            f"{spec:80s} {row.get('ms_per_token', float('nan')):8.4f} ms {row.get('GB_s', 0):8.1f} GB/s "
            f"diff {row.get('max_rel_diff', float('nan')):.2e} {row.get('error', '')}",
            flush=True,
        )
    out = {
        "gpu": torch.cuda.get_device_name() if dev == "cuda" else dev,
        "torch": torch.__version__,
        "shapes": {"dim": d, "inter": i, "experts": e, "topk": k},
        "bytes_per_token": bytes_per_call,
        "rows": rows,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
