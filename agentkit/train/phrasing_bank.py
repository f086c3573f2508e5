"""The shape of a phrasing bank, apart from the composer (`phrasing`) and from the two banks
(`phrasing_train`, `phrasing_heldout`), so the banks and the composer that picks one import it without
importing each other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Bank:
    """One independent set of phrasings. Core templates end in `?` (a question) or in nothing (a command,
    lower case, no final stop); slots are `{name}` fields filled from the task's values."""

    name: str
    core: Mapping[str, tuple[str, ...]]
    """Shape -> sentences. A shape with a `kind` slot also draws from `core[f"{shape}_{kind}"]`."""
    expr: Mapping[str, tuple[str, ...]]
    """Arithmetic kind (add, sub, mul, div, addmul, mulsub) -> spoken forms over {a} {b} {c}."""
    command_wraps: tuple[str, ...]
    """Around a command `@`: "Please @.", "Can you @?"."""
    question_wraps: tuple[str, ...]
    """Around a question `@` (its `?` removed)."""
    before: tuple[str, ...]
    after: tuple[str, ...]
    in_folder: tuple[str, ...]
    """A file in a folder: over {name} and {folder}."""
    top_folder: tuple[str, ...]
    """The top of the workspace, for "how many files are in ..."."""
    some_folder: tuple[str, ...]
    """Another folder: over {folder}."""
    list_joins: tuple[str, ...] = (", ",)
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    quotes: tuple[tuple[str, str], ...] = ()
    """Quote pairs around names and codes (`("", "")` for none); empty: the composer's default set."""
    big_number_words: float = 0.0
    """Share of numbers 100-9999 written in words ("three hundred and twelve"); 0 draws nothing, so a
    bank without it composes exactly what it did before the field existed."""
    digit_groups: float = 0.0
    """Share of numbers >= 1000 written with thousands commas ("12,345"); 0 draws nothing."""

    def sentences(self) -> set[str]:
        """Every template string in the bank (for the disjointness test)."""
        out: set[str] = set()
        for group in (self.core, self.expr, self.extra):
            for texts in group.values():
                out.update(texts)
        for texts in (
            self.command_wraps,
            self.question_wraps,
            self.before,
            self.after,
            self.in_folder,
            self.top_folder,
            self.some_folder,
        ):
            out.update(texts)
        return out
