"""Name and value pools for synthetic episodes, split so held-out episodes use nothing seen in training.

Names come from disjoint word lists per split. Numbers are split by a fixed multiplicative hash
rather than by range: a held-out *value* never occurs in training, yet its digits tokenize into the
same 1-3 digit pieces the model has learned to read and copy (a range split would hand the model
untrained digit tokens, which measures the tokenizer, not the agent).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")

_WORDS: dict[str, tuple[str, str]] = {
    # kind: (train words, held-out words), space separated
    "noun": (
        "apple river stone cloud garden harbor lantern meadow orbit pepper quartz rocket saddle tiger "
        "violet willow anchor badge cedar dragon ember falcon glacier hammer island jungle kettle lemon "
        "marble nectar oyster pebble quiver ribbon summit tunnel velvet walnut yonder zenith beacon "
        "canyon dune feather grove hollow ivory jasper kiosk ladder mosaic nugget otter parrot",
        "acorn bison cobalt dahlia egret fjord gazelle heron igloo juniper koala lagoon mango nomad "
        "opal puffin quokka raven sequoia tundra umber vortex wombat yarrow zephyr",
    ),
    "adj": (
        "red blue green quick calm bright dark early late small large quiet loud sharp soft warm cold "
        "fresh plain rapid smooth steady tidy wild brave clever gentle humble lucky merry noble proud",
        "amber crisp dusty eager fuzzy golden hazy icy jolly keen lofty misty nimble oaken polar rusty",
    ),
    "person": (
        "Alice Bruno Clara Diego Elena Farid Greta Hiro Irene Jonas Kavya Liam Maya Nikos Olga Pavel "
        "Quinn Rosa Samir Tara Umar Vera Wen Xavier Yara Zane Ada Boris Chloe Dmitri",
        "Amara Bastian Cosima Dario Esme Florin Ginevra Hamid Ilse Joaquin Kenji Leonie Matteo Noor",
    ),
    "city": (
        "Lisbon Oslo Nairobi Lima Hanoi Quito Dublin Perth Tunis Riga Porto Cusco Bergen Malmo Graz "
        "Kyoto Leeds Turin Gdansk Bilbao",
        "Accra Tartu Hobart Split Zagreb Aarhus Cork Durban Oaxaca Sapporo",
    ),
    "item": (
        "bolts nails gears cables lamps chairs tables pens notebooks cups plates brushes screws tiles "
        "boxes ropes bottles candles hats gloves",
        "valves hinges rivets spools flasks kettles mugs buckets ladles sieves",
    ),
    "ext": ("txt md log cfg", "txt md log cfg"),
    "dir": ("docs data notes reports archive logs inbox src", "vault stash ledger records cache misc"),
}


@dataclass(frozen=True)
class Pools:
    """Everything one split may draw from; build with `pools(split)`."""

    split: Split
    noun: tuple[str, ...]
    adj: tuple[str, ...]
    person: tuple[str, ...]
    city: tuple[str, ...]
    item: tuple[str, ...]
    ext: tuple[str, ...]
    dir: tuple[str, ...]

    def owns(self, n: int) -> bool:
        return split_of_number(n) == self.split

    def number(self, rng: random.Random, lo: int, hi: int) -> int:
        """A uniform integer in [lo, hi] that belongs to this split (rejection sampling)."""
        if hi - lo < 20:
            raise ValueError(f"range [{lo}, {hi}] too small to hold values of both splits reliably")
        while True:
            n = rng.randint(lo, hi)
            if self.owns(n):
                return n

    def filename(self, rng: random.Random, ext: str | None = None) -> str:
        stem = f"{rng.choice(self.adj)}_{rng.choice(self.noun)}"
        return f"{stem}.{ext or rng.choice(self.ext)}"


def split_of_number(n: int) -> Split:
    """Fixed hash partition of the integers: about one in five belongs to the held-out split."""
    return "heldout" if ((abs(n) * 2654435761) & 0xFFFFFFFF) % 5 == 0 else "train"


def pools(split: Split) -> Pools:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    i = SPLITS.index(split)
    fields = {kind: tuple(words[i].split()) for kind, words in _WORDS.items()}
    return Pools(split=split, **fields)
