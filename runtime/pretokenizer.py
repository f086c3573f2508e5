r"""The V4 pre-tokenizer: how text is cut into pieces before BPE runs on each piece (spec §11).

V4 ships a HF `tokenizer.json` whose pre-tokenizer is a Sequence of three isolated `Split` regexes and then
ByteLevel. Each step re-splits every piece of the previous one. tiktoken runs one regex, so the three steps
are folded into one pattern (`V4_TIKTOKEN_PATTERN`) that splits every string exactly as the sequence does:
digit runs and CJK runs are hard boundaries for the third regex (its classes subtract them, and its `(?!\S)`
look-ahead treats them as the end of a piece), CJK runs are re-split the way the third regex splits them, and
a last alternative reproduces the gaps (characters no regex matches) that an isolated Split keeps as pieces.
A file with any other Split sequence still loads: its Splits run in Python (`split_isolated`) and only the
BPE runs in tiktoken (correct, slower). Tests check pieces and ids against HF `tokenizers`.

Known limit: regex engines carry different Unicode versions, so characters assigned in recent Unicode
versions may be classified differently here and in HF (the tests use characters assigned by Unicode 14).
"""

from __future__ import annotations

from collections.abc import Sequence

import regex

__all__ = [
    "V4_SPLIT_PATTERNS",
    "V4_TIKTOKEN_PATTERN",
    "WHOLE_PIECE",
    "is_v4_splits",
    "split_isolated",
]

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

WHOLE_PIECE = r"(?s:.+)"
"""tiktoken's pattern for the generic path, where Python has already split the text: BPE only."""


def _canonical(pattern: str) -> str:
    """Spell control characters as escapes. Tokenizer files write CR/LF in regex classes either as the
    two-character escapes or as the characters themselves (a JSON escape); a regex reads both the same."""
    return pattern.replace("\r", r"\r").replace("\n", r"\n").replace("\t", r"\t")


def is_v4_splits(splits: Sequence[str]) -> bool:
    """Whether a Split sequence is V4's, which `V4_TIKTOKEN_PATTERN` reproduces in one regex."""
    return tuple(map(_canonical, splits)) == V4_SPLIT_PATTERNS


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
