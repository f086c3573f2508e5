r"""The DeepSeek-V4 tokenizer on tiktoken: byte-level BPE, V4 pre-tokenizer, V4 added tokens (spec §11).

V4 ships a HF `tokenizer.json` whose pre-tokenizer is a Sequence of three isolated `Split` regexes and then
ByteLevel. Each step re-splits every piece of the previous one. tiktoken runs one regex, so the three steps
are folded into one pattern that splits every string exactly as the sequence does: digit runs and CJK runs
are hard boundaries for the third regex (its classes subtract them, and its `(?!\S)` look-ahead treats them
as the end of a piece), CJK runs are re-split the way the third regex splits them, and a last alternative
reproduces the gaps (characters no regex matches) that an isolated Split keeps as pieces. A file with any
other Split sequence still loads: its Splits run in Python and only the BPE runs in tiktoken (correct,
slower). Tests check pieces and ids against HF `tokenizers`.

Known limit: regex engines carry different Unicode versions, so characters assigned in recent Unicode
versions may be classified differently here and in HF (the tests use characters assigned by Unicode 14).

Decoding works on bytes: a character split across tokens decodes whole, and `StreamDecoder` holds back an
incomplete UTF-8 tail so a token stream never yields broken text.
"""

from __future__ import annotations

import base64
import codecs
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import regex
import tiktoken

from agentkit.dsml.tokens import BOS, EOS

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
]


@dataclass(frozen=True)
class AddedToken:
    """A token matched as a whole in text (never split by BPE); `special` ones go with skip_special."""

    content: str
    id: int
    special: bool = False


# Spec §11, ids verified for V4 (only BOS/EOS carry the `special` flag, so skip_special keeps chat tokens).
V4_ADDED_TOKENS: tuple[AddedToken, ...] = (
    AddedToken(BOS, 0, True),
    AddedToken(EOS, 1, True),
    AddedToken("<｜User｜>", 128803),
    AddedToken("<｜Assistant｜>", 128804),
    AddedToken("<think>", 128821),
    AddedToken("</think>", 128822),
    AddedToken("｜DSML｜", 128825),
    AddedToken("<｜latest_reminder｜>", 128828),
    AddedToken("<｜action｜>", 128829),
    AddedToken("<｜query｜>", 128830),
    AddedToken("<｜authority｜>", 128831),
    AddedToken("<｜domain｜>", 128832),
    AddedToken("<｜title｜>", 128836),
    AddedToken("<｜read_url｜>", 128845),
    AddedToken("<｜image｜>", 129279),
)

V4_SPLIT_PATTERNS: tuple[str, ...] = (
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)

_CJK = "一-龥぀-ゟ゠-ヿ"
# Characters of the first two steps: the third step sees them only inside their own pieces.
_EARLY = rf"\p{{N}}{_CJK}"
_LM = rf"[\p{{L}}\p{{M}}--[{_CJK}]]"
V4_TIKTOKEN_PATTERN = "|".join(
    (
        # step 1 pieces (the third step finds nothing to split in a digit run)
        r"\p{N}{1,3}",
        # step 2 pieces, as the third step re-splits them (kana marks and middle dots are P/S/M, not L)
        rf"[[{_CJK}]&&[^\p{{L}}\p{{P}}\p{{S}}]]?[[{_CJK}]&&[\p{{L}}\p{{M}}]]+",
        rf"[[{_CJK}]&&[\p{{P}}\p{{S}}]]+",
        rf"(?:[[{_CJK}]&&[^\p{{L}}\p{{M}}\p{{P}}\p{{S}}]](?![[{_CJK}]&&[\p{{L}}\p{{M}}]]))+",
        # step 3 on everything else: its classes never reach into digit or CJK characters, and a digit or
        # CJK character counts as the end of the piece for the (?!\S) look-ahead
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+",
        rf"[^\r\n\p{{L}}\p{{P}}\p{{S}}{_EARLY}]?{_LM}+",
        rf" ?[\p{{P}}\p{{S}}--[{_CJK}]]+[\r\n]*",
        r"\s*[\r\n]+",
        rf"\s+(?![^\s{_EARLY}])",
        r"\s+",
        # gaps: runs of characters where none of the third step's alternatives can start
        rf"(?:[^\s\p{{L}}\p{{M}}\p{{P}}\p{{S}}{_EARLY}](?!{_LM}))+",
    )
)
# BPE only, for the generic path where Python has already split the text into pieces.
_WHOLE_PIECE = r"(?s:.+)"


class TokenizerError(ValueError):
    """A tokenizer file, an id or an argument that this tokenizer cannot represent."""


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


def _canonical(pattern: str) -> str:
    """Spell control characters as escapes. Tokenizer files write CR/LF in regex classes either as the
    two-character escapes or as the characters themselves (a JSON escape); a regex reads both the same."""
    return pattern.replace("\r", r"\r").replace("\n", r"\n").replace("\t", r"\t")


def split_isolated(pieces: list[str], pattern: regex.Pattern[str]) -> list[str]:
    """HF `Split(behavior=Isolated)`: every match and every gap between matches becomes its own piece."""
    out: list[str] = []
    for piece in pieces:
        pos = 0
        for m in pattern.finditer(piece):
            if m.start() > pos:
                out.append(piece[pos : m.start()])
            if m.end() > m.start():
                out.append(m.group())
            pos = m.end()
        if pos < len(piece):
            out.append(piece[pos:])
    return out


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
        self._fast = self._allow_fast and tuple(map(_canonical, self.splits)) == V4_SPLIT_PATTERNS
        self._split_res = [regex.compile(p) for p in self.splits]
        self._enc = tiktoken.Encoding(
            self.name,
            pat_str=V4_TIKTOKEN_PATTERN if self._fast else _WHOLE_PIECE,
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
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer file not found: {p}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{p}: not valid JSON: {e}") from e
        try:
            return cls._from_hf_dict(data, str(p))
        except TokenizerError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, regex.error) as e:
            raise TokenizerError(f"{p}: unsupported or malformed tokenizer.json: {e!r}") from e

    @classmethod
    def _from_hf_dict(cls, data: dict[str, Any], where: str) -> Tokenizer:
        model = data["model"]
        if model.get("type") != "BPE":
            raise TokenizerError(f"{where}: model type {model.get('type')!r} is not BPE")
        if model.get("byte_fallback") or model.get("ignore_merges") or model.get("dropout"):
            raise TokenizerError(f"{where}: byte_fallback / ignore_merges / dropout BPE is not supported")
        norm = data.get("normalizer")
        if norm and not (norm.get("type") == "Sequence" and not norm.get("normalizers")):
            raise TokenizerError(f"{where}: normalizer {norm.get('type')!r} is not supported")
        added = [
            AddedToken(t["content"], int(t["id"]), bool(t.get("special", False)))
            for t in data["added_tokens"]
        ]
        added_contents = {t.content for t in added}
        vocab = {_unsym(s, where): int(i) for s, i in model["vocab"].items() if s not in added_contents}
        merges: list[tuple[bytes, bytes]] = []
        for m in model["merges"]:
            a, b = m.split(" ") if isinstance(m, str) else m
            merges.append((_unsym(a, where), _unsym(b, where)))
        return cls(merges, vocab, added, _splits_of(data.get("pre_tokenizer"), where), name=Path(where).stem)

    @classmethod
    def from_tiktoken(cls, path: str | Path, added: Iterable[AddedToken] = V4_ADDED_TOKENS) -> Tokenizer:
        """A `.tiktoken` file (base64 token, rank per line) with the V4 pre-tokenizer and added tokens.

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
        return cls(_merges_from_ranks(ranks), ranks, added, name=p.stem)

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
        vocab = {_sym(t): i for t, i in sorted(self.vocab.items(), key=lambda kv: kv[1])}
        for t in self.added:
            if t.id < max(
                self.vocab.values()
            ):  # like the DeepSeek files, low added ids also sit in the vocab
                vocab[t.content] = t.id
        pre = [
            {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False}
            for p in self.splits
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
                for t in self.added
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
                "vocab": vocab,
                "merges": [f"{_sym(a)} {_sym(b)}" for a, b in self.merges],
            },
        }

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json + tokenizer_config.json (V4's flags) into `directory`; returns the json."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / "tokenizer.json"
        path.write_text(json.dumps(self.to_hf_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        config = {
            "add_bos_token": False,
            "add_eos_token": False,
            "legacy": True,
            "bos_token": BOS if BOS in self._added_by_content else None,
            "eos_token": EOS if EOS in self._added_by_content else None,
            "pad_token": EOS if EOS in self._added_by_content else None,
            "unk_token": None,
            "model_max_length": 1048576,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
        }
        (d / "tokenizer_config.json").write_text(
            json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        return path

    def save_tiktoken(self, path: str | Path) -> Path:
        """The BPE ranks as a `.tiktoken` file (added tokens are not part of that format)."""
        p = Path(path)
        lines = [
            f"{base64.b64encode(t).decode()} {i}" for t, i in sorted(self.vocab.items(), key=lambda kv: kv[1])
        ]
        p.write_text("\n".join(lines) + "\n", encoding="ascii")
        return p


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
