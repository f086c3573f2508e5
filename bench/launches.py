"""Launches of one static decode step, counted on the CPU: which torch ops and Triton kernels a step issues,
and from which line of the runtime.

Why on the CPU: a batch-1 decode step on a GPU is bounded by its launches (each costs a few microseconds even
replayed from a CUDA graph), and the count does not depend on the device. Under `TRITON_INTERPRET=1` every
kernel runs in Triton's interpreter, so the step takes the same branches it takes on CUDA; the kernels'
`supported()` checks are forced on. View ops and casts to the dtype a tensor already has launch nothing and
are not counted; the interpreter's own torch calls are not counted either.

`python bench/launches.py [--config tiny-test] [--structure flash-reduced] [--weights bf16|fp8fp4] [--out
results.json]` prints the total and the top sources; `--structure` takes another preset's layer pattern
(layers, compression ratios, hash layers, experts) at the small preset's widths, since the count depends on
the pattern, not on the widths.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import traceback
from typing import Any

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Ops that make a view or an uninitialized buffer: no kernel runs.
NO_LAUNCH = {
    "view", "_unsafe_view", "slice", "unsqueeze", "reshape", "t", "expand", "detach", "select", "transpose",
    "empty", "empty_like", "as_strided", "squeeze", "permute", "alias", "unflatten", "split",
    "split_with_sizes", "narrow", "_reshape_alias", "unbind", "lift_fresh", "empty_strided", "new_empty",
    "new_empty_strided", "set_",
}  # fmt: skip


def _where() -> str:
    """The innermost frame in the runtime's own files (not Triton's, whose path also has a runtime/)."""
    import agentkit.runtime

    root = os.path.dirname(os.path.abspath(agentkit.runtime.__file__)) + os.sep
    frames = [f for f in traceback.extract_stack() if os.path.abspath(f.filename).startswith(root)]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{os.path.abspath(f.filename)[len(root) :]}:{f.name}"


def count(config: str, weights: str, structure: str | None = None) -> dict[str, Any]:
    import triton.runtime.interpreter as interp
    from agentkit.runtime import kernels
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.decode import StaticDecoder
    from agentkit.runtime.model import V4Model

    names = ("compressor", "indexer", "lowp_gemm", "mhc", "moe", "pointwise", "sparse_attn")
    for name in names:  # the kernels a CUDA step would take (modules missing at older commits are skipped)
        try:
            mod = __import__(f"agentkit.runtime.kernels.{name}", fromlist=["supported"])
        except ImportError:
            continue
        mod.supported = lambda *a, **k: True  # type: ignore[attr-defined]
    assert kernels.enabled()
    inside = [0]
    kern: collections.Counter[tuple[str, str]] = collections.Counter()
    run = interp.InterpretedFunction.run

    def counted(self: Any, *a: Any, **k: Any) -> Any:
        kern[("kernel", "kernel " + self.fn.__name__)] += 1
        inside[0] += 1
        try:
            return run(self, *a, **k)
        finally:
            inside[0] -= 1

    interp.InterpretedFunction.run = counted  # type: ignore[method-assign]

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.c: collections.Counter[tuple[str, str]] = collections.Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if inside[0] or name in NO_LAUNCH:
                return out
            a0 = args[0] if args else None
            if (
                name in ("to", "contiguous")
                and isinstance(out, torch.Tensor)
                and isinstance(a0, torch.Tensor)
                and out.data_ptr() == a0.data_ptr()
            ):
                return out  # already that dtype / layout: nothing copied
            self.c[(name, _where())] += 1
            return out

    over: dict[str, Any] = {"window_size": 16, "moe_inter_dim": 128}
    if structure:  # another preset's layer pattern (layers, ratios, hash layers, experts) at these widths
        ref = ModelConfig.preset(structure)
        over.update(
            n_layers=ref.n_layers, compress_ratios=ref.compress_ratios, n_hash_layers=ref.n_hash_layers,
            n_routed_experts=ref.n_routed_experts, n_activated_experts=ref.n_activated_experts,
        )  # fmt: skip
    if weights == "fp8fp4":
        over.update(weight_format="quantized", dtype="fp8", expert_dtype="fp4")
    cfg = ModelConfig.preset(config, **over)
    model = V4Model(cfg, dtype=torch.bfloat16).init_random_(0).eval()
    dec = StaticDecoder(model, max_batch=1, max_len=96, graphs=False)
    st = dec.new_state()
    with torch.no_grad():
        model.extend(st, list(range(3, 40)))
        for tok in (5, 6):
            dec.step([st], [tok])
        ops = Ops()
        kern.clear()
        with ops:
            dec.step([st], [7])
    by_source: collections.Counter[str] = collections.Counter()
    by_op: collections.Counter[str] = collections.Counter()
    for (op, where), n in (ops.c + kern).items():
        by_source[where] += n
        by_op[op] += n
    return {
        "config": config, "structure": structure or config, "weights": weights, "layers": cfg.n_layers,
        "launches_per_step": sum(ops.c.values()) + sum(kern.values()),
        "torch_ops": sum(ops.c.values()), "triton_kernels": sum(kern.values()),
        "by_source": dict(by_source.most_common(25)), "by_op": dict(by_op.most_common(25)),
        "command": "python " + " ".join(sys.argv),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny-test")
    ap.add_argument("--weights", default="bf16", choices=["bf16", "fp8fp4"])
    ap.add_argument("--structure", default=None, help="take this preset's layer pattern (e.g. flash-reduced)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    r = count(a.config, a.weights, a.structure)
    head = f"{r['config']} as {r['structure']} ({r['layers']} layers, {r['weights']})"
    print(f"{head}: {r['launches_per_step']} launches per step ({r['torch_ops']} torch ops, "
          f"{r['triton_kernels']} Triton kernels)")  # fmt: skip
    print("\n| source | launches |\n|---|---:|")
    for k, v in list(r["by_source"].items())[:15]:
        print(f"| {k} | {v} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
