"""One batch-1 decode step under `torch.profiler`: launches per token, host syncs, and the top kernels.

Run on a CUDA machine: `python bench/profile_decode.py [--config flash-reduced] [--prompt 4096]
[--out f.json]`.
Builds the random-weight model in bf16, prefills `--prompt` tokens, then profiles `--steps` decode steps
(`--path`: the general extend, the static decoder eagerly, or its CUDA graphs) and reports per step: CUDA
kernel launches, cudaStreamSynchronize / cudaMemcpy calls, GPU-busy time against wall
time, and the ten kernels with the most GPU time. The baseline the runtime's kernel and CUDA-graph work is
measured against (issue 16).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.model import V4Model
from torch.profiler import ProfilerActivity, profile

RUNTIME_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaLaunchKernel",
                 "cuLaunchKernel", "cudaMemsetAsync", "cudaGraphLaunch")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="flash-reduced")
    ap.add_argument("--prompt", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--path", default="graphs", choices=["general", "static", "graphs"],
        help="general: extend on a plain state; static: StaticDecoder.step eagerly; graphs: its CUDA graphs",
    )  # fmt: skip
    a = ap.parse_args()
    cfg = ModelConfig.preset(a.config, weight_format="float", max_seq_len=1 << 20)
    model = V4Model(cfg, dtype=torch.bfloat16, device="cuda").init_random_(0).eval()
    prompt = torch.randint(0, cfg.vocab_size, (a.prompt,), generator=torch.Generator().manual_seed(0)).cuda()
    if a.path == "general":
        st = model.new_state()
    else:
        st = model.static_decoder(
            max_batch=1, max_len=a.prompt + a.steps + 8, graphs=a.path == "graphs"
        ).new_state()
    with torch.no_grad():
        tok = int(model.extend(st, prompt, last_only=True).argmax())
        for _ in range(3):  # warm-up (Triton compiles, allocator settles)
            tok = int(model.extend(st, [tok], last_only=True).argmax())
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(a.steps):
                tok = int(model.extend(st, [tok], last_only=True).argmax())
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / a.steps
    events = prof.events()
    kernels: Counter[str] = Counter()
    kernel_us: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    busy = 0.0
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] += 1
            kernel_us[e.name] += e.device_time
            busy += e.device_time
        elif e.name in RUNTIME_CALLS:
            calls[e.name] += 1
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": f"python bench/profile_decode.py --config {a.config} --prompt {a.prompt} "
        f"--steps {a.steps} --path {a.path}",
        "wall_ms_per_step": wall * 1e3,
        "gpu_busy_ms_per_step": busy / 1e3 / a.steps,
        "kernels_per_step": sum(kernels.values()) / a.steps,
        "runtime_calls_per_step": {k: v / a.steps for k, v in calls.items()},
        "top_kernels": [
            {
                "name": name[:90],
                "ms_per_step": us / 1e3 / a.steps,
                "launches_per_step": kernels[name] / a.steps,
            }
            for name, us in kernel_us.most_common(10)
        ],
    }
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
