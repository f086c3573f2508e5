"""`parse_completion`: one entry point for strict and tolerant parsing of a whole completion."""

from __future__ import annotations

from .errors import DSMLParseError
from .models import AssistantMessage
from .strict import parse_strict


def parse_completion(text: str, thinking_mode: str, *, strict: bool = True) -> AssistantMessage:
    """Parse the text generated after the prompt (including the final EOS, if any).

    strict=True accepts exactly DeepSeek's reference grammar (see `strict.py`) and raises
    `DSMLParseError` otherwise. strict=False repairs the malformed variants seen in real V4 output and
    reports what it did in `warnings`; it is the stream parser fed the whole text, so streaming and
    whole-text parsing can never disagree.
    """
    if not isinstance(text, str):
        raise DSMLParseError(f"completion must be str, got {type(text).__name__}", 0)
    if thinking_mode not in ("chat", "thinking"):
        raise DSMLParseError(f"thinking_mode must be 'chat' or 'thinking', got {thinking_mode!r}", 0)
    if strict:
        return parse_strict(text, thinking_mode)
    from .stream import StreamParser

    parser = StreamParser(thinking_mode, strict=False)
    parser.feed(text)
    parser.close()
    return parser.result()
