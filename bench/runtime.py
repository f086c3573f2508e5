"""Embedded V4 runtime throughput, one table row per `--row`, beside its bound and transformers' DeepseekV4.

    python bench/runtime.py --row all --out bench/results/runtime_h200.json      # every row, one GPU
    python bench/runtime.py --row decode-bf16                                    # one row
    python bench/runtime.py --row all --device cpu --config tiny-test --context 256 --steps 4   # smoke test

Rows (random weights of `--config`, default flash-reduced; context in tokens):
  decode-bf16    batch-1 decode at `--context` (4K): static decoder + CUDA graphs, the general extend path
                 (`--compile`: also the torch.compile'd step), transformers on the same weights;
                 bound = bytes read per token / measured copy bandwidth.
  decode-fp8fp4  the same with the stored FP8 (dense) / FP4 (experts) weights, read by the kernels in place.
  decode-b32     batch 32 against batch 1 through the same decoder (throughput ratio).
  The decode rows also run greedy `generate` over the static decoder, which pipelines the host's token read
  behind the next step (`pipelined`; runtime/generate.py `_greedy_loop`; on a GPU, behind the graph replay).
  prefill-4k, prefill-32k   one chunk of 4K / 32K tokens: tok/s, model FLOPs per token, % of the bf16 peak.
  decode-128k    batch-1 decode with 128K tokens of context against the same at `--context`.
  extend-1m      a 32K-token extend at ~1M tokens of context against the same extend at 32K.
  profile        torch.profiler over a few graph-replayed decode steps: launches per token, top kernels.
  profile-prefill  torch.profiler over one `--context`-token prefill: top kernels by GPU time.
  profile-extend   torch.profiler over extend-1m's far extend: which kernels grow with the context.

Long contexts (128K, 1M) start from a *synthetic* state: position N with every window, compressed and
indexer entry filled with random values (N a multiple of 128, so the compressor tails are empty, as after a
real prefill). A step's cost depends only on the sizes, and prefilling 1M tokens would cost minutes per row.

The decode bound counts the bytes a step must read: every non-expert weight, the routed experts' share
(k of E), the shared expert, the head, one embedding row, and the state that attention actually reads (the
window, all HCA entries, all indexer keys of a CSA layer and only its top-k selected entries). FLOPs per
token count 2 x (active weights except the embedding and the head) plus attention's score and value products
over the candidates each query sees; the head is left out because prefill computes only the last logits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.model import V4Model
from agentkit.runtime.state import SequenceState

ROWS = (
    "decode-bf16", "decode-fp8fp4", "decode-b32", "prefill-4k", "prefill-32k", "decode-128k", "extend-1m",
    "profile", "profile-prefill", "profile-extend",
)  # fmt: skip
#: Dense bf16 tensor-core peak of an H200 SXM (vendor datasheet, without sparsity).
H200_BF16_PEAK = 989e12


class Bench:
    """Builds each model once, keeps the measured bandwidth, and writes the report after every row."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.dev = args.device
        self.models: dict[str, V4Model] = {}
        self.report: dict[str, Any] = {
            "gpu": torch.cuda.get_device_name() if self.dev == "cuda" else "cpu",
            "torch": torch.__version__,
            "triton": _version("triton"),
            "transformers": _version("transformers"),
            "command": "python " + " ".join(sys.argv),
            "config": args.config,
            "rows": {},
        }
        self.bw = bandwidth(self.dev)
        self.report["copy_bandwidth_GBps"] = self.bw / 1e9

    def sync(self) -> None:
        if self.dev == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn: Callable[[], object]) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t

    def model(self, kind: str) -> V4Model:
        if kind not in self.models:
            for other in list(self.models):  # one model on the device at a time
                del self.models[other]
            _free(self.dev)
            fmt = "quantized" if kind == "fp8fp4" else "float"
            cfg = ModelConfig.preset(self.a.config, weight_format=fmt, max_seq_len=1 << 20)
            if fmt == "quantized" and cfg.expert_dtype is None:
                cfg = cfg.with_(dtype="fp8", expert_dtype="fp4")
            dtype = torch.bfloat16 if self.dev == "cuda" else torch.float32
            self.models[kind] = V4Model(cfg, dtype=dtype, device=self.dev).init_random_(0).eval()
        return self.models[kind]

    def prompt(self, n: int) -> torch.Tensor:
        v = self.models[next(iter(self.models))].config.vocab_size
        g = torch.Generator().manual_seed(n)
        return torch.randint(0, v, (n,), generator=g).to(self.dev)

    def save(self) -> None:
        if self.a.out:
            os.makedirs(os.path.dirname(os.path.abspath(self.a.out)), exist_ok=True)
            with open(self.a.out, "w") as f:
                f.write(json.dumps(self.report, indent=1))


def _version(mod: str) -> str | None:
    try:
        return str(__import__(mod).__version__)
    except Exception:
        return None


def _free(dev: str) -> None:
    import gc

    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()


def bandwidth(dev: str) -> float:
    """Bytes/s of a large device-to-device copy (bytes read + written)."""
    n = (1 << 30) if dev == "cuda" else (1 << 26)
    a = torch.empty(n, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(6):
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        b.copy_(a)
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n / best


# ---------------------------------------------------------------------------------------------- accounting
def weight_bytes(model: V4Model) -> float:
    """Weight bytes one decode step reads (stored format: FP8/FP4 bytes plus their scales)."""
    cfg = model.config
    total = 0.0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.startswith("mtp.") or name.endswith("tid2eid") or "freqs" in name:
            continue
        b = t.numel() * t.element_size()
        if ".ffn.experts." in name or ".ffn.stack" in name:
            b *= cfg.n_activated_experts / cfg.n_routed_experts
        elif name == "embed.weight":
            b /= cfg.vocab_size
        total += b
    return total


def state_read_bytes(cfg: ModelConfig, ctx: int, elem: int = 2) -> float:
    """Bytes attention reads from one sequence's state per decode step at `ctx` tokens of context."""
    total = 0.0
    for r in cfg.compress_ratios[: cfg.n_layers]:
        total += min(ctx, cfg.window_size) * cfg.head_dim * elem
        n = ctx // r if r else 0
        if r == 4:
            total += n * cfg.index_head_dim * elem + min(n, cfg.index_topk) * cfg.head_dim * elem
        elif r:
            total += n * cfg.head_dim * elem
    return total


def flops_per_token(model: V4Model, start: int, n: int) -> float:
    """Model FLOPs per token of an extend of `n` tokens starting at `start` (see the module docstring)."""
    cfg = model.config
    mats = 0.0
    for name, t in model.named_parameters():
        if name.startswith("mtp.") or name in ("embed.weight", "head.weight") or t.dim() < 2:
            continue
        if "norm" in name or name.startswith("hc_") or ".hc_" in name or name.endswith("scale"):
            continue
        per = t.numel() * (2 if t.dtype == torch.uint8 else 1)  # FP4: two values per byte
        if ".ffn.experts." in name:
            per *= cfg.n_activated_experts / cfg.n_routed_experts
        mats += 2 * per
    mean_pos = start + (n - 1) / 2
    att = 0.0
    h, d = cfg.n_heads, cfg.head_dim
    for r in cfg.compress_ratios[: cfg.n_layers]:
        seen = min(mean_pos + 1, cfg.window_size)
        if r == 4:
            entries = mean_pos / 4
            seen += min(entries, cfg.index_topk)
            att += 2 * cfg.index_n_heads * cfg.index_head_dim * entries  # indexer scores
        elif r:
            seen += mean_pos / r
        att += 2 * 2 * h * d * seen  # q.k and p.v
    return mats + att


# ------------------------------------------------------------------------------------------------ states
def synthetic(state: SequenceState, ctx: int, seed: int = 0) -> SequenceState:
    """Put a fresh preallocated `state` at position `ctx` with random window, compressed, indexer entries."""
    if ctx % 128:
        raise ValueError("a synthetic context must be a multiple of 128 (empty compressor tails)")
    torch.manual_seed(seed)
    with torch.no_grad():
        for ls in state.layers:
            ls.window.normal_()
            if ls.comp is not None:
                ls.comp[: ctx // ls.ratio].normal_()
            if ls.idx is not None:
                ls.idx[: ctx // 4].normal_()
    state.pos = ctx
    return state


def greedy(model: V4Model, states: list[SequenceState], first: list[int], steps: int) -> list[list[int]]:
    """`steps` greedy decode steps of all states together (through `extend`, as `generate_batch` does)."""
    cur, out = list(first), []
    for _ in range(steps):
        logits = model.extend(states, [[t] for t in cur], last_only=True)
        cur = [int(i) for i in torch.stack(list(logits)).argmax(-1).tolist()]
        out.append(cur)
    return out


def decode_rate(
    b: Bench,
    model: V4Model,
    ctx: int,
    batch: int,
    *,
    static: bool,
    real_prompt: bool = True,
    compile: bool = False,
    pipelined: bool = False,
) -> tuple[float, int]:
    """Tokens/s of `batch` sequences decoding together at `ctx` tokens of context; also the warm-up tokens.

    pipelined=False: a step, then the host reads the argmax, then the next step (`model.extend` per token).
    pipelined=True: greedy `generate_batch` over the static decoder, which launches step n+1 from token n's
    device copy before the host reads token n (runtime/generate.py `_greedy_loop`); timed from its first
    token to its end, i.e. `steps` pipelined forwards per sequence."""
    steps = b.a.steps
    model._decoder = None
    dec = None
    if static:
        dec = model.static_decoder(
            max_batch=max(batch, 1), max_len=ctx + steps + 16, graphs=b.dev == "cuda", compile=compile
        )
        make = dec.new_state
    else:
        make = lambda: model.new_state(max_len=ctx + steps + 16)  # noqa: E731
    states = [make() for _ in range(batch)]
    if real_prompt:
        with torch.no_grad():
            first = int(model.extend(states[0], b.prompt(ctx), last_only=True).argmax())  # type: ignore[union-attr]
    else:
        synthetic(states[0], ctx)
        first = 0
    snap = states[0].snapshot()
    for s in states[1:]:
        s.restore(snap)
    if pipelined:
        from agentkit.runtime.generate import SamplingParams, generate_batch

        def run(n: int) -> float:
            """Seconds from the first token (the prompt's one-token step is synchronous) to the end: n
            forwards per sequence, n - 1 decode steps and the last token's feed, all pipelined."""
            p = SamplingParams(
                temperature=0.0, max_tokens=n, stop_token_ids=(), stop_strings=(), speculative=0
            )
            t0: list[float] = []
            stamp = lambda i, t: t0 or t0.append(time.perf_counter())  # noqa: E731
            res = generate_batch(model, states, [[first]] * batch, p, on_token=stamp)
            b.sync()
            assert all(len(r.token_ids) == n for r in res)
            return time.perf_counter() - t0[0]

        run(3)  # warm-up: compiles, graph capture
        dt = run(steps)
    else:
        greedy(model, states, [first] * batch, 3)  # warm-up: compiles, graph capture
        dt = b.timed(lambda: greedy(model, states, [first] * batch, steps))
    states.clear()
    model._decoder = None
    _free(b.dev)
    return batch * steps / dt, first


def hf_rates(b: Bench, model: V4Model, ctx: int) -> dict[str, float]:
    """transformers' DeepseekV4 on the same weights: prefill tok/s of `ctx` tokens, then batch-1 decode."""
    from agentkit.runtime.hf_compat import hf_from_ours

    hf = hf_from_ours(model).to(b.dev)
    ids = b.prompt(ctx).view(1, -1)
    box: dict[str, Any] = {}
    with torch.no_grad():
        hf(ids[:, :8], use_cache=True)

        def prefill() -> None:
            box["r"] = hf(ids, use_cache=True)

        t_pre = b.timed(prefill)
        r = box.pop("r")
        cache = getattr(r, "past_key_values", None) or getattr(r, "cache", None)
        tok = ids[:, -1:]

        def decode() -> None:
            nonlocal tok
            for _ in range(b.a.steps):
                out = hf(tok, past_key_values=cache, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)

        t_dec = b.timed(decode)
    return {"prefill_tok_s": ctx / t_pre, "decode_tok_s": b.a.steps / t_dec}


# ---------------------------------------------------------------------------------------------------- rows
def tune_sweep(b: Bench, model: V4Model, ctx: int) -> dict[str, Any]:
    """Coordinate descent over the kernels' launch settings (`agentkit.runtime.kernels.tune`): for each knob
    of `--tune "knob=v1,v2;knob2=..."` in turn, static decode is measured at each value with the other knobs
    at their best so far. The best setting stays in `AGENTKIT_KERNEL_TUNE` for the rows after this one.

    Why here: one lent-GPU call measures every candidate in one process (kernels compile once each); the
    winner becomes the default in the kernel files, with this row's JSON as its evidence."""
    best: dict[str, str] = {}
    tried: dict[str, float] = {}

    def measure(cfg: dict[str, str]) -> float:
        spec = ",".join(f"{k}={v}" for k, v in sorted(cfg.items()))
        if spec not in tried:
            os.environ["AGENTKIT_KERNEL_TUNE"] = spec
            try:
                tried[spec] = decode_rate(b, model, ctx, 1, static=True)[0]
            except Exception as e:  # a tiling a kernel refuses (e.g. a tile wider than a group): not a winner
                print(f"  tune {spec}: {type(e).__name__}: {e}", flush=True)
                tried[spec] = 0.0
            print(f"  tune {spec or '(defaults)'}: {tried[spec]:.1f} tok/s", flush=True)
            b.report["tune_partial"] = tried  # kept if the run is cut off mid-sweep
            b.save()
        return tried[spec]

    for knob in b.a.tune.split(";"):
        name, values = knob.split("=", 1)
        rates = {v: measure({**best, name: v}) for v in values.split(",")}
        best[name.strip()] = max(rates, key=lambda v: rates[v])
    spec = ",".join(f"{k}={v}" for k, v in sorted(best.items()))
    os.environ["AGENTKIT_KERNEL_TUNE"] = spec
    return {"tune": spec, "tune_sweep_tok_s": tried}


def row_decode(b: Bench, kind: str) -> dict[str, Any]:
    model = b.model(kind)
    ctx = b.a.context
    sweep = tune_sweep(b, model, ctx) if b.a.tune else {}
    static, _ = decode_rate(b, model, ctx, 1, static=True)
    piped, _ = decode_rate(b, model, ctx, 1, static=True, pipelined=True)
    general = None if b.a.no_general else decode_rate(b, model, ctx, 1, static=False)[0]
    per_token = weight_bytes(model) + state_read_bytes(model.config, ctx)
    bound = b.bw / per_token
    row: dict[str, Any] = {
        "context": ctx, "batch": 1, "weights": kind, "static_graphs_tok_s": static,
        "pipelined_greedy_tok_s": piped, "general_path_tok_s": general, "bytes_per_token": per_token,
        "bound_tok_s": bound,
        "fraction_of_bound": static / bound, **sweep,
    }  # fmt: skip
    if b.a.compile:
        try:
            row["static_graphs_compiled_tok_s"], _ = decode_rate(b, model, ctx, 1, static=True, compile=True)
        except Exception as e:
            row["compile_error"] = f"{type(e).__name__}: {e}"
    paths = {"graphs": static, "pipelined": piped, "compiled": row.get("static_graphs_compiled_tok_s", 0.0)}
    row["best_path"] = max(paths, key=lambda k: paths[k])
    row["best_tok_s"] = paths[row["best_path"]]
    row["fraction_of_bound"] = row["best_tok_s"] / bound
    if kind == "bf16" and not b.a.no_hf:
        try:
            hf = hf_rates(b, model, ctx)
            row["transformers_tok_s"] = hf["decode_tok_s"]
            row["speedup_vs_transformers"] = row["best_tok_s"] / hf["decode_tok_s"]
        except Exception as e:
            row["transformers_error"] = f"{type(e).__name__}: {e}"
    return row


def row_batch(b: Bench) -> dict[str, Any]:
    model = b.model("bf16")
    ctx = b.a.context
    one, _ = decode_rate(b, model, ctx, 1, static=True)
    many, _ = decode_rate(b, model, ctx, 32, static=True)
    row = {"context": ctx, "b1_tok_s": one, "b32_tok_s": many, "ratio": many / one}
    one_p, _ = decode_rate(b, model, ctx, 1, static=True, pipelined=True)  # the pipelined greedy loop
    many_p, _ = decode_rate(b, model, ctx, 32, static=True, pipelined=True)
    return row | {
        "b1_pipelined_tok_s": one_p, "b32_pipelined_tok_s": many_p, "ratio_pipelined": many_p / one_p,
    }  # fmt: skip


def row_prefill(b: Bench, n: int) -> dict[str, Any]:
    model = b.model("bf16")
    model._decoder = None
    prompt = b.prompt(n)
    with torch.no_grad():
        # warm-up at the timed length: Triton specializes kernels on their integer arguments (divisibility
        # by 16, 64-bit offsets), so a shorter warm-up leaves compiles inside the timed call
        model.extend(model.new_state(), prompt, last_only=True)
        st = model.new_state()
        dt = b.timed(lambda: model.extend(st, prompt, last_only=True))
    flops = flops_per_token(model, 0, n)
    rate = n / dt
    row: dict[str, Any] = {
        "tokens": n, "tok_s": rate, "flops_per_token": flops, "model_tflop_s": rate * flops / 1e12,
        "fraction_of_bf16_peak": rate * flops / H200_BF16_PEAK,
    }  # fmt: skip
    if not b.a.no_hf:
        try:
            row["transformers_tok_s"] = hf_rates(b, model, n)["prefill_tok_s"]
        except Exception as e:
            row["transformers_error"] = f"{type(e).__name__}: {e}"
    return row


def row_long_decode(b: Bench) -> dict[str, Any]:
    model = b.model("bf16")
    short, long_ = b.a.context, b.a.long_context
    at_short, _ = decode_rate(b, model, short, 1, static=True, real_prompt=False)
    at_long, _ = decode_rate(b, model, long_, 1, static=True, real_prompt=False)
    return {
        "short_context": short, "long_context": long_, "short_tok_s": at_short, "long_tok_s": at_long,
        "ratio": at_long / at_short, "synthetic_state": True,
    }  # fmt: skip


def row_extend(b: Bench) -> dict[str, Any]:
    model = b.model("bf16")
    model._decoder = None
    n, far = b.a.extend, b.a.far_context
    chunk = b.prompt(n)
    times = {}
    for ctx in (n, far):
        st = synthetic(model.new_state(max_len=ctx + n), ctx)
        snap = st.snapshot()
        with torch.no_grad():
            model.extend(st, chunk, last_only=True)  # warm-up at this context (its own specializations)
            st.restore(snap)
            times[ctx] = b.timed(lambda st=st: model.extend(st, chunk, last_only=True))
        del st, snap
        _free(b.dev)
    return {
        "extend_tokens": n, "near_context": n, "far_context": far, "near_s": times[n], "far_s": times[far],
        "ratio": times[far] / times[n], "synthetic_state": True,
    }  # fmt: skip


def row_profile(b: Bench) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    model = b.model(b.a.profile_weights)
    ctx, steps = b.a.context, 4
    model._decoder = None
    dec = model.static_decoder(max_batch=1, max_len=ctx + 32, graphs=b.dev == "cuda", compile=b.a.compile)
    st = dec.new_state()
    with torch.no_grad():
        first = int(model.extend(st, b.prompt(ctx), last_only=True).argmax())  # type: ignore[union-attr]
    greedy(model, [st], [first], 3)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.dev == "cuda" else [])
    with profile(activities=acts) as prof:
        greedy(model, [st], [first], steps)
        b.sync()
    kernels: Counter[str] = Counter()
    kernel_us: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] += 1
            kernel_us[e.name] += e.device_time
        elif e.name.startswith("cuda") or e.name.startswith("cuLaunch"):
            calls[e.name] += 1
    model._decoder = None
    # the same step without graphs: which torch ops a step issues (a replayed graph hides them)
    model._decoder = None
    dec = model.static_decoder(max_batch=1, max_len=ctx + 32, graphs=False, compile=b.a.compile)
    st = dec.new_state()
    with torch.no_grad():
        first = int(model.extend(st, b.prompt(ctx), last_only=True).argmax())  # type: ignore[union-attr]
    greedy(model, [st], [first], 2)
    with profile(activities=[ProfilerActivity.CPU]) as eager:
        greedy(model, [st], [first], steps)
        b.sync()
    ops: Counter[str] = Counter(
        e.name for e in eager.events() if e.name.startswith(("aten::", "triton", "_"))
    )
    model._decoder = None
    busy = sum(kernel_us.values())
    return {
        "context": ctx, "steps": steps, "weights": b.a.profile_weights, "compiled": b.a.compile,
        "kernels_per_token": sum(kernels.values()) / steps,
        "gpu_busy_ms_per_token": busy / 1e3 / steps,
        "runtime_calls_per_token": {k: v / steps for k, v in calls.most_common(8)},
        "eager_ops_per_token": {k: v / steps for k, v in ops.most_common(30)},
        "top_kernels": [
            {"name": k[:80], "ms_per_token": us / 1e3 / steps, "launches_per_token": kernels[k] / steps}
            for k, us in kernel_us.most_common(25)
        ],
    }  # fmt: skip


def _kernel_table(prof: Any) -> dict[str, Any]:
    kernels: Counter[str] = Counter()
    kernel_us: Counter[str] = Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] += 1
            kernel_us[e.name] += e.device_time
    return {
        "kernels": sum(kernels.values()), "gpu_busy_ms": sum(kernel_us.values()) / 1e3,
        "top_kernels": [
            {"name": k[:100], "ms": us / 1e3, "launches": kernels[k]} for k, us in kernel_us.most_common(25)
        ],
    }  # fmt: skip


def row_profile_prefill(b: Bench) -> dict[str, Any]:
    """torch.profiler over one `--context`-token prefill: where its time goes (top kernels by GPU time)."""
    from torch.profiler import ProfilerActivity, profile

    model = b.model("bf16")
    model._decoder = None
    prompt = b.prompt(b.a.context)
    with torch.no_grad():
        model.extend(model.new_state(), prompt[:1024], last_only=True)  # warm-up
        st = model.new_state()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.dev == "cuda" else [])
        with profile(activities=acts) as prof:
            model.extend(st, prompt, last_only=True)
            b.sync()
    return {"tokens": b.a.context, **_kernel_table(prof)}


def row_profile_extend(b: Bench) -> dict[str, Any]:
    """torch.profiler over extend-1m's far call (a `--extend`-token extend at `--far-context`, synthetic
    state): which kernels grow with the context (compare with profile-prefill at the near context)."""
    from torch.profiler import ProfilerActivity, profile

    model = b.model("bf16")
    model._decoder = None
    n, far = b.a.extend, b.a.far_context
    chunk = b.prompt(n)
    st = synthetic(model.new_state(max_len=far + n), far)
    snap = st.snapshot()
    with torch.no_grad():
        model.extend(st, chunk, last_only=True)  # warm-up at this context
        st.restore(snap)
        b.sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.dev == "cuda" else [])
        with profile(activities=acts) as prof:
            model.extend(st, chunk, last_only=True)
            b.sync()
    return {"extend_tokens": n, "far_context": far, "synthetic_state": True, **_kernel_table(prof)}


def run_row(b: Bench, name: str) -> dict[str, Any]:
    if name == "profile-prefill":
        return row_profile_prefill(b)
    if name == "profile-extend":
        return row_profile_extend(b)
    if name in ("decode-bf16", "decode-fp8fp4"):
        return row_decode(b, name.removeprefix("decode-"))
    if name == "decode-b32":
        return row_batch(b)
    if name in ("prefill-4k", "prefill-32k"):
        return row_prefill(b, b.a.context if name == "prefill-4k" else b.a.long_prefill)
    if name == "decode-128k":
        return row_long_decode(b)
    if name == "extend-1m":
        return row_extend(b)
    return row_profile(b)


def table(report: dict[str, Any]) -> str:
    """The README rows: what was measured, against its bound or its bar."""
    lines = ["| row | agentkit | reference point | ratio |", "|---|---:|---:|---:|"]
    r = report["rows"]
    for k, v in r.items():
        if "error" in v:
            lines.append(f"| {k} | error: {v['error'][:60]} | | |")
        elif k.startswith("decode-") and "bound_tok_s" in v:
            hf = v.get("transformers_tok_s")
            ref = f"bound {v['bound_tok_s']:,.0f}" + (f"; transformers {hf:,.1f}" if hf else "")
            if v.get("general_path_tok_s"):
                ref += f"; general path {v['general_path_tok_s']:,.1f}"
            best = v.get("best_path", "graphs")
            rates = {
                "graphs": v["static_graphs_tok_s"],
                "pipelined": v.get("pipelined_greedy_tok_s"),
                "compiled": v.get("static_graphs_compiled_tok_s"),
            }
            for path, rate in rates.items():
                if rate and path != best:
                    ref += f"; {path} {rate:,.1f}"
            lines.append(f"| {k} | {rates[best]:,.1f} tok/s ({best}) | {ref} | "
                         f"{v['fraction_of_bound']:.1%} of bound |")  # fmt: skip
        elif k == "decode-b32":
            b1 = f"B1 {v['b1_tok_s']:,.1f}"
            lines.append(f"| {k} | {v['b32_tok_s']:,.0f} tok/s | {b1} | {v['ratio']:.1f}x |")
            if "b32_pipelined_tok_s" in v:
                b1 = f"B1 {v['b1_pipelined_tok_s']:,.1f}"
                lines.append(f"| {k} (pipelined) | {v['b32_pipelined_tok_s']:,.0f} tok/s | {b1} | "
                             f"{v['ratio_pipelined']:.1f}x |")  # fmt: skip
        elif k.startswith("prefill"):
            hf = v.get("transformers_tok_s")
            lines.append(f"| {k} | {v['tok_s']:,.0f} tok/s, {v['model_tflop_s']:,.1f} TFLOP/s | "
                         f"{v['flops_per_token'] / 1e9:.2f} GFLOP/token"
                         + (f"; transformers {hf:,.0f} tok/s" if hf else "")
                         + f" | {v['fraction_of_bf16_peak']:.1%} of peak |")  # fmt: skip
        elif k == "decode-128k":
            lines.append(f"| {k} | {v['long_tok_s']:,.1f} tok/s | {v['short_context']} ctx: "
                         f"{v['short_tok_s']:,.1f} | {v['ratio']:.0%} |")  # fmt: skip
        elif k == "extend-1m":
            lines.append(f"| {k} | {v['far_s']:.2f} s at {v['far_context']:,} | {v['near_s']:.2f} s at "
                         f"{v['near_context']:,} | {v['ratio']:.2f}x |")  # fmt: skip
        elif k == "profile":
            lines.append(f"| {k} | {v['kernels_per_token']:.0f} kernels/token | GPU busy "
                         f"{v['gpu_busy_ms_per_token']:.2f} ms/token | |")  # fmt: skip
        elif k == "profile-prefill":
            lines.append(f"| {k} | {v['kernels']} kernels / {v['tokens']} tokens | GPU busy "
                         f"{v['gpu_busy_ms']:.1f} ms | |")  # fmt: skip
        elif k == "profile-extend":
            lines.append(f"| {k} | {v['kernels']} kernels / {v['extend_tokens']} tokens at "
                         f"{v['far_context']:,} | GPU busy {v['gpu_busy_ms']:.1f} ms | |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", default="all", choices=("all", *ROWS))
    ap.add_argument("--config", default="flash-reduced", help="ModelConfig preset")
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--context", type=int, default=4096, help="decode context and the short prefill")
    ap.add_argument("--long-prefill", type=int, default=32768)
    ap.add_argument("--long-context", type=int, default=131072, help="decode-128k's context")
    ap.add_argument("--extend", type=int, default=32768, help="extend-1m's chunk")
    ap.add_argument("--far-context", type=int, default=(1 << 20) - 32768, help="extend-1m's far context")
    ap.add_argument("--steps", type=int, default=64, help="timed decode steps")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--compile", action="store_true", help="decode rows: also the torch.compile'd step")
    ap.add_argument("--no-general", action="store_true", help="decode rows: skip the general extend path")
    ap.add_argument(
        "--profile-weights", default="bf16", choices=["bf16", "fp8fp4"], help="the profile row's weights"
    )
    ap.add_argument(
        "--tune", default="", help='decode rows: sweep kernel launch settings first, "knob=v1,v2;knob2=v1,v2"'
    )
    ap.add_argument("--out", default=None, help="JSON report path")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda requested, but no CUDA device is available (smoke-test: --device cpu)"
        )
    b = Bench(a)
    for name in ROWS if a.row == "all" else (a.row,):
        t0 = time.perf_counter()
        try:
            row = run_row(b, name)
        except Exception as e:
            traceback.print_exc()
            row = {"error": f"{type(e).__name__}: {e}"}
            with contextlib.suppress(Exception):
                b.models.clear()
                _free(b.dev)
        row["seconds"] = time.perf_counter() - t0
        b.report["rows"][name] = row
        b.save()
        print(f"[{name}] {json.dumps(row)}", flush=True)
    print(f"{b.report['gpu']}  torch {b.report['torch']}  triton {b.report['triton']}  "
          f"copy bandwidth {b.bw / 1e9:,.0f} GB/s")  # fmt: skip
    print(table(b.report))


if __name__ == "__main__":
    main()
