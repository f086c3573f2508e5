"""DeepSeek-V4's added tokens: their strings and ids (spec §11).

The runtime may import nothing from the agent layer, yet the tokenizer and the DSML codec must agree on
every special string, so the strings live here and `agentkit.dsml.tokens` re-exports them (the agent layer
reads them there). This module imports nothing heavy: the codec imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ASSISTANT",
    "BOS",
    "DSML",
    "EOS",
    "IMAGE",
    "LATEST_REMINDER",
    "TASK_TOKENS",
    "THINK_END",
    "THINK_START",
    "USER",
    "V4_ADDED_TOKENS",
    "AddedToken",
]

BOS: Final = "<｜begin▁of▁sentence｜>"
EOS: Final = "<｜end▁of▁sentence｜>"
USER: Final = "<｜User｜>"
ASSISTANT: Final = "<｜Assistant｜>"
THINK_START: Final = "<think>"
THINK_END: Final = "</think>"
DSML: Final = "｜DSML｜"
LATEST_REMINDER: Final = "<｜latest_reminder｜>"
IMAGE: Final = "<｜image｜>"

TASK_TOKENS: Final[dict[str, str]] = {
    "action": "<｜action｜>",
    "query": "<｜query｜>",
    "authority": "<｜authority｜>",
    "domain": "<｜domain｜>",
    "title": "<｜title｜>",
    "read_url": "<｜read_url｜>",
}


@dataclass(frozen=True)
class AddedToken:
    """A token matched as a whole in text (never split by BPE); `special` ones go with skip_special."""

    content: str
    id: int
    special: bool = False


# Ids verified for V4; only BOS/EOS carry the `special` flag, so skip_special keeps the chat tokens.
V4_ADDED_TOKENS: tuple[AddedToken, ...] = (
    AddedToken(BOS, 0, True),
    AddedToken(EOS, 1, True),
    AddedToken(USER, 128803),
    AddedToken(ASSISTANT, 128804),
    AddedToken(THINK_START, 128821),
    AddedToken(THINK_END, 128822),
    AddedToken(DSML, 128825),
    AddedToken(LATEST_REMINDER, 128828),
    AddedToken(TASK_TOKENS["action"], 128829),
    AddedToken(TASK_TOKENS["query"], 128830),
    AddedToken(TASK_TOKENS["authority"], 128831),
    AddedToken(TASK_TOKENS["domain"], 128832),
    AddedToken(TASK_TOKENS["title"], 128836),
    AddedToken(TASK_TOKENS["read_url"], 128845),
    AddedToken(IMAGE, 129279),
)
