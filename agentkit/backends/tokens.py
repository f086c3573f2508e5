"""Transcript text to token ids for the in-process backends: which tokenizer a checkpoint carries, how
trusted and untrusted text are encoded (special tokens only in framework-written text), and how a
transcript's consecutive segments are tokenized as one text so ids match what a server would produce."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from agentkit.backends.base import ModelError
from agentkit.messages import Segment


class Tokenizer(Protocol):
    """What the backend needs: `encode` (with `allow_special=`, like the runtime's tokenizer, or an
    `encode_ordinary` for plain text) and `decode`."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def text_encoder(tok: Any) -> Callable[[str, bool], list[int]]:
    """encode(text, trusted): special tokens are recognised only in trusted (framework-written) text."""
    try:
        params = inspect.signature(tok.encode).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "allow_special" in params:
        return lambda text, trusted: list(tok.encode(text, allow_special=trusted))
    plain = getattr(tok, "encode_ordinary", None)
    if plain is not None:
        return lambda text, trusted: list(tok.encode(text) if trusted else plain(text))
    return lambda text, trusted: list(tok.encode(text))


def encode_segments(tok: Any, segments: Sequence[Segment]) -> list[list[int]]:
    """Ids for consecutive transcript segments, one list per segment, tokenized as the text they form
    together rather than piece by piece.

    Why: a V4 server (and our training data) tokenizes the rendered prompt in one piece, so where
    framework text meets tool output BPE merges across the seam (`<tool_result>./records` holds the
    token `>./`); encoding the pieces apart gave the embedded backend other ids than the model was
    trained on, and agentkit-tiny copied paths out of tool results wrongly in the real loop only.
    Special tokens are still recognised only in trusted text: untrusted text joins the plain run it
    sits in. A token goes to the segment holding its first byte, so a segment may get no ids.
    Tokenizers without `added` / `id_to_bytes` (the runtime's have both) are encoded per segment.
    """
    enc = text_encoder(tok)
    added = getattr(tok, "added", None)
    if not added or not hasattr(tok, "id_to_bytes"):
        return [enc(seg.text, seg.trusted) for seg in segments]
    specials = {t.content: t.id for t in added}
    split = re.compile("(" + "|".join(re.escape(c) for c in sorted(specials, key=len, reverse=True)) + ")")
    out: list[list[int]] = [[] for _ in segments]
    run: list[tuple[int, str]] = []  # (segment index, plain text) pieces of the current plain run

    def flush() -> None:
        if not run:
            return
        ids = list(tok.encode("".join(t for _, t in run), allow_special=False))
        bounds, total = [], 0  # byte offset at which each piece ends
        for _, t in run:
            total += len(t.encode("utf-8"))
            bounds.append(total)
        pos = piece = 0
        for i in ids:
            while piece < len(run) - 1 and pos >= bounds[piece]:
                piece += 1
            out[run[piece][0]].append(i)
            pos += len(tok.id_to_bytes(i))
        run.clear()

    for k, seg in enumerate(segments):
        parts = split.split(seg.text) if seg.trusted else [seg.text]
        for j, part in enumerate(parts):
            if j % 2:  # a special token (only trusted text is split)
                flush()
                out[k].append(specials[part])
            elif part:
                run.append((k, part))
    flush()
    return out


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer stored with a checkpoint (tokenizer.json or *.tiktoken), via the runtime's loader."""
    from agentkit.runtime.tokenizer import Tokenizer as RuntimeTokenizer

    try:
        return RuntimeTokenizer.from_file(directory)
    except Exception as exc:
        raise ModelError(f"cannot load a tokenizer from {directory}: {exc}") from exc


__all__ = ["Tokenizer", "encode_segments", "load_tokenizer", "text_encoder"]
