"""The DeepSeek-V4 tokenizer on tiktoken: byte-level BPE, V4 pre-tokenizer, V4 added tokens (spec §11).

Three files, one idea each: `pretokenizer.py` (how V4 cuts text into pieces, folded into one tiktoken regex),
`tokenizer_files.py` (tokenizer.json / .tiktoken read and written), and this one: the `Tokenizer` that encodes
and decodes with them, and `StreamDecoder`. The names the rest of the code imports from here stay here.

Decoding works on bytes: a character split across tokens decodes whole, and `StreamDecoder` holds back an
incomplete UTF-8 tail so a token stream never yields broken text.
"""

from __future__ import annotations

import codecs
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import regex
import tiktoken

from .pretokenizer import (
    V4_SPLIT_PATTERNS,
    V4_TIKTOKEN_PATTERN,
    WHOLE_PIECE,
    is_v4_splits,
    split_isolated,
)
from .special_tokens import BOS, EOS, V4_ADDED_TOKENS, AddedToken
from .tokenizer_files import (
    BPEParts,
    TokenizerError,
    byte_to_unicode,
    hf_dict,
    read_tiktoken,
    read_tokenizer_json,
    tokenizer_config,
    write_tiktoken,
)

__all__ = [
    "BOS",
    "EOS",
    "V4_ADDED_TOKENS",
    "V4_SPLIT_PATTERNS",
    "V4_TIKTOKEN_PATTERN",
    "AddedToken",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerError",
    "byte_to_unicode",
    "split_isolated",
]


AllowSpecial = bool | Literal["all"] | frozenset[str] | set[str]


class Tokenizer:
    """Byte-level BPE with added tokens; build with `from_file`, `from_tokenizer_json` or `from_tiktoken`."""

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]],
        vocab: Mapping[bytes, int],
        added: Iterable[AddedToken],
        splits: Sequence[str] = V4_SPLIT_PATTERNS,
        *,
        name: str = "deepseek-v4",
        fast_path: bool = True,
    ) -> None:
        """`vocab`: BPE token bytes -> id (all 256 single bytes required); `merges` in priority order.

        `fast_path=False` forces the generic path (Python splits, tiktoken BPE) even for the V4 pattern: it is
        the reference the single-pattern fast path is tested against."""
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        self.vocab = dict(vocab)
        self.added = sorted(added, key=lambda t: t.id)
        self.splits = tuple(splits)
        self.name = name
        self._allow_fast = fast_path
        missing = [b for b in range(256) if bytes([b]) not in self.vocab]
        if missing:
            raise TokenizerError(
                f"byte-level BPE vocab lacks single bytes {missing[:8]} ({len(missing)} in all)"
            )
        self._id_to_bytes: dict[int, bytes] = {i: t for t, i in self.vocab.items()}
        if len(self._id_to_bytes) != len(self.vocab):
            raise TokenizerError("two vocab entries share one id")
        self._added_by_content = {t.content: t for t in self.added}
        for t in self.added:
            if t.id in self._id_to_bytes and self._id_to_bytes[t.id] != t.content.encode():
                raise TokenizerError(f"added token {t.content!r} reuses BPE id {t.id}")
            self._id_to_bytes[t.id] = t.content.encode()
        self._special_ids = frozenset(t.id for t in self.added if t.special)
        self._build_encoding()

    def _build_encoding(self) -> None:
        # tiktoken merges the adjacent pair whose concatenation has the lowest rank and returns ranks as ids;
        # HF applies merges in list order. With the merge results' ids rising in merge order (how BPE files
        # are laid out) the two agree with rank = id; otherwise ranks follow the merge list and map back.
        ranks: dict[bytes, int] = {bytes([b]): self.vocab[bytes([b])] for b in range(256)}
        merged: list[bytes] = []
        for a, b in self.merges:
            t = a + b
            if t not in self.vocab:
                raise TokenizerError(f"merge {a!r} + {b!r} produces {t!r}, which is not in the vocab")
            if t not in ranks:
                ranks[t] = self.vocab[t]
                merged.append(t)
        ids = [self.vocab[t] for t in merged]
        identity = all(x < y for x, y in itertools.pairwise(ids))
        self._rank_to_id: list[int] | None = None
        if not identity:
            order = [bytes([b]) for b in range(256)] + merged
            ranks = {t: r for r, t in enumerate(order)}
            self._rank_to_id = [self.vocab[t] for t in order]
        base = len(self._rank_to_id) if self._rank_to_id is not None else max(ranks.values()) + 1
        specials: dict[str, int] = {}
        for k, added_token in enumerate(self.added):
            specials[added_token.content] = added_token.id if self._rank_to_id is None else base + k
        if self._rank_to_id is not None:
            self._rank_to_id += [t.id for t in self.added]
        else:
            used = set(ranks.values())
            clash = [t.content for t in self.added if t.id in used]
            if clash:
                raise TokenizerError(f"added tokens {clash[:5]} reuse ids of BPE tokens")
        self._fast = self._allow_fast and is_v4_splits(self.splits)
        self._split_res = [regex.compile(p) for p in self.splits]
        self._enc = tiktoken.Encoding(
            self.name,
            pat_str=V4_TIKTOKEN_PATTERN if self._fast else WHOLE_PIECE,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
        self._special_re = (
            regex.compile(
                "|".join(regex.escape(t.content) for t in sorted(self.added, key=lambda t: -len(t.content)))
            )
            if self.added
            else None
        )

    # ---------------------------------------------------------------------------------------- construction

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """A tokenizer.json, a .tiktoken ranks file, or a directory holding either (tokenizer.json first)."""
        p = Path(path)
        if p.is_dir():
            if (p / "tokenizer.json").is_file():
                return cls.from_tokenizer_json(p / "tokenizer.json")
            found = sorted(p.glob("*.tiktoken"))
            if found:
                return cls.from_tiktoken(found[0])
            raise TokenizerError(f"{p}: no tokenizer.json or *.tiktoken file")
        if p.suffix == ".tiktoken":
            return cls.from_tiktoken(p)
        return cls.from_tokenizer_json(p)

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> Tokenizer:
        """A HF tokenizer.json with byte-level BPE and isolated Split pre-tokenizers (V4's layout)."""
        return cls.from_parts(read_tokenizer_json(path))

    @classmethod
    def from_tiktoken(cls, path: str | Path, added: Iterable[AddedToken] = V4_ADDED_TOKENS) -> Tokenizer:
        """A `.tiktoken` file (base64 token, rank per line) with the V4 pre-tokenizer and added tokens."""
        return cls.from_parts(read_tiktoken(path, added))

    @classmethod
    def from_parts(cls, parts: BPEParts) -> Tokenizer:
        return cls(parts.merges, parts.vocab, parts.added, parts.splits, name=parts.name)

    # ---------------------------------------------------------------------------------------- encode

    def encode(self, text: str, *, allow_special: AllowSpecial = False) -> list[int]:
        """Token ids of `text`.

        Added-token text (`<｜User｜>`, `<think>`, ...) becomes its id only where allowed:
        `allow_special=True` or "all" for every added token (how a rendered V4 prompt is encoded), a set for
        some, False (default) to treat it as plain text, which is what untrusted text (tool output) must get.
        """
        allowed = self._allowed(allow_special)
        if self._fast:
            out = self._enc.encode(text, allowed_special=allowed, disallowed_special=())
        else:
            out = self._encode_generic(text, allowed)
        if self._rank_to_id is not None:
            table = self._rank_to_id
            return [table[r] for r in out]
        return out

    def _allowed(self, allow_special: AllowSpecial) -> set[str]:
        if allow_special is False or not self.added:
            return set()
        if allow_special is True or allow_special == "all":
            return set(self._added_by_content)
        allowed = set(allow_special)
        unknown = allowed - set(self._added_by_content)
        if unknown:
            raise TokenizerError(f"not added tokens of this tokenizer: {sorted(unknown)}")
        return allowed

    def encode_batch(
        self, texts: Sequence[str], *, allow_special: AllowSpecial = False, num_threads: int = 8
    ) -> list[list[int]]:
        """`encode` of each text; on the fast path tiktoken spreads the texts over threads (no GIL)."""
        if not self._fast or self._rank_to_id is not None:
            return [self.encode(t, allow_special=allow_special) for t in texts]
        allowed = self._allowed(allow_special)
        return self._enc.encode_batch(
            list(texts), num_threads=num_threads, allowed_special=allowed, disallowed_special=()
        )

    def _encode_generic(self, text: str, allowed: set[str]) -> list[int]:
        out: list[int] = []
        pos = 0
        if allowed and self._special_re is not None:
            for m in self._special_re.finditer(text):
                if m.group() not in allowed:
                    continue
                out += self._encode_ordinary_generic(text[pos : m.start()])
                out.append(self._enc.encode_single_token(m.group()))
                pos = m.end()
        out += self._encode_ordinary_generic(text[pos:])
        return out

    def _encode_ordinary_generic(self, text: str) -> list[int]:
        pieces = [text] if text else []
        for pat in self._split_res:
            pieces = split_isolated(pieces, pat)
        out: list[int] = []
        for piece in pieces:
            out += self._enc.encode_ordinary(piece)
        return out

    def pieces(self, text: str) -> list[str]:
        """The pre-tokenizer's pieces of ordinary text (BPE never merges across them): the reference split."""
        out = [text] if text else []
        for pat in self._split_res:
            out = split_isolated(out, pat)
        return out

    # ---------------------------------------------------------------------------------------- decode

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = False) -> bytes:
        table = self._id_to_bytes
        parts: list[bytes] = []
        for i in ids:
            b = table.get(i)
            if b is None:
                raise TokenizerError(f"id {i} is not in this tokenizer (vocab + added tokens)")
            if not (skip_special and i in self._special_ids):
                parts.append(b)
        return b"".join(parts)

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 (a model can emit it) becomes U+FFFD, as in HF and tiktoken."""
        return self.decode_bytes(ids, skip_special=skip_special).decode("utf-8", errors="replace")

    def stream_decoder(self, *, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special=skip_special)

    # ---------------------------------------------------------------------------------------- lookups

    def token_id(self, content: str) -> int:
        """Id of an added token (`<｜User｜>`) or of a single BPE token given as its text."""
        t = self._added_by_content.get(content)
        if t is not None:
            return t.id
        i = self.vocab.get(content.encode())
        if i is None:
            raise TokenizerError(f"{content!r} is neither an added token nor a single BPE token")
        return i

    def id_to_bytes(self, i: int) -> bytes:
        return self.decode_bytes([i])

    @property
    def bos_id(self) -> int:
        return self.token_id(BOS)

    @property
    def eos_id(self) -> int:
        return self.token_id(EOS)

    @property
    def n_vocab(self) -> int:
        """One past the largest id (the embedding needs at least this many rows)."""
        return max(self._id_to_bytes) + 1

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    # ---------------------------------------------------------------------------------------- save

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF tokenizer.json content (V4 layout) this tokenizer loads from."""
        return hf_dict(self.merges, self.vocab, self.added, self.splits)

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json + tokenizer_config.json (V4's flags) into `directory`; returns the json."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / "tokenizer.json"
        path.write_text(json.dumps(self.to_hf_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        config = tokenizer_config(self._added_by_content)
        (d / "tokenizer_config.json").write_text(
            json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        return path

    def save_tiktoken(self, path: str | Path) -> Path:
        """The BPE ranks as a `.tiktoken` file (added tokens are not part of that format)."""
        return write_tiktoken(self.vocab, path)


class StreamDecoder:
    """Incremental detokenizer: `push(ids)` returns the text that is complete so far.

    Bytes of a character split across tokens are held back until the character is whole, so every chunk is
    valid text and the chunks concatenate to `decode(all ids)` (after `flush()`).
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: int | Iterable[int]) -> str:
        data = self._tok.decode_bytes([ids] if isinstance(ids, int) else ids, skip_special=self._skip)
        return self._dec.decode(data)

    def flush(self) -> str:
        """End of stream: a dangling incomplete character becomes U+FFFD (as `decode` would give)."""
        return self._dec.decode(b"", final=True)

    @property
    def pending(self) -> bytes:
        """Bytes held back because they do not yet form a whole character."""
        return self._dec.getstate()[0]
