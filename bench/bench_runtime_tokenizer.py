"""Encode throughput of the runtime tokenizer (tiktoken, folded V4 pattern) against HF `tokenizers`.

    python bench/bench_runtime_tokenizer.py [--vocab 8000] [--mb 1.0]

Both sides use the same byte-level BPE, trained here by HF `tokenizers` with V4's pre-tokenizer (V4's own
tokenizer.json is not available offline). Single-threaded, one long string per call; ids are compared.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import tokenizers
from agentkit.runtime.tokenizer import BOS, EOS, V4_SPLIT_PATTERNS, Tokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

SCRIPTS = [
    "the quick brown fox jumps over the lazy dog while tool_calls stream in ",
    "def encode(self, text: str) -> list[int]:\n    return [ord(c) for c in text]\n",
    "大规模语言模型的推理需要高效的注意力机制和缓存。",
    "ひらがなとカタカナ・ー゛の混ざった文章です。",
    "Привет, как дела? Всё хорошо.",
    "Numbers 1234567 and 3.14159, dates 2026-11-30.",
    "emoji 🚀👍🏽 and symbols ±×÷→ in text.",
]


WORDS = [w for s in SCRIPTS for w in s.replace("\n", " \n ").split(" ") if w]
CJK = "大规模语言模型的推理需要高效的注意力机制和缓存ひらがなとカタカナの混ざった文章です"


def text_of(n_bytes: int, seed: int) -> str:
    """Mixed-script text: English/code/Cyrillic words, CJK runs, numbers, punctuation and newlines."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        r = rng.random()
        if r < 0.6:
            w = rng.choice(WORDS)
            w = w[: rng.randint(1, len(w))] + rng.choice(["", "", "s", "ing", "ed"]) if r < 0.3 else w
            s = " " + w
        elif r < 0.75:
            s = "".join(rng.choice(CJK) for _ in range(rng.randint(1, 8)))
        elif r < 0.85:
            s = " " + str(rng.randint(0, 10 ** rng.randint(1, 8)))
        else:
            s = rng.choice([".", ",", "\n", "\n\n", "();", " ->", ":", "\n    "])
        parts.append(s)
        size += len(s.encode())
    return "".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--dir", default="/tmp/bench_tokenizer")
    args = ap.parse_args()
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(p), behavior="isolated", invert=False)
            for p in V4_SPLIT_PATTERNS
        ]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator([text_of(2000, i) for i in range(500)], trainer)
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    hf.save(str(d / "tokenizer.json"))
    fast = Tokenizer.from_file(d)
    generic = Tokenizer(fast.merges, fast.vocab, fast.added, fast.splits, fast_path=False)
    text = text_of(int(args.mb * 1e6), seed=12345)
    n = len(text.encode())
    rows = []
    ref: list[int] | None = None
    for name, enc in (
        ("agentkit (tiktoken, folded V4 pattern)", lambda: fast.encode(text)),
        ("agentkit generic path (Python Splits + tiktoken BPE)", lambda: generic.encode(text)),
        ("HF tokenizers", lambda: hf.encode(text, add_special_tokens=False).ids),
    ):
        t0 = time.perf_counter()
        ids = enc()
        dt = time.perf_counter() - t0
        ref = ids if ref is None else ref
        rows.append((name, dt, len(ids), ids == ref))
    print(f"\n### Tokenizer encode, {n / 1e6:.2f} MB mixed-script text, BPE vocab {len(fast.vocab)}\n")
    print("| implementation | MB/s | tokens | same ids |")
    print("|---|---:|---:|---|")
    for name, dt, ntok, same in rows:
        print(f"| {name} | {n / 1e6 / dt:.2f} | {ntok} | {same} |")


if __name__ == "__main__":
    main()
