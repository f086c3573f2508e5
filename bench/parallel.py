"""Tensor + expert parallel runtime (runtime/parallel.py): MoE combine schemes and N-rank inference.

    python bench/parallel.py combine                    # 2 gloo ranks (CPU): all-reduce vs all-to-all
    python bench/parallel.py combine --device cuda      # 2 GPUs over NCCL
    python bench/parallel.py decode --source tiny-test  # 1 process vs 2 gloo ranks: load, prefill, decode
    torchrun --nproc-per-node 2 bench/parallel.py decode --source /ckpt/flash --device cuda --ranks-only

`combine` times the communication of one MoE layer's combine at V4-Flash width (D=4096, k=6 of 256
experts) on the activations every rank already holds under tensor-parallel attention:
  all-reduce  one fp32 all-reduce of each rank's partial sum [T, D] (what the runtime does, as the reference);
  all-to-all  the dispatch/combine design of data-parallel attention (DeepEP style): each token has one owner
              rank, which sends its activation to the ranks holding its experts and gets the expert outputs
              back (two variable all-to-alls, plus the split-size exchange), then an all-gather puts [T, D]
              back on every rank, as the next tensor-parallel attention needs.
Expert compute is left out (identical in both). `decode` loads a checkpoint or preset on every rank and
reports load time, memory per rank, prefill tok/s and batch-1 decode tok/s against its bound (one rank's
weight bytes per step over one device's measured copy bandwidth), next to one process.
Prints a markdown table; `--out` writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from agentkit.runtime.loader import load_model
from agentkit.runtime.model import V4Model
from agentkit.runtime.parallel import Parallel, init_parallel, spawn

D, K, E = 4096, 6, 256


def _all_reduce(par: Parallel, partial: torch.Tensor) -> torch.Tensor:
    return par.all_reduce(partial)


def _all_to_all(par: Parallel, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Owner-dispatch / combine of (token, slot) pairs, then an all-gather of the owners' rows."""
    t, n, dev = x.shape[0], par.world, x.device
    per = -(-t // n)
    mine = torch.arange(par.rank * per, min(t, (par.rank + 1) * per), device=dev)
    dest = (idx[mine] // (E // n)).reshape(-1)  # expert owner of each of my pairs
    order = torch.argsort(dest, stable=True)
    send = x[mine].repeat_interleave(K, 0)[order]
    send_counts = torch.bincount(dest, minlength=n)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts)
    recv = send.new_empty(int(recv_counts.sum()), x.shape[1])
    sc, rc = send_counts.tolist(), recv_counts.tolist()
    dist.all_to_all_single(recv, send, rc, sc)  # dispatch
    back = torch.empty_like(send)
    dist.all_to_all_single(back, recv, sc, rc)  # combine (expert outputs = inputs here)
    out = torch.zeros(per, x.shape[1], dtype=x.dtype, device=dev)
    out[: mine.numel()].index_add_(
        0, torch.arange(mine.numel(), device=dev).repeat_interleave(K)[order], back
    )
    parts = [torch.empty_like(out) for _ in range(n)]
    dist.all_gather(parts, out)
    return torch.cat(parts)[:t]


def _combine_rank(par: Parallel, tokens: list[int], iters: int, out_file: str, device: str) -> None:
    dev = torch.device("cuda", par.rank) if device == "cuda" else torch.device("cpu")
    rows = []
    for t in tokens:
        g = torch.Generator().manual_seed(t)
        x = torch.randn(t, D, generator=g).to(dev)
        idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(t)]).to(dev)
        # identity experts with weight 1: every token's combined output is K times its activation
        assert torch.allclose(_all_to_all(par, x, idx), K * x)
        schemes = (
            ("all-reduce", lambda x=x: _all_reduce(par, x.clone())),
            ("all-to-all", lambda x=x, idx=idx: _all_to_all(par, x, idx)),
        )
        for name, fn in schemes:
            for _ in range(10):
                fn()
            times = []
            for _ in range(iters):
                dist.barrier()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append(time.perf_counter() - t0)
            rows.append(
                {
                    "scheme": name,
                    "tokens": t,
                    "ranks": par.world,
                    "median_us": round(statistics.median(times) * 1e6),
                    "device": "cpu (gloo)"
                    if dev.type == "cpu"
                    else torch.cuda.get_device_name(dev) + " (nccl)",
                }
            )
    if par.rank == 0:
        Path(out_file).write_text(json.dumps(rows))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _copy_bandwidth(dev: torch.device) -> float:
    """Bytes/s of a large copy on the device (bytes read + written), best of 6."""
    n = (1 << 30) if dev.type == "cuda" else (1 << 26)
    a = torch.empty(n, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(6):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        b.copy_(a)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t)
    return 2 * n / best


def _bytes_per_token(model: V4Model) -> float:
    """Weight bytes this rank reads per batch-1 decode step, in stored format: its share of every split
    weight, every replicated one, its experts times k/E (on average k/N of the token's k experts are this
    rank's), one embedding row; the MTP block left out (as bench/runtime.py counts one process)."""
    cfg = model.config
    total = 0.0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.startswith("mtp.") or name.endswith("tid2eid") or "freqs" in name:
            continue
        b = float(t.numel() * t.element_size())
        if ".ffn.experts." in name:
            b *= cfg.n_activated_experts / cfg.n_routed_experts
        elif name == "embed.weight":
            b /= t.shape[0]
        total += b
    return total


def _decode_run(par: Parallel | None, args: argparse.Namespace) -> dict[str, Any]:
    dev = torch.device(args.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())  # init_parallel set it from LOCAL_RANK
    t0 = time.perf_counter()
    model = load_model(
        args.source, device=dev, dtype=getattr(torch, args.dtype), random_seed=args.seed, parallel=par
    )
    if dev.type == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    ids = torch.randint(
        0, model.config.vocab_size, (args.prefill,), generator=torch.Generator().manual_seed(1)
    )
    state = model.new_state()

    def timed(fn: Any) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    prefill_s = timed(lambda: model.extend(state, ids, last_only=True))
    nxt = [
        int(i)
        for i in torch.randint(
            0, model.config.vocab_size, (args.decode + 2,), generator=torch.Generator().manual_seed(2)
        )
    ]
    timed(lambda: model.extend(state, [nxt[0]], last_only=True))  # warm-up step
    decode_s = timed(lambda: [model.extend(state, [tok], last_only=True) for tok in nxt[1 : args.decode + 1]])
    mem = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _rss_mib()
    # every rank reads its share at once: the step's bound is one rank's bytes over one device's bandwidth
    # (collectives and the replicated parts' duplicate reads included in the measurement, not the bound)
    bound = _copy_bandwidth(dev) / _bytes_per_token(model)
    decode_tok_s = args.decode / decode_s
    return {
        "ranks": 1 if par is None else par.world,
        "load_s": round(load_s, 3),
        "memory_mib_per_rank": round(mem, 1),
        "prefill_tokens": args.prefill,
        "prefill_tok_s": round(args.prefill / prefill_s, 1),
        "decode_tok_s": round(decode_tok_s, 2),
        "decode_bound_tok_s": round(bound, 1),
        "fraction_of_bound": round(decode_tok_s / bound, 4),
    }


def _decode_rank(par: Parallel, args: argparse.Namespace, out_file: str) -> None:
    row = _decode_run(par, args)
    if par.rank == 0:
        Path(out_file).write_text(json.dumps(row))


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["combine", "decode"])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--tokens", default="1,32")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--source", default="tiny-test", help="checkpoint directory or preset (random weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--ranks-only", action="store_true", help="under torchrun: only the N-rank row")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.ranks))
    with tempfile.TemporaryDirectory() as tmp:
        out_file = str(Path(tmp) / "rows.json")
        if args.what == "combine":
            tokens = [int(t) for t in args.tokens.split(",")]
            backend = "nccl" if args.device == "cuda" else "gloo"
            spawn(_combine_rank, args.ranks, tokens, args.iters, out_file, args.device, backend=backend)
            rows = json.loads(Path(out_file).read_text())
        elif args.ranks_only or "RANK" in os.environ:
            par = init_parallel()
            row = _decode_run(par, args)
            dist.destroy_process_group()
            if par.rank != 0:
                return
            rows = [row]
        else:
            rows = [_decode_run(None, args)]
            spawn(_decode_rank, args.ranks, args, out_file)
            rows.append(json.loads(Path(out_file).read_text()))
    for r in rows:
        r.setdefault("device", args.device)
    print(_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
