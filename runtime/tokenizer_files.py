"""Byte-level BPE tokenizer files: HF `tokenizer.json` and `.tiktoken` ranks, read and written.

Reading yields `BPEParts` (merges in priority order, BPE vocab as bytes, added tokens, pre-tokenizer Split
regexes), which `Tokenizer` is built from; writing is the inverse, in the layout of the V4 files. Only what
this runtime reproduces exactly is accepted (isolated Splits + ByteLevel, plain BPE); anything else is a
`TokenizerError` naming the file, never a tokenizer that silently splits differently.

Byte-level BPE files write token bytes as printable characters (GPT-2's byte -> unicode table), so a token's
bytes are recovered with the inverse table.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from .pretokenizer import V4_SPLIT_PATTERNS
from .special_tokens import BOS, EOS, V4_ADDED_TOKENS, AddedToken

__all__ = [
    "BPEParts",
    "TokenizerError",
    "byte_to_unicode",
    "hf_dict",
    "parts_from_hf_dict",
    "read_tiktoken",
    "read_tokenizer_json",
    "tokenizer_config",
    "write_tiktoken",
]


class TokenizerError(ValueError):
    """A tokenizer file, an id or an argument that this tokenizer cannot represent."""


@dataclass
class BPEParts:
    """What a tokenizer file holds, as bytes and ids (the `Tokenizer` constructor's arguments)."""

    merges: list[tuple[bytes, bytes]]
    vocab: dict[bytes, int]
    added: list[AddedToken]
    splits: tuple[str, ...] = field(default=V4_SPLIT_PATTERNS)
    name: str = "deepseek-v4"


# ---------------------------------------------------------------------------------------- byte symbols


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE files write their tokens in."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def _sym(b: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[x] for x in b)


def _unsym(s: str, where: str) -> bytes:
    table = _unicode_to_byte()
    try:
        return bytes(table[c] for c in s)
    except KeyError:
        raise TokenizerError(f"{where}: token {s!r} is not a byte-level BPE symbol") from None


# ---------------------------------------------------------------------------------------- reading


def read_tokenizer_json(path: str | Path) -> BPEParts:
    """A HF tokenizer.json; malformed or unsupported content is a `TokenizerError` naming the file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file not found: {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{p}: not valid JSON: {e}") from e
    try:
        return parts_from_hf_dict(data, str(p))
    except TokenizerError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, regex.error) as e:
        raise TokenizerError(f"{p}: unsupported or malformed tokenizer.json: {e!r}") from e


def parts_from_hf_dict(data: dict[str, Any], where: str) -> BPEParts:
    """The parts of a parsed tokenizer.json (`where` names it in errors)."""
    model = data["model"]
    if model.get("type") != "BPE":
        raise TokenizerError(f"{where}: model type {model.get('type')!r} is not BPE")
    if model.get("byte_fallback") or model.get("ignore_merges") or model.get("dropout"):
        raise TokenizerError(f"{where}: byte_fallback / ignore_merges / dropout BPE is not supported")
    norm = data.get("normalizer")
    if norm and not (norm.get("type") == "Sequence" and not norm.get("normalizers")):
        raise TokenizerError(f"{where}: normalizer {norm.get('type')!r} is not supported")
    added = [
        AddedToken(t["content"], int(t["id"]), bool(t.get("special", False))) for t in data["added_tokens"]
    ]
    added_contents = {t.content for t in added}
    vocab = {_unsym(s, where): int(i) for s, i in model["vocab"].items() if s not in added_contents}
    merges: list[tuple[bytes, bytes]] = []
    for m in model["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        merges.append((_unsym(a, where), _unsym(b, where)))
    return BPEParts(merges, vocab, added, _splits_of(data.get("pre_tokenizer"), where), Path(where).stem)


def _splits_of(pre: dict[str, Any] | None, where: str) -> tuple[str, ...]:
    """Split regexes of a HF pre-tokenizer this loader reproduces exactly (isolated Splits + ByteLevel)."""
    if pre is None:
        raise TokenizerError(f"{where}: no pre_tokenizer; a byte-level BPE needs at least ByteLevel")
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    if not steps or steps[-1].get("type") != "ByteLevel":
        raise TokenizerError(f"{where}: pre_tokenizer must end with ByteLevel")
    last = steps[-1]
    if last.get("add_prefix_space"):
        raise TokenizerError(f"{where}: ByteLevel add_prefix_space is not supported")
    splits: list[str] = []
    for s in steps[:-1]:
        if s.get("type") != "Split" or s.get("behavior") != "Isolated" or s.get("invert"):
            raise TokenizerError(
                f"{where}: pre-tokenizer step {s.get('type')} {s.get('behavior')} is not supported"
            )
        pat = s["pattern"]
        splits.append(pat["Regex"] if "Regex" in pat else regex.escape(pat["String"]))
    if last.get("use_regex", True):  # ByteLevel's own GPT-2 split runs after the Splits
        splits.append(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    return tuple(splits)


def read_tiktoken(path: str | Path, added: Iterable[AddedToken] = V4_ADDED_TOKENS) -> BPEParts:
    """A `.tiktoken` file (base64 token, rank per line), with the V4 pre-tokenizer and `added` tokens.

    Merges are recovered from the ranks: a token's merge is the split tiktoken's own BPE reaches on its
    bytes using only lower-ranked tokens.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise TokenizerError(f"tiktoken file not found: {p}") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{p}: malformed .tiktoken file (not ASCII): {e}") from e
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError as e:
            raise TokenizerError(f"{p}: malformed .tiktoken file at line {n}: {e}") from e
    return BPEParts(_merges_from_ranks(ranks), ranks, list(added), name=p.stem)


def _merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


# ---------------------------------------------------------------------------------------- writing


def hf_dict(
    merges: Sequence[tuple[bytes, bytes]],
    vocab: Mapping[bytes, int],
    added: Sequence[AddedToken],
    splits: Sequence[str],
) -> dict[str, Any]:
    """The HF tokenizer.json content (V4 layout) that `read_tokenizer_json` reads back as these parts."""
    out_vocab = {_sym(t): i for t, i in sorted(vocab.items(), key=lambda kv: kv[1])}
    top = max(vocab.values())
    for t in added:
        if t.id < top:  # like the DeepSeek files, low added ids also sit in the vocab
            out_vocab[t.content] = t.id
    pre = [
        {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False} for p in splits
    ]
    pre.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": t.id,
                "content": t.content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": t.special,
            }
            for t in added
        ],
        "normalizer": {"type": "Sequence", "normalizers": []},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": out_vocab,
            "merges": [f"{_sym(a)} {_sym(b)}" for a, b in merges],
        },
    }


def tokenizer_config(added_contents: Iterable[str]) -> dict[str, Any]:
    """tokenizer_config.json with V4's flags (no BOS/EOS added by the tokenizer: the chat template does)."""
    have = set(added_contents)
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "legacy": True,
        "bos_token": BOS if BOS in have else None,
        "eos_token": EOS if EOS in have else None,
        "pad_token": EOS if EOS in have else None,
        "unk_token": None,
        "model_max_length": 1048576,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
    }


def write_tiktoken(vocab: Mapping[bytes, int], path: str | Path) -> Path:
    """The BPE ranks as a `.tiktoken` file (added tokens are not part of that format)."""
    p = Path(path)
    lines = [f"{base64.b64encode(t).decode()} {i}" for t, i in sorted(vocab.items(), key=lambda kv: kv[1])]
    p.write_text("\n".join(lines) + "\n", encoding="ascii")
    return p
