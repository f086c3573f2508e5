"""The vocabulary every family's script is written in: calls, steps, the final answer, the draft.

A family returns a `Draft`: the user task, the workspace files, the tools to offer, and a generator
script. The script yields one `Step` (reasoning + tool calls) at a time and is sent back the *real*
tool results, so the assistant's later reasoning quotes exactly what the tools said; it ends with a
`Final` whose answer the driver (`agentkit.train.episodes`) checks against the answer computed from the
ground truth.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Step:
    reasoning: str
    calls: list[Call]
    content: str = ""
    loss: bool = True
    """False for a deliberate mistake the episode recovers from: shown in context, never trained on."""


@dataclass(frozen=True)
class Final:
    reasoning: str
    answer: str


Script = Generator[Step | Final, list[str], None]


@dataclass
class Draft:
    family: str
    task: str
    answer: str
    tools: list[str]
    script: Callable[[], Script]
    files: dict[str, str] = field(default_factory=dict)


def pick(rng: random.Random, options: list[str]) -> str:
    return options[rng.randrange(len(options))]


def say(rng: random.Random, p: Any, options: list[str], shape: str, **slots: Any) -> str:
    """The task text: one of the family's own `options` (drawn from `rng` as `pick` does, always, so the
    episode's other draws never change), reworded by the pools' phrasing when there is one."""
    text = pick(rng, options)
    return text if p.phrasing is None else str(p.phrasing.say(text, shape, slots))
