"""Byte-level BPE trainer and codec for the tiny model, in the V4 tokenizer's shape.

The shipped tiny model cannot afford V4's 129k vocabulary (embedding and head alone would be larger
than the whole model), so it gets its own small vocabulary trained on the synthetic agent corpus. Every
other rule matches the V4 tokenizer (spec §11) so the same loader, chat encoder and loop code run
unchanged on both: the three isolated `Split` pre-tokenizer steps followed by ByteLevel, no
normalizer, no byte fallback, BOS/EOS/pad at ids 0/1/2, and the chat-template tokens
(`<｜User｜>`, `<think>`, `｜DSML｜`, ...) as added tokens that are never split. Ids are laid out as
specials 0-2, then the 256 byte symbols, then merges in merge order, then the remaining added tokens,
so a merged token's id is also its merge rank (what a tiktoken-style loader needs).

The output is a HF `tokenizer.json` (byte-level BPE, merges as "a b" strings like the DeepSeek files)
plus a `tokenizer_config.json`, so `tokenizers`, `transformers` and the runtime loader all read it.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import regex

from agentkit.dsml.tokens import (
    ASSISTANT,
    BOS,
    DSML,
    EOS,
    LATEST_REMINDER,
    TASK_TOKENS,
    THINK_END,
    THINK_START,
    USER,
)
from agentkit.runtime.tokenizer import (
    V4_SPLIT_PATTERNS,
    AddedToken,
    Tokenizer,
    TokenizerError,
    split_isolated,
)
from agentkit.runtime.tokenizer import byte_to_unicode as bytes_to_unicode

PAD = "<｜▁pad▁｜>"

# Added tokens after BOS/EOS/pad, in V4 id order (spec §11); the chat-format strings come from the one
# place that defines them. Only the flag matters across tokenizers: like V4, the chat-template tokens
# are not "special", so skip_special_tokens keeps them.
V4_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<｜System｜>", False),
    (USER, False),
    (ASSISTANT, False),
    ("<|EOT|>", True),
    (THINK_START, False),
    (THINK_END, False),
    (DSML, False),
    (LATEST_REMINDER, False),
    *((t, False) for t in TASK_TOKENS.values()),
    ("<｜image｜>", False),
)

# Spec §11: the three Split steps (behaviour Isolated) live with the runtime tokenizer, once.
SPLIT_PATTERNS = V4_SPLIT_PATTERNS
_COMPILED = tuple(regex.compile(p) for p in SPLIT_PATTERNS)


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def pretokenize(text: str) -> list[str]:
    """Split ordinary text (no added tokens) into the words BPE never merges across."""
    pieces = [text] if text else []
    for pattern in _COMPILED:
        pieces = split_isolated(pieces, pattern)
    return pieces


@dataclass
class BPETokenizer:
    """A trained byte-level BPE: merges in rank order plus added tokens at fixed ids."""

    merges: list[tuple[bytes, bytes]]
    added: dict[str, int] = field(default_factory=dict)
    added_special: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = 3
        self.token_bytes: list[bytes] = [b""] * (base + 256 + len(self.merges))
        for b in range(256):
            self.token_bytes[base + b] = bytes([b])
        self.ranks: dict[tuple[int, int], int] = {}
        self.byte_id: dict[bytes, int] = {bytes([b]): base + b for b in range(256)}
        for i, (left, right) in enumerate(self.merges):
            tid = base + 256 + i
            if left not in self.byte_id or right not in self.byte_id:
                raise TokenizerError(f"merge {i} uses a symbol not defined before it: {left!r} {right!r}")
            merged = left + right
            if merged in self.byte_id:
                raise TokenizerError(f"merge {i} produces a symbol that already exists: {merged!r}")
            self.ranks[(self.byte_id[left], self.byte_id[right])] = i
            self.byte_id[merged] = tid
            self.token_bytes[tid] = merged
        self.n_bpe = base + 256 + len(self.merges)
        for content, tid in self.added.items():
            if 3 <= tid < self.n_bpe:
                raise TokenizerError(f"added token {content!r} id {tid} collides with a BPE id")
        self.id_to_added = {tid: content for content, tid in self.added.items()}
        ordered = sorted(self.added, key=len, reverse=True)
        self._added_re = regex.compile("|".join(regex.escape(t) for t in ordered)) if ordered else None
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        """Rows the model's embedding needs: one past the largest id."""
        return max(self.n_bpe, *(tid + 1 for tid in self.added.values()))

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        ids = [3 + b for b in word.encode("utf-8")]
        while len(ids) > 1:
            best = None
            best_rank = None
            for i in range(len(ids) - 1):
                r = self.ranks.get((ids[i], ids[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None or best_rank is None:
                break
            pair = (ids[best], ids[best + 1])
            merged_id = 3 + 256 + best_rank
            out: list[int] = []
            i = 0
            while i < len(ids):
                if i < len(ids) - 1 and (ids[i], ids[i + 1]) == pair:
                    out.append(merged_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        result = tuple(ids)
        if len(self._cache) < 500_000:
            self._cache[word] = result
        return result

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text as plain bytes, without recognizing added tokens (for untrusted content)."""
        out: list[int] = []
        for word in pretokenize(text):
            out.extend(self._bpe_word(word))
        return out

    def encode(self, text: str) -> list[int]:
        """Encode text, mapping every occurrence of an added token's string to its id (HF behaviour)."""
        if self._added_re is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        pos = 0
        for m in self._added_re.finditer(text):
            out.extend(self.encode_ordinary(text[pos : m.start()]))
            out.append(self.added[m.group()])
            pos = m.end()
        out.extend(self.encode_ordinary(text[pos:]))
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        parts: list[bytes] = []
        for tid in ids:
            if tid in self.id_to_added:
                parts.append(self.id_to_added[tid].encode("utf-8"))
            elif 3 <= tid < self.n_bpe:
                parts.append(self.token_bytes[tid])
            else:
                raise TokenizerError(f"id {tid} is not in this vocabulary (size {self.vocab_size})")
        return b"".join(parts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- HF tokenizer.json ------------------------------------------------------------------------

    def to_runtime(self) -> Tokenizer:
        """The same vocabulary as the runtime's tokenizer, which owns the on-disk format (one writer)."""
        vocab = {self.token_bytes[tid]: tid for tid in range(3, self.n_bpe)}
        added = [
            AddedToken(content, tid, self.added_special.get(content, False))
            for content, tid in sorted(self.added.items(), key=lambda kv: kv[1])
        ]
        return Tokenizer(self.merges, vocab, added, SPLIT_PATTERNS, name="agentkit-tiny")

    def to_hf_json(self) -> dict[str, object]:
        return self.to_runtime().to_hf_dict()

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json + tokenizer_config.json (V4's flags) into `directory`; return the json."""
        return self.to_runtime().save(directory)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer.json written by `save` (or any byte-level BPE laid out the same way)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        data = json.loads(p.read_text(encoding="utf-8"))
        model = data.get("model", {})
        if model.get("type") != "BPE":
            raise TokenizerError(f"{p}: model type {model.get('type')!r} is not BPE")
        dec = unicode_to_bytes()

        def unsym(s: str) -> bytes:
            try:
                return bytes(dec[c] for c in s)
            except KeyError as e:
                raise TokenizerError(f"{p}: symbol {s!r} is not byte-level") from e

        merges: list[tuple[bytes, bytes]] = []
        for m in model["merges"]:
            left, right = m.split(" ") if isinstance(m, str) else m
            merges.append((unsym(left), unsym(right)))
        added = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
        special = {t["content"]: bool(t.get("special", False)) for t in data.get("added_tokens", [])}
        tok = cls(merges=merges, added=added, added_special=special)
        for s, tid in model["vocab"].items():
            if s in added:
                continue
            if tok.byte_id.get(unsym(s)) != tid:
                raise TokenizerError(f"{p}: vocab entry {s!r}={tid} does not follow the byte/merge id layout")
        return tok


def _split_added(text: str, added: Sequence[str]) -> list[str]:
    if not added:
        return [text]
    pat = regex.compile("|".join(regex.escape(t) for t in sorted(added, key=len, reverse=True)))
    return [p for p in pat.split(text) if p]


def train_bpe(
    texts: Iterable[str],
    num_merges: int,
    *,
    added_tokens: Sequence[tuple[str, bool]] = V4_ADDED_TOKENS,
    min_frequency: int = 2,
) -> BPETokenizer:
    """Learn up to `num_merges` merges from `texts`; deterministic for a given corpus.

    Added tokens are cut out of the text before counting, so no merge ever spans a chat-template token.
    Ties between equally frequent pairs break on the smaller (left id, right id), never on dict order.
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    names = [BOS, EOS, PAD, *(c for c, _ in added_tokens)]
    if len(set(names)) != len(names):
        raise ValueError("added tokens must be distinct and must not repeat BOS/EOS/pad")
    word_counts: Counter[str] = Counter()
    for text in texts:
        for chunk in _split_added(text, names):
            word_counts.update(pretokenize(chunk))

    base = 3
    words: list[list[int]] = []
    freqs: list[int] = []
    for w, c in sorted(word_counts.items()):
        words.append([base + b for b in w.encode("utf-8")])
        freqs.append(c)

    token_bytes: dict[int, bytes] = {base + b: bytes([b]) for b in range(256)}
    pair_counts: Counter[tuple[int, int]] = Counter()
    where: dict[tuple[int, int], set[int]] = {}
    for idx, (seq, f) in enumerate(zip(words, freqs, strict=True)):
        for pair in itertools.pairwise(seq):
            pair_counts[pair] += f
            where.setdefault(pair, set()).add(idx)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    next_id = base + 256
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if -neg != count:
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        if count < min_frequency:
            break
        a, b = pair
        new = next_id
        next_id += 1
        token_bytes[new] = token_bytes[a] + token_bytes[b]
        merges.append((token_bytes[a], token_bytes[b]))
        touched: set[tuple[int, int]] = set()
        for idx in sorted(where.pop(pair, set())):
            seq = words[idx]
            f = freqs[idx]
            out: list[int] = []
            i = 0
            changed = False
            while i < len(seq):
                if i < len(seq) - 1 and seq[i] == a and seq[i + 1] == b:
                    out.append(new)
                    i += 2
                    changed = True
                else:
                    out.append(seq[i])
                    i += 1
            if not changed:
                continue
            for p in itertools.pairwise(seq):
                pair_counts[p] -= f
                touched.add(p)
            for p in itertools.pairwise(out):
                pair_counts[p] += f
                touched.add(p)
                where.setdefault(p, set()).add(idx)
            words[idx] = out
        pair_counts.pop(pair, None)
        for p in touched:
            c = pair_counts.get(p, 0)
            if c > 0 and p != pair:
                heapq.heappush(heap, (-c, p))
            elif c <= 0:
                pair_counts.pop(p, None)

    n_bpe = base + 256 + len(merges)
    added = {BOS: 0, EOS: 1, PAD: 2}
    special = {BOS: True, EOS: True, PAD: True}
    for i, (content, flag) in enumerate(added_tokens):
        added[content] = n_bpe + i
        special[content] = flag
    return BPETokenizer(merges=merges, added=added, added_special=special)
