"""Every Triton kernel the runtime launches compiles for Hopper (sm_90: H100 / H200) down to a cubin, with the
arguments a decode step and a prefill give it on CUDA.

Why: the other kernel tests run in Triton's CPU interpreter, which executes Python semantics and accepts
code the compiler rejects (a variable whose type differs between branches, an op on a layout the backend
cannot lower, a constexpr used as a runtime value). Compiling needs no GPU, so CI checks what the interpreter
cannot. One child process records each launch's arguments while the model runs under the interpreter with
the kernels forced on; a second, without the interpreter, compiles each distinct signature through ptxas,
with the interpreter-only switches (fp32 dots, which the interpreter needs) at their native bf16 values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

_RECORD = textwrap.dedent(
    """
    import inspect, json, sys, torch
    import triton.runtime.interpreter as interp
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.decode import StaticDecoder
    from agentkit.runtime.model import V4Model
    import agentkit.runtime.kernels as K
    import pkgutil, importlib
    names = [m.name for m in pkgutil.iter_modules(K.__path__)]
    mods = [importlib.import_module(f"agentkit.runtime.kernels.{n}") for n in names]
    for mod in mods:
        if hasattr(mod, "supported"):
            mod.supported = lambda *a, **k: True
    seen = {}
    run = interp.InterpretedFunction.run
    def describe(v):
        if isinstance(v, torch.Tensor):
            return ["tensor", str(v.dtype).removeprefix("torch.")]
        if isinstance(v, bool):
            return ["bool", v]
        if isinstance(v, int):
            return ["int", v]
        if isinstance(v, float):
            return ["float", v]
        if isinstance(v, str):
            return ["str", v]
        return ["other", repr(v)]
    def record(self, *args, **kwargs):
        fn = self.fn
        names = list(inspect.signature(fn).parameters)
        vals = dict(zip(names, args))
        vals.update({k: v for k, v in kwargs.items() if k in names})
        desc = json.dumps({k: describe(v) for k, v in vals.items()}, sort_keys=True)
        key = (fn.__module__, fn.__name__, desc)
        seen[key] = 1
        return run(self, *args, **kwargs)
    interp.InterpretedFunction.run = record
    torch.manual_seed(0)
    flash = ModelConfig.preset("flash-reduced")
    pattern = dict(n_layers=flash.n_layers, compress_ratios=flash.compress_ratios,
                   n_hash_layers=flash.n_hash_layers, n_routed_experts=flash.n_routed_experts,
                   n_activated_experts=flash.n_activated_experts, window_size=16, moe_inter_dim=128,
                   o_lora_rank=64)  # whole 64-row groups: the grouped wo_a product from FP8 bytes
    for quant in (False, True):
        over = dict(weight_format="quantized", dtype="fp8", expert_dtype="fp4") if quant else {}
        cfg = ModelConfig.preset("tiny-test", **pattern, **over)
        model = V4Model(cfg, dtype=torch.bfloat16).init_random_(0).eval()
        with torch.no_grad():
            st = model.new_state()
            model.extend(st, list(range(3, 23)))  # a prefill (> KERNEL_ROWS rows): the multi-row kernels
            model.extend(st, [5])  # a general-path decode
            dec = StaticDecoder(model, max_batch=2, max_len=96, graphs=False)
            a, b = dec.new_state(), dec.new_state()
            a.restore(st)
            b.restore(st)
            dec.step([a], [6])  # batch 1
            dec.step([a, b], [7, 8])  # batch 2
    # the prefill attention kernel's HCA variant (the prefill above has no HCA entry yet: 20 < 128 tokens)
    from agentkit.runtime.kernels.sparse_prefill import sparse_prefill
    q, kw = torch.randn(20, 4, 32).bfloat16(), torch.randn(35, 32).bfloat16()
    sparse_prefill(q, kw, 15, 300, 16, torch.randn(3, 32).bfloat16(), None, 128, torch.randn(4), 0.2)
    json.dump([list(k) for k in seen], sys.stdout)
    """
)

_COMPILE = textwrap.dedent(
    """
    import importlib, json, multiprocessing, os, sys
    from concurrent.futures import ProcessPoolExecutor
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    PTR = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16", "int32": "*i32", "int64": "*i64",
           "uint8": "*u8", "int8": "*i8", "bool": "*i1", "float8_e4m3fn": "*fp8e4nv"}
    SWITCHES = ("UPCAST", "F32")  # fp32 dots: forced under the interpreter, natively only for fp32 inputs

    def typed(module, name, args):
        fn = getattr(importlib.import_module(module), name)
        args = json.loads(args)
        sig, const = {}, {}
        for p in fn.params:
            kind, v = args[p.name]
            if p.is_constexpr:
                sig[p.name], const[p.name] = "constexpr", v
            elif kind == "tensor":
                sig[p.name] = PTR[v]
            elif kind == "int":
                sig[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
            elif kind == "float":
                sig[p.name] = "fp32"
            elif kind == "bool":
                sig[p.name] = "i1"
            elif kind == "str":
                raise SystemExit(f"{name}: a string argument {p.name}={v} must be a constexpr")
            else:
                raise SystemExit(f"{name}: cannot type argument {p.name}={v}")
        # the recorded values of the interpreter's switches are the interpreter's; the model ran in bf16,
        # where a GPU takes the bf16 dots
        return sig, {**const, **{s: False for s in SWITCHES if s in const}}

    def build(job):
        module, name, sig, const = job
        fn = getattr(importlib.import_module(module), name)
        try:
            src = ASTSource(fn=fn, signature=sig, constexprs=const)
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        except Exception as e:
            return f"{module}.{name} {sig} {const}: {type(e).__name__}: {e}"
        return None if "cubin" in k.asm else f"{name}: no cubin"

    if __name__ == "__main__":
        jobs = {}
        for module, name, args in json.load(sys.stdin):
            sig, const = typed(module, name, args)
            key = (module, name, json.dumps(sig, sort_keys=True), json.dumps(const, sort_keys=True))
            jobs.setdefault(key, (module, name, sig, const))
        fork = multiprocessing.get_context("fork")  # the workers inherit this script's functions
        with ProcessPoolExecutor(max(2, os.cpu_count() or 1), mp_context=fork) as pool:  # one core each
            errors = [e for e in pool.map(build, jobs.values()) if e]
        if errors:
            raise SystemExit(errors[0])
        print(json.dumps(sorted({k[1] for k in jobs})))
    """
)

REPO = Path(__file__).resolve().parents[1]


def test_every_runtime_kernel_compiles_for_hopper() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
    rec = subprocess.run(
        [sys.executable, "-c", _RECORD], env=env, capture_output=True, text=True, timeout=1200, cwd=REPO
    )
    assert rec.returncode == 0, rec.stderr[-3000:]
    launches = json.loads(rec.stdout)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    comp = subprocess.run(
        [sys.executable, "-c", _COMPILE],
        input=rec.stdout,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert comp.returncode == 0, (comp.stdout[-2000:], comp.stderr[-3000:])
    compiled = set(json.loads(comp.stdout.strip().splitlines()[-1]))
    recorded = {name for _, name, _ in launches}
    assert compiled == recorded
    # the decode step's kernels are all among them (a kernel no path launched would go unchecked)
    for name in ("_rms_norm", "_rope", "_roundtrip", "_pool_step", "_combine_splits", "_sparse_attn_split",
                 "_moe_up", "_moe_down", "_hc_split_sinkhorn", "_hc_collapse", "_hc_expand", "_swiglu",
                 "_lowp_linear", "_quant_rows", "_index_scores", "_route", "_topk_stable",
                 "_sparse_prefill"):  # fmt: skip
        assert name in compiled, name
