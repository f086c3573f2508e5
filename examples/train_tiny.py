"""Train `agentkit-tiny`: synthetic agent episodes -> BPE tokenizer -> V4-architecture model -> checkpoint.

Stages (each can run alone, so data made on one machine can be trained on another):

  prepare  generate train + held-out episodes with the real tools, train the BPE tokenizer, tokenize
           the training episodes into a compact .npz (uint16 ids + loss mask) -> DATA dir
  train    pack, train (Muon + AdamW, masked + MTP loss; bf16 autocast on CUDA), save the checkpoint in
           the V4 safetensors layout with the tokenizer, the loss curve (JSON + PNG), then replay-evaluate
           on held-out episodes -> OUT dir
  all      both, one after the other

Micro run on a CPU (a minute or two):
  python examples/train_tiny.py all --episodes 64 --heldout 16 --merges 800 --micro --steps 20 \
      --batch 2 --seq-len 1536 --data /tmp/tiny-data --out /tmp/tiny-out
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from agentkit.train.data import Example, Packed, pack_flat, tokenize_episode
from agentkit.train.episodes import Episode, load_jsonl


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(args: argparse.Namespace) -> None:
    from agentkit.train.bpe import train_bpe
    from agentkit.train.data import example_lengths
    from agentkit.train.episodes import generate, save_jsonl

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_eps: list[Episode] = []
    chunk = 1000
    chunks = [(start, min(chunk, args.episodes - start)) for start in range(0, args.episodes, chunk)]
    # Episodes are independent given (seed, split, index), so chunks can be generated in any process and
    # the result is the same list as one process makes.
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(_generate_chunk, args.seed, args.start + start, n, args.family, _recipe(args))
            for start, n in chunks
        ]
        for fut in futures:
            train_eps += fut.result()
            _log(f"generated {len(train_eps)}/{args.episodes} training episodes")
    heldout = generate(args.heldout, split="heldout", seed=args.seed)
    _log(f"generated {len(heldout)} held-out episodes in {time.perf_counter() - t0:.0f} s")
    if args.tokenizer:
        # reuse a tokenizer (so a model trained on earlier data can continue on this data)
        from agentkit.train.bpe import BPETokenizer

        tok = BPETokenizer.load(args.tokenizer)
    else:
        tok = train_bpe((e.text for e in train_eps[: args.bpe_episodes]), args.merges)
    tok.save(data)
    _log(f"BPE: {len(tok.merges)} merges, vocab {tok.vocab_size}")
    parts = [train_eps[i : i + chunk] for i in range(0, len(train_eps), chunk)]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        exs = [x for part in pool.map(_tokenize_chunk, [str(data)] * len(parts), parts) for x in part]
    stats = example_lengths(exs)
    _log(f"tokenized: {stats}")
    lengths = np.array([len(x.ids) for x in exs], dtype=np.int32)
    ids = np.fromiter((t for x in exs for t in x.ids), dtype=np.uint16, count=int(lengths.sum()))
    mask = np.fromiter((m for x in exs for m in x.loss), dtype=np.bool_, count=int(lengths.sum()))
    np.savez_compressed(data / "train_tokens.npz", ids=ids, mask=np.packbits(mask), lengths=lengths)
    with gzip.open(data / "heldout.jsonl.gz", "wt", encoding="utf-8") as f:
        for e in heldout:
            f.write(json.dumps(e.to_json(), ensure_ascii=False) + "\n")
    save_jsonl(train_eps[: args.train_eval], data / "train_eval.jsonl")
    families: dict[str, int] = {}
    for e in train_eps:
        families[e.family] = families.get(e.family, 0) + 1
    meta = {
        "version": args.version,
        "recipe": _recipe(args),
        "seed": args.seed,
        "start": args.start,
        "episodes": len(train_eps),
        "heldout": len(heldout),
        "families": families,
        **stats,
    }
    (data / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    _log(f"prepared {data} in {time.perf_counter() - t0:.0f} s")


def _recipe(args: argparse.Namespace) -> dict[str, object]:
    """Issue 21's phrasing knobs (`episodes.draft_episode`); empty for the template-worded data."""
    small = {"small": args.small_numbers} if args.small_numbers else {}
    if not args.phrasing:
        return small
    return {"phrasing": args.phrasing, "keep": args.keep, "extra": args.extra} | small


def _generate_chunk(
    seed: int, start: int, n: int, family: str | None, recipe: dict[str, object] | None = None
) -> list[Episode]:
    from agentkit.train.episodes import generate

    return generate(n, split="train", seed=seed, start=start, family=family, **(recipe or {}))


def _tokenize_chunk(tokenizer_dir: str, episodes: list[Episode]) -> list[Example]:
    from agentkit.train.bpe import BPETokenizer

    encode = BPETokenizer.load(tokenizer_dir).encode
    return [tokenize_episode(encode, e) for e in episodes]


def _load_packed(data: Path, seq_len: int) -> Packed:
    z = np.load(data / "train_tokens.npz")
    lengths = z["lengths"].astype(np.int64)
    mask = np.unpackbits(z["mask"], count=int(lengths.sum())).astype(bool)
    return pack_flat(z["ids"].astype(np.int64), mask, lengths, seq_len, pad_id=2)


def _load_episodes(path: Path) -> list[Episode]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [Episode.from_json(json.loads(line)) for line in f if line.strip()]
    return list(load_jsonl(path))


def train_stage(args: argparse.Namespace) -> None:
    import torch
    from agentkit.runtime.model import V4Model

    from agentkit.train.bpe import BPETokenizer
    from agentkit.train.evaluate import forced, replay
    from agentkit.train.export import load_model, save_model
    from agentkit.train.trainer import TrainConfig, micro_config, pick_device, tiny_config, train

    if args.threads:
        torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = BPETokenizer.load(data / "tokenizer.json")
    packed = _load_packed(data, args.seq_len)
    _log(f"{len(packed)} rows of {args.seq_len}; {packed.trained_tokens} trained tokens")
    for extra in args.mix:
        from agentkit.train.data import concat

        more = _load_packed(Path(extra), args.seq_len)
        packed = concat(packed, more)
        _log(f"+ {len(more)} rows from {extra} ({more.trained_tokens} trained tokens)")
    if args.copy_rows:
        from agentkit.train.data import concat, copy_rows

        aux = copy_rows(args.copy_rows, args.seq_len, (3, tok.n_bpe), seed=args.seed)
        packed = concat(packed, aux)
        _log(f"+ {args.copy_rows} synthetic copy rows ({aux.trained_tokens} trained tokens)")
    vocab = -(-tok.vocab_size // 64) * 64
    mcfg = micro_config(vocab) if args.micro else tiny_config(vocab, index_topk=args.index_topk)
    device = pick_device(args.device)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        seed=args.seed,
        device=str(device),
        log_every=args.log_every,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        checkpoint_every=args.checkpoint_every,
    )

    def on_log(r: dict[str, float]) -> None:
        _log(
            f"step {int(r['step']):5d}  loss {r['loss']:.4f}  mtp {r['mtp_loss']:.4f}  "
            f"lr x{r['lr_mult']:.2f}  gnorm {r['grad_norm']:.2f}  "
            f"{r['tokens'] / max(r['seconds'], 1e-9):,.0f} tok/s"
        )

    start_model = None
    if args.resume:
        # continue from an earlier checkpoint (weights only: optimizer moments restart with the warmup),
        # so training can accumulate over several short device sessions
        start_model, old_tok = load_model(args.resume, device=device)
        if old_tok.merges != tok.merges:
            raise SystemExit(f"{args.resume} was trained with a different tokenizer than {data}")
        mcfg = start_model.config
        _log(f"resuming from {args.resume}")

    def on_checkpoint(m: V4Model, step: int) -> None:
        # weights only, into out/partial: a crash loses at most `checkpoint_every` steps, and the
        # partial model can be evaluated (examples/eval_tiny.py --model out/partial) while training goes on
        save_model(m, tok, out / "partial", meta={"step": step}, max_shard_bytes=args.shard_mb << 20)
        _log(f"checkpoint at step {step} -> {out / 'partial'}")

    model, hist = train(mcfg, packed, cfg, on_log=on_log, model=start_model, on_checkpoint=on_checkpoint)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"trained {n_params:,} params in {hist.records[-1]['seconds']:.0f} s")
    hist.save(out)
    model = model.float()
    meta = {
        "params": n_params,
        "data": json.loads((data / "meta.json").read_text()),
        "final": hist.records[-1],
    }
    save_model(model.cpu(), tok, out, meta=meta, max_shard_bytes=args.shard_mb << 20)
    model = model.to(device)
    results: dict[str, object] = {}
    t0 = time.perf_counter()
    for name, path, limit in (
        ("heldout", data / "heldout.jsonl.gz", args.eval_heldout),
        ("train", data / "train_eval.jsonl", args.eval_train),
    ):
        if limit <= 0 or not path.exists():
            continue
        eps = _load_episodes(path)[:limit]
        res = forced(model, tok.encode, eps, batch=args.eval_batch)
        results[name] = res.summary()
        results[f"{name}_failures"] = [tok.decode(f.generated_ids[-40:]) for f in res.failures]
        _log(f"exact-turn eval {name}: {res.summary()}")
        if name == "heldout" and args.replay > 0:
            # the literal incremental decode on a subset: must give the same verdicts
            sub = eps[: args.replay]
            lit = replay(model, tok.encode, tok.decode, sub, batch=args.replay)
            one = forced(model, tok.encode, sub, batch=args.eval_batch)
            results["replay_check"] = {"episodes": len(sub), "replay": lit.succeeded, "forced": one.succeeded}
            _log(f"replay check on {len(sub)}: replay {lit.succeeded} ok, one-pass {one.succeeded} ok")
    results["seconds"] = time.perf_counter() - t0
    (out / "eval.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if torch.cuda.is_available():
        _log(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def copy_stage(args: argparse.Namespace) -> None:
    import torch

    from agentkit.train.export import load_model, save_model
    from agentkit.train.trainer import copy_phase, pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.resume:
        model, tok = load_model(args.resume, device=device)
    else:  # a fresh agentkit-tiny for the tokenizer in --data
        from agentkit.train.bpe import BPETokenizer
        from agentkit.train.trainer import build_model, tiny_config

        tok = BPETokenizer.load(Path(args.data) / "tokenizer.json")
        vocab = -(-tok.vocab_size // 64) * 64
        model = build_model(tiny_config(vocab, index_topk=args.index_topk), args.seed, device)
    recs = copy_phase(
        model,
        (3, min(tok.n_bpe, 3 + args.copy_vocab) if args.copy_vocab else tok.n_bpe),
        steps=args.copy_steps,
        lr=args.lr,
        batch=args.copy_batch,
        seq_len=args.copy_seq_len,
        seed=args.seed,
        max_seconds=args.copy_minutes * 60 if args.copy_minutes else None,
        on_log=lambda r: _log(
            f"copy step {int(r['step']):4d}  loss {r['loss']:.4f}  acc {r['copy_accuracy']:.3f}"
        ),
    )
    out = Path(args.out)
    meta = {"resumed_from": args.resume or "fresh", "copy_phase": recs}
    save_model(model.cpu(), tok, out, meta=meta, max_shard_bytes=args.shard_mb << 20)
    _log(f"copy phase done -> {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["prepare", "train", "copy", "all", "plot"])
    p.add_argument("--data", default="runtime/weights/agentkit-tiny-data")
    p.add_argument("--out", default="runtime/weights/agentkit-tiny")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("prepare")
    g.add_argument("--episodes", type=int, default=20000)
    g.add_argument("--heldout", type=int, default=500)
    g.add_argument("--train-eval", type=int, default=200)
    g.add_argument("--merges", type=int, default=4000)
    g.add_argument("--bpe-episodes", type=int, default=5000)
    g.add_argument("--tokenizer", default=None, help="tokenizer.json to reuse instead of training one")
    g.add_argument("--start", type=int, default=0, help="first training episode index (extra data)")
    g.add_argument("--family", default=None, help="generate only this task family (extra data)")
    g.add_argument("--jobs", type=int, default=1, help="processes making episodes (same bytes, any N)")
    g.add_argument(
        "--version", default="v8", help="data version recorded in meta.json (v9: --phrasing train)"
    )
    g.add_argument(
        "--phrasing", default=None, help="reword tasks with this phrasing bank (train; issue 21, data v9)"
    )
    g.add_argument("--keep", type=float, default=0.35, help="with --phrasing: share kept in template words")
    g.add_argument(
        "--extra", type=float, default=0.22, help="with --phrasing: share of combined/refusal tasks"
    )
    g.add_argument(
        "--small-numbers", type=float, default=0.0,
        help="share of numbers drawn log-uniformly (one- and two-digit operands; data v12)",
    )  # fmt: skip
    g = p.add_argument_group("train")
    g.add_argument("--micro", action="store_true", help="the CPU-test config instead of agentkit-tiny")
    g.add_argument(
        "--mix", action="append", default=[], metavar="DIR", help="add another prepared DIR's rows (repeat)"
    )
    g.add_argument("--resume", default=None, help="checkpoint directory to continue training from")
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--batch", type=int, default=16)
    g.add_argument("--seq-len", type=int, default=2048)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--warmup", type=int, default=50)
    g.add_argument("--index-topk", type=int, default=512)
    g.add_argument("--max-minutes", type=float, default=0.0)
    g.add_argument("--copy-steps", type=int, default=250, help="copy stage: steps of pure copy sequences")
    g.add_argument("--copy-batch", type=int, default=8, help="copy stage: rows per step")
    g.add_argument("--copy-seq-len", type=int, default=256, help="copy stage: tokens per row")
    g.add_argument("--copy-minutes", type=float, default=0.0, help="copy stage: stop after this long")
    g.add_argument("--copy-vocab", type=int, default=0, help="copy stage: first N BPE ids only (0: all)")
    g.add_argument("--copy-rows", type=int, default=0, help="add N synthetic induction rows (data.copy_rows)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="save out/partial every N steps")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    g.add_argument("--device", default="auto")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--shard-mb", type=int, default=12)
    g.add_argument("--eval-heldout", type=int, default=500)
    g.add_argument("--eval-train", type=int, default=100)
    g.add_argument("--eval-batch", type=int, default=16)
    g.add_argument("--replay", type=int, default=16, help="held-out episodes to also decode step by step")
    g = p.add_argument_group("plot")
    g.add_argument(
        "--stage-loss",
        action="append",
        default=[],
        metavar="LABEL=LOSS_JSON",
        help="plot: one stage's loss.json, in training order (repeat); writes OUT/loss.png",
    )
    args = p.parse_args(argv)
    if args.stage == "plot":
        from agentkit.train.trainer import plot_stages

        stages = [tuple(s.split("=", 1)) for s in args.stage_loss]
        if not stages or any(len(s) != 2 for s in stages):
            p.error("plot needs --stage-loss LABEL=LOSS_JSON at least once")
        out = plot_stages(stages, Path(args.out) / "loss.png", "agentkit-tiny: every training stage")
        _log(f"wrote {out}" if out else "matplotlib is missing; nothing plotted")
    if args.stage in ("prepare", "all"):
        prepare(args)
    if args.stage in ("train", "all"):
        train_stage(args)
    if args.stage == "copy":
        copy_stage(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
