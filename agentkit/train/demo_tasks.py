"""Writes the demo's tasks (`agentkit/tiny/demo_tasks.json`) from the episode generator's held-out split.

`agentkit demo` runs one held-out episode per family, at indices the evaluation never uses, so a model
trained on the generator has never seen their names or values. The demo reads them as data so that the
CLI never imports the generator; this module is the one place that knows which episodes they are and
writes the file. A test checks the file still equals what the generator makes, so a generator change that
alters them fails there until the file is written again on purpose:

    python -m agentkit.train.demo_tasks
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from agentkit.tiny.tasks import DEMO_TASKS, save_tasks
from agentkit.train.episodes import Episode, generate_async

DEMO_FAMILIES = ("calc", "file", "csv", "chain", "choose", "parallel", "error", "direct")
DEMO_SEED = 0
DEMO_START = 1_000_000
"""Held-out indices from here on are demo tasks; `eval_tiny` uses 0..N."""


async def demo_episodes() -> list[Episode]:
    """The demo's tasks as full episodes (reference transcript included): one per family, always the same."""
    episodes: list[Episode] = []
    for i, family in enumerate(DEMO_FAMILIES):
        episodes += await generate_async(
            1, split="heldout", seed=DEMO_SEED, start=DEMO_START + i, family=family
        )
    return episodes


def write(path: str | Path = DEMO_TASKS) -> None:
    episodes = anyio.run(demo_episodes)
    save_tasks(
        [e.as_task() for e in episodes],
        path,
        about=(
            "agentkit demo's tasks: held-out episodes of agentkit.train.episodes, one per family; "
            "written by `python -m agentkit.train.demo_tasks`, do not edit by hand"
        ),
        split="heldout",
        seed=DEMO_SEED,
        start=DEMO_START,
        families=list(DEMO_FAMILIES),
    )


if __name__ == "__main__":
    write(sys.argv[1] if len(sys.argv) > 1 else DEMO_TASKS)
    print(f"wrote {sys.argv[1] if len(sys.argv) > 1 else DEMO_TASKS}")
