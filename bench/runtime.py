"""Embedded V4 runtime throughput: prefill and batch-1 decode tokens/s, beside a bandwidth bound and HF.

    python bench/runtime.py                                   # CPU, `tiny` preset, fp32
    python bench/runtime.py --config flash-reduced --device cuda --dtype bf16 --quantized

The bound is memory bandwidth (measured here with a large copy) divided by the bytes one decode step must
read: the active weights (every non-expert weight, the activated routed experts, the shared expert, the head)
plus the sequence state. It ignores compute and launch overhead, so for small models it is far above what any
implementation reaches; it is printed so the gap is visible. HF transformers' DeepseekV4 runs on the same
weights (float storage only: it has no FP8/FP4 path here), with its own cache for decoding.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.model import V4Model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def bandwidth(device: str) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    n = (1 << 28) if device == "cuda" else (1 << 26)
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(_timed(lambda: b.copy_(a), device) for _ in range(5))
    return 2 * n / best


def decode_bytes(model: V4Model, state_bytes: int) -> float:
    """Bytes read per decode step: active weights (routed experts x k/E, one embedding row) + state."""
    cfg = model.config
    total = 0.0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.startswith("mtp.") or name.endswith("tid2eid") or name.endswith("freqs"):
            continue
        b = t.numel() * t.element_size()
        if ".ffn.experts." in name:
            b *= cfg.n_activated_experts / cfg.n_routed_experts
        elif name == "embed.weight":
            b /= cfg.vocab_size
        total += b
    return total + state_bytes


def run_ours(model: V4Model, prompt: torch.Tensor, n_decode: int, device: str) -> tuple[float, float, int]:
    st = model.new_state()
    model.extend(model.new_state(), prompt[:8])  # warm-up
    t_pre = _timed(lambda: model.extend(st, prompt, last_only=True), device)
    tok = prompt[-1:]

    def decode() -> None:
        for _ in range(n_decode):
            model.extend(st, tok, last_only=True)

    t_dec = _timed(decode, device)
    return prompt.numel() / t_pre, n_decode / t_dec, st.nbytes()


def run_hf(model: V4Model, prompt: torch.Tensor, n_decode: int, device: str) -> tuple[float, float]:
    from agentkit.runtime.hf_compat import hf_from_ours

    hf = hf_from_ours(model).to(device)
    ids = prompt.view(1, -1)
    out: dict[str, object] = {}
    with torch.no_grad():
        hf(ids[:, :8], use_cache=True)  # warm-up

        def prefill() -> None:
            out["r"] = hf(ids, use_cache=True)

        t_pre = _timed(prefill, device)
        r = out["r"]
        cache = getattr(r, "cache", None) or getattr(r, "past_key_values", None)  # renamed in 5.2x
        tok = ids[:, -1:]

        def decode() -> None:
            for _ in range(n_decode):
                hf(tok, past_key_values=cache, use_cache=True)

        t_dec = _timed(decode, device)
    return prompt.numel() / t_pre, n_decode / t_dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--config", default="tiny", help="ModelConfig preset (tiny, tiny-test, flash-reduced, ...)"
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument(
        "--quantized", action="store_true", help="FP8/FP4 weight storage (real checkpoint format)"
    )
    ap.add_argument("--prompt", type=int, default=512, help="prefill length")
    ap.add_argument("--decode", type=int, default=32, help="decode steps (batch 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave default)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    ap.add_argument(
        "--materialize", action="store_true", help="also run with dequantized copies of FP8/FP4 weights kept"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but no CUDA device is available")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    fmt = "quantized" if args.quantized else "float"
    cfg = ModelConfig.preset(args.config, weight_format=fmt, max_seq_len=1 << 20)
    if fmt == "quantized" and cfg.expert_dtype is None:
        cfg = cfg.with_(dtype="fp8", expert_dtype="fp4")
    model = V4Model(cfg, dtype=dtype, device=args.device).init_random_(0)
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt,), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(args.device)
    bw = bandwidth(args.device)
    rows = []
    pre, dec, sbytes = run_ours(model, prompt, args.decode, args.device)
    bound = bw / decode_bytes(model, sbytes)
    rows.append(("agentkit", pre, dec))
    if args.materialize and args.quantized:
        extra = model.materialize_weights()
        mpre, mdec, _ = run_ours(model, prompt, args.decode, args.device)
        rows.append((f"agentkit, dequantized copies (+{extra / 2**30:.1f} GiB)", mpre, mdec))
        model.materialize_weights(False)
    if not args.no_hf and not args.quantized:
        hpre, hdec = run_hf(model, prompt, args.decode, args.device)
        rows.append(("transformers", hpre, hdec))
    threads = torch.get_num_threads() if args.device == "cpu" else "-"
    print(
        f"config={args.config} device={args.device} dtype={args.dtype} weights={fmt} prompt={args.prompt} "
        f"decode={args.decode} threads={threads} measured bandwidth={bw / 1e9:.1f} GB/s"
    )
    print("| impl | prefill tok/s | decode tok/s (batch 1) | decode bound tok/s |")
    print("|---|---:|---:|---:|")
    for name, p, d in rows:
        print(f"| {name} | {p:,.0f} | {d:,.1f} | {bound:,.0f} |")


if __name__ == "__main__":
    main()
