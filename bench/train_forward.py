"""Training-step speed of `V4Model.forward`: the per-sequence reference path vs the batched path.

Training agentkit-tiny was dispatch-bound (~10k tokens/s on an H200, ~80k aten calls per step), so
this is the number to watch. Forward + backward with the MTP and indexer losses, bf16 autocast on CUDA,
1 thread on CPU; the two paths are interleaved so load from other processes hits both alike.

    python bench/train_forward.py --batch 8 --seq-len 2048 --vocab 3264 [--both]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from agentkit.runtime.model import V4Model

from agentkit.train.trainer import tiny_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--vocab", type=int, default=3264)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--both", action="store_true", help="also time the per-sequence reference path")
    args = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        torch.set_num_threads(1)
    model = V4Model(tiny_config(args.vocab)).init_random_(0).to(dev)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen).to(dev)
    labels = torch.roll(ids, -1, 1)

    def step(batched: bool) -> float:
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=dev == "cuda"):
            out = model(ids, labels, mtp=True, indexer_loss=True, batched=batched)
        assert out.loss is not None
        loss = out.loss + (out.indexer_loss if out.indexer_loss is not None else 0.0)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    paths = [False, True] if args.both else [True]
    times: dict[bool, list[float]] = {b: [] for b in paths}
    for b in paths:
        step(b)  # warm-up
    for _ in range(args.repeats):
        for b in paths:
            times[b].append(step(b))
    print(f"| device | B | S | path | s/step (median of {args.repeats}) | tokens/s |")
    print("|---|---:|---:|---|---:|---:|")
    for b in paths:
        t = statistics.median(times[b])
        name = "batched" if b else "per-sequence"
        print(
            f"| {dev} | {args.batch} | {args.seq_len} | {name} | {t:.3f} "
            f"| {args.batch * args.seq_len / t:,.0f} |"
        )


if __name__ == "__main__":
    main()
