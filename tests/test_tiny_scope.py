"""agentkit-tiny's scope check: its shapes are the generator's, its measured rates are the model card's.

The check (`agentkit.tiny.scope`) restates the episode templates by hand so the CLI needs no training
code; these tests hold it to the generator: every shape the generator drafts is one of its ten, the
rates in `scope-eval.json` and the model card are what `agentkit.train.scope_eval` measures now, the
demo's tasks and each shape's own example are in scope, and ordinary requests are not.
"""

from __future__ import annotations

import json

import pytest
from agentkit.runtime.checkpoint import shipped_checkpoint

from agentkit.tiny.scope import SHAPES, check_scope
from agentkit.tiny.tasks import DEMO_TASKS, load_tasks
from agentkit.train import scope_eval


@pytest.fixture(scope="module")
def measured() -> dict[str, object]:
    return scope_eval.evaluate()


def test_the_ten_shapes_are_the_generators_families(measured: dict[str, object]) -> None:
    assert len(SHAPES) == 10
    assert sorted(measured["by_shape"]) == sorted(s.name for s in SHAPES)  # type: ignore[arg-type]
    assert measured["in_shape"] == 200 and measured["out_of_shape"] == 200


def test_the_model_card_reports_the_rates_measured_now(measured: dict[str, object]) -> None:
    root = shipped_checkpoint("tiny")
    assert root is not None
    recorded = json.loads((root / "scope-eval.json").read_text(encoding="utf-8"))
    assert recorded == measured  # rerun `python -m agentkit.train.scope_eval --write` after a change
    card = (root / "README.md").read_text(encoding="utf-8")
    fn, fp = measured["false_negative_rate"], measured["false_positive_rate"]
    assert f"false negatives **{fn:.1%}**" in card and f"false positives **{fp:.1%}**" in card


def test_each_shapes_example_and_every_demo_task_is_in_scope() -> None:
    for shape in SHAPES:
        verdict = check_scope(shape.example)
        assert verdict.in_scope and verdict.shape == shape.name, shape.example
        assert verdict.tools == shape.tools
    for task in load_tasks(DEMO_TASKS):
        assert check_scope(task.prompt, task.tools).in_scope, task.prompt


@pytest.mark.parametrize(
    ("task", "tools", "why"),
    [
        ("summarize README.md", None, "matches none"),
        ("what is 17*23?", None, "matches none"),
        ("Please calculate the product of 417 and 36", None, "matches none"),  # no final period
        ("What is 417 * 36?", ["shell", "python"], "learned that shape with the tools calculator"),
    ],
)
def test_refusals_say_why(task: str, tools: list[str] | None, why: str) -> None:
    verdict = check_scope(task, tools)
    assert not verdict.in_scope and why in verdict.reason


def test_the_issues_in_shape_example_gets_the_shapes_toolbox() -> None:
    verdict = check_scope("Please calculate the product of 417 and 36.")
    assert verdict.in_scope and verdict.shape == "calc" and verdict.tools == ("calculator",)


@pytest.mark.parametrize(
    ("task", "spelling"),
    [
        ("what is 17*23?", "What is 17 * 23?"),
        ("Please calculate the product of 417 and 36", "Please calculate the product of 417 and 36."),
        # the dates keep their dashes (no spaces around them as if they were minus signs)
        (
            "how many days are there from 2024-01-01 to 2024-02-01",
            "How many days are there from 2024-01-01 to 2024-02-01?",
        ),
        ("summarize README.md", None),
        ("What is 17 * 23?", None),  # already in scope: nothing to suggest
    ],
)
def test_a_near_miss_gets_the_trained_spelling_suggested(task: str, spelling: str | None) -> None:
    from agentkit.tiny.scope import suggest

    got = suggest(task)
    assert got == spelling
    if got is not None:
        assert check_scope(got).in_scope


def test_the_recorded_near_miss_runs_are_of_todays_suggestions() -> None:
    # scope-near-misses.json comes from running the model (a minute of CPU, not in CI); it must still be
    # about the tasks and spellings the check suggests today, and the card must quote its numbers
    from agentkit.tiny.scope import suggest

    root = shipped_checkpoint("tiny")
    assert root is not None
    recorded = json.loads((root / "scope-near-misses.json").read_text(encoding="utf-8"))
    today = [(t, suggest(t)) for t in scope_eval.out_of_shape_tasks() if suggest(t) is not None]
    assert [(r["task"], r["suggested"]) for r in recorded["rows"]] == today
    n, written, suggested = recorded["tasks"], recorded["right_as_written"], recorded["right_as_suggested"]
    card = (root / "README.md").read_text(encoding="utf-8")
    assert f"answers {written} of {n} right" in card and f"as suggested, {suggested} of {n} right" in card
