"""Kernels on vs off on one GPU: correctness of each kernel natively, then greedy decode A/B on the model.

Run on a CUDA machine: `python bench/kernel_ab.py [--config flash-reduced] [--prompt 4096] [--decode 64]
[--out results.json]`. For every kernel in runtime/kernels/, the native result against its torch reference
at the config's real shapes; then, on one random-weight model, a greedy decode of `--decode` tokens after a
`--prompt` prefill from the same saved state on the torch reference path (`AGENTKIT_KERNELS=0`), with the
kernels, and with the kernels through the static decoder's CUDA graphs: tokens compared position by
position with the reference, per-position logits' max relative difference, and decode tok/s each way
(plus the FP8/FP4 stored format with and without the activation rounding of `sim_fp8_act`, to price it).
Then teacher-forced: each path fed the reference's tokens, so every position is compared (argmax agreement,
relative logit difference), and for bf16 all paths against the same weights in fp32 (the noise floor: a
kernel path is as exact as the reference when its distance to fp32 is the reference's own).
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.kernels.sparse_attn import sparse_attn, sparse_attn_ref
from agentkit.runtime.model import V4Model

DEV = "cuda"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def kernel_checks(cfg: ModelConfig) -> list[dict[str, Any]]:
    g = torch.Generator(device=DEV).manual_seed(0)
    rows = []
    h, d = cfg.n_heads, cfg.head_dim
    for dtype in (torch.bfloat16, torch.float32):
        for t, k, n in ((1, cfg.window_size + cfg.index_topk, 4096), (4, 640, 2048), (1, 128 + 8192, 9000)):
            q = torch.randn(t, h, d, device=DEV, generator=g, dtype=dtype)
            kv = torch.randn(n, d, device=DEV, generator=g, dtype=dtype)
            idx = torch.randint(-1, n, (t, k), device=DEV, generator=g)
            sink = torch.randn(h, device=DEV, generator=g)
            with torch.no_grad():
                got = sparse_attn(q, kv, idx, sink, d**-0.5).float()
                ref = sparse_attn_ref(q, kv, idx, sink, d**-0.5).float()
                sync()
                t0 = time.perf_counter()
                for _ in range(20):
                    sparse_attn(q, kv, idx, sink, d**-0.5)
                sync()
                t_kernel = (time.perf_counter() - t0) / 20
                t0 = time.perf_counter()
                for _ in range(20):
                    sparse_attn_ref(q, kv, idx, sink, d**-0.5)
                sync()
                t_ref = (time.perf_counter() - t0) / 20
            err = (got - ref).abs().max().item()
            rows.append({
                "kernel": "sparse_attn", "dtype": str(dtype), "queries": t, "candidates": k, "heads": h,
                "dim": d, "max_abs_err": err, "kernel_us": t_kernel * 1e6, "ref_us": t_ref * 1e6,
            })  # fmt: skip
    return rows


def decode(model: V4Model, state: Any, first: int, steps: int) -> tuple[list[int], torch.Tensor, float]:
    toks, logits = [first], []
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            out = model.extend(state, [toks[-1]], last_only=True)  # [V]: one state, its last position
            logits.append(out.float())
            toks.append(int(out.argmax()))
    sync()
    return toks[1:], torch.stack(logits), steps / (time.perf_counter() - t0)


def forced(model: V4Model, state: Any, tokens: list[int]) -> torch.Tensor:
    """Logits [n, V] after feeding each of `tokens` in turn (one-token steps, as decoding runs)."""
    out = []
    with torch.no_grad():
        for t in tokens:
            out.append(model.extend(state, [t], last_only=True).float())  # type: ignore[union-attr]
    return torch.stack(out)


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Per-position agreement of logits `a` with reference `b` ([n, V] each)."""
    rel = (a - b).norm(dim=-1) / b.norm(dim=-1)
    return {
        "positions": a.shape[0],
        "argmax_agreement": (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
        "rel_logit_diff_max": rel.max().item(),
        "rel_logit_diff_mean": rel.mean().item(),
    }


def ab(cfg: ModelConfig, dtype: torch.dtype, prompt_len: int, steps: int, label: str) -> dict[str, Any]:
    """Greedy decode from one saved state three ways: the torch reference (`AGENTKIT_KERNELS=0`, general
    extend), the general extend with the kernels, and the static decoder with kernels and CUDA graphs."""
    model = V4Model(cfg, dtype=dtype, device=DEV).init_random_(0).eval()
    prompt = torch.randint(0, cfg.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(0))
    st = model.new_state()
    with torch.no_grad():
        first = int(model.extend(st, prompt.to(DEV), last_only=True).argmax())
    snap = st.snapshot()
    dec = model.static_decoder(max_batch=1, max_len=prompt_len + steps + 8, graphs=DEV == "cuda")
    fast = dec.new_state()
    result: dict[str, Any] = {"model": label, "steps": steps}
    runs = {}
    for name, kernels, state in (("torch", "0", st), ("kernels", "1", st), ("graphs", "1", fast)):
        os.environ["AGENTKIT_KERNELS"] = kernels
        if state is fast:
            model._decoder = dec
        else:
            model._decoder = None
        state.restore(snap)
        decode(model, state, first, 4)  # warm-up (Triton compiles, graph capture)
        state.restore(snap)
        runs[name] = decode(model, state, first, steps)
    # the same greedy tokens through generate(), whose loop pipelines the host's reads behind the replays
    from agentkit.runtime.generate import SamplingParams, generate

    model._decoder = dec
    greedy = SamplingParams(
        temperature=0.0, max_tokens=steps, stop_token_ids=(), stop_strings=(), speculative=0
    )
    fast.restore(snap)
    generate(model, fast, [first], SamplingParams(**{**greedy.__dict__, "max_tokens": 4}))  # warm-up
    fast.restore(snap)
    sync()
    tp = time.perf_counter()
    piped = generate(model, fast, [first], greedy).token_ids
    sync()
    tp = steps / (time.perf_counter() - tp)
    model._decoder = None
    t0, l0, s0 = runs["torch"]
    # teacher-forced: every path fed the reference's own tokens, so each position compares like with like
    # (a free-running A/B stops comparing at its first flipped near-tie: after it the inputs differ)
    fed = [first, *t0[:-1]]
    forced_rows: dict[str, torch.Tensor] = {"torch": l0}
    for name, kernels, state in (("kernels", "1", st), ("graphs", "1", fast)):
        os.environ["AGENTKIT_KERNELS"] = kernels
        model._decoder = dec if state is fast else None
        state.restore(snap)
        forced_rows[name] = forced(model, state, fed)
    model._decoder = None
    os.environ["AGENTKIT_KERNELS"] = "0"
    result["teacher_forced"] = {n: compare(forced_rows[n], l0) for n in ("kernels", "graphs")}
    # the noise floor: the same weights in fp32 on the torch path, against which both bf16 paths are judged
    if dtype == torch.bfloat16:
        try:
            ref = V4Model(cfg, dtype=torch.float32, device=DEV).eval()
            ref.load_state_dict(model.state_dict())
            rst = ref.new_state()
            with torch.no_grad():
                ref.extend(rst, prompt.to(DEV), last_only=True)
            exact = forced(ref, rst, fed)
            del ref, rst
            result["vs_fp32"] = {n: compare(forced_rows[n], exact) for n in ("torch", "kernels", "graphs")}
        except Exception as e:  # e.g. out of memory: say so, keep the rest
            result["vs_fp32"] = {"error": f"{type(e).__name__}: {e}"}
    result["pipelined"] = {
        "identical_tokens": sum(a == b for a, b in zip(t0, piped, strict=True)),
        "first_difference": next((i for i, (a, b) in enumerate(zip(t0, piped, strict=True)) if a != b), None),
        "tok_s": tp,
    }
    for name in ("kernels", "graphs"):
        t1, l1, s1 = runs[name]
        same = sum(a == b for a, b in zip(t0, t1, strict=True))
        first_diff = next((i for i, (a, b) in enumerate(zip(t0, t1, strict=True)) if a != b), None)
        # compare logits only while the token streams agree (after a divergence the inputs differ)
        upto = steps if first_diff is None else first_diff + 1
        rel = ((l1[:upto] - l0[:upto]).norm(dim=-1) / l0[:upto].norm(dim=-1)).max().item()
        result[name] = {
            "identical_tokens": same, "first_difference": first_diff, "max_rel_logit_diff": rel, "tok_s": s1,
        }  # fmt: skip
    result["torch_tok_s"] = s0
    del model, dec, fast
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return result


def act_quant_cost(cfg: ModelConfig, prompt_len: int, steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "quantized FP8/FP4, activation rounding on vs off"}
    os.environ["AGENTKIT_KERNELS"] = "1"
    for sim in (False, True):
        model = V4Model(cfg.with_(sim_fp8_act=sim), dtype=torch.bfloat16, device=DEV).init_random_(0).eval()
        prompt = torch.randint(0, cfg.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(0))
        st = model.new_state()
        with torch.no_grad():
            first = int(model.extend(st, prompt.to(DEV), last_only=True).argmax())
        decode(model, st, first, 4)
        _, _, rate = decode(model, st, first, steps)
        out[f"tok_s_sim_{sim}"] = rate
        del model
        if DEV == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="flash-reduced")
    ap.add_argument("--prompt", type=int, default=4096)
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--quantized-only", action="store_true", help="only the FP8/FP4 decode A/B (a short device call)"
    )
    ap.add_argument("--bf16-only", action="store_true", help="only the bf16 decode A/B (with its fp32 floor)")
    ap.add_argument("--device", default="cuda", help="cpu only to check this script (TRITON_INTERPRET=1)")
    a = ap.parse_args()
    global DEV
    DEV = a.device
    cfg = ModelConfig.preset(a.config, weight_format="float", max_seq_len=1 << 20)
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "command": f"python bench/kernel_ab.py --config {a.config} --prompt {a.prompt} --decode {a.decode}"
        + (" --quantized-only" if a.quantized_only else "")
        + (" --bf16-only" if a.bf16_only else ""),
    }

    def save() -> None:  # after every stage: a run cut short by its time limit still reports
        if a.out:
            with open(a.out, "w") as f:
                f.write(json.dumps(report, indent=1))

    t0 = time.perf_counter()
    report["decode_ab"] = []
    if not a.quantized_only:
        report["kernels"] = kernel_checks(cfg)
        save()
        print(f"kernels checked ({time.perf_counter() - t0:.0f} s)", flush=True)
        report["decode_ab"].append(ab(cfg, torch.bfloat16, a.prompt, a.decode, f"{a.config} bf16"))
        save()
    print(f"decode A/B done ({time.perf_counter() - t0:.0f} s)", flush=True)
    if a.bf16_only:
        print(json.dumps(report, indent=1))
        return
    qcfg = ModelConfig.preset(a.config, weight_format="quantized", max_seq_len=1 << 20)
    if qcfg.expert_dtype is None:
        qcfg = qcfg.with_(dtype="fp8", expert_dtype="fp4")
    report["decode_ab"].append(ab(qcfg, torch.bfloat16, a.prompt, a.decode, f"{a.config} FP8/FP4 stored"))
    save()
    print(f"quantized decode A/B done ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not a.quantized_only:
        report["act_quant"] = act_quant_cost(qcfg, a.prompt, a.decode // 2)
        save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
