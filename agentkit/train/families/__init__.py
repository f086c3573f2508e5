"""The episode families: each one plans a task and scripts the assistant's side of solving it.

A family returns a `Draft` whose script yields `Step`s, is sent back the real tool results, and ends with a
`Final` (the vocabulary is `script`). Reasoning is short and formulaic on purpose: the model that learns
it has a few million parameters.

The families are grouped by kind: `arithmetic` (the number tools), `workspace` (files) and `patterns` (no
tool, a corrected error, parallel calls). `FAMILIES` below is the registry the generator draws from; its
order and weights decide which family each episode index gets, so reordering it changes every generated
episode.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from agentkit.train.families.arithmetic import calc_family, choose_family
from agentkit.train.families.patterns import direct_family, error_family, parallel_family
from agentkit.train.families.script import Call, Draft, Final, Script, Step
from agentkit.train.families.workspace import chain_family, csv_family, file_family
from agentkit.train.vocab import Pools

__all__ = ["FAMILIES", "Call", "Draft", "Final", "Script", "Step"]

FAMILIES: dict[str, tuple[Callable[[random.Random, Pools], Draft], float]] = {
    "calc": (calc_family, 1.5),
    "file": (file_family, 2.0),
    "csv": (csv_family, 1.0),
    "chain": (chain_family, 1.0),
    "choose": (choose_family, 1.0),
    "direct": (direct_family, 0.8),
    "error": (error_family, 0.8),
    "parallel": (parallel_family, 1.0),
}
