"""Throughput of the V4 weight codecs and of random checkpoint writing/loading; prints markdown tables.

    python bench/bench_runtime_quant.py [--device cuda] [--checkpoint-preset flash-reduced] [--dir /tmp/ck]

Dequantization runs per use in the model until fused FP8/FP4 GEMM kernels exist, so its GB/s bounds what a
quantized forward can do; checkpoint numbers say how long a random Flash-shaped checkpoint takes to make.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from agentkit.runtime.checkpoint import load_checkpoint, save_random_checkpoint, tensor_specs
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.quant import dequant_fp4, dequant_fp8, quant_fp4, quant_fp8


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 3) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def codec_table(device: torch.device) -> None:
    shapes = {  # Flash shapes (spec §1.2)
        "attn.wq_b FP8 [32768, 1024]": ("fp8", (32768, 1024)),
        "shared w1 FP8 [2048, 4096]": ("fp8", (2048, 4096)),
        "expert w1 FP4 [2048, 4096]": ("fp4", (2048, 4096)),
        "expert w2 FP4 [4096, 2048]": ("fp4", (4096, 2048)),
    }
    print(f"\n### Codecs on {device} (bf16 output; GB/s = output bytes / time)\n")
    print("| tensor | dequant ms | dequant GB/s | quant ms |")
    print("|---|---:|---:|---:|")
    for name, (fmt, shape) in shapes.items():
        w = torch.randn(shape, device=device) * shape[1] ** -0.5
        qf, dqf = (quant_fp8, dequant_fp8) if fmt == "fp8" else (quant_fp4, dequant_fp4)
        q, s = qf(w)
        t_dq = timed(lambda q=q, s=s, dqf=dqf: dqf(q, s, dtype=torch.bfloat16), device)
        t_q = timed(lambda w=w, qf=qf: qf(w), device, repeat=1)
        gb = w.numel() * 2 / 1e9
        print(f"| {name} | {t_dq * 1e3:.2f} | {gb / t_dq:.1f} | {t_q * 1e3:.1f} |")


def checkpoint_table(preset: str, device: torch.device, root: Path) -> None:
    config = ModelConfig.preset(preset)
    nbytes = sum(s.nbytes for s in tensor_specs(config))
    path = root / f"ck-{preset}"
    t0 = time.perf_counter()
    save_random_checkpoint(config, path, seed=0, device=device)
    t_save = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_checkpoint(path, device="cpu")
    t_cpu = time.perf_counter() - t0
    rows = [("save_random_checkpoint", t_save), ("load_checkpoint cpu (mmap)", t_cpu)]
    if device.type == "cuda":
        t0 = time.perf_counter()
        _, t = load_checkpoint(path, device=device)
        torch.cuda.synchronize()
        rows.append((f"load_checkpoint {device}", time.perf_counter() - t0))
        del t
    print(f"\n### Checkpoint `{preset}` ({nbytes / 1e9:.2f} GB, {len(tensor_specs(config))} tensors)\n")
    print("| step | s | GB/s |")
    print("|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {nbytes / 1e9 / sec:.2f} |")
    shutil.rmtree(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--checkpoint-preset", default="flash-reduced")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--skip-checkpoint", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
    )
    codec_table(device)
    if not args.skip_checkpoint:
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            checkpoint_table(args.checkpoint_preset, device, Path(d))


if __name__ == "__main__":
    main()
