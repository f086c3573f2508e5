"""`agentkit demo` and `agentkit run`, as a user types them (the CLI entry point, output captured).

The plain demo runs the shipped agentkit-tiny and must solve every task. The other tests drive the same
path with a micro model forced to write the reference turns, and `run` with a scripted model, so they
check the commands' plumbing (task set-up, real sandboxes, the embedded backend, rendering, exit codes)
independently of how well the shipped model does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import anyio
import pytest
import torch
from _forcing import forcer, reference_turns
from rich.console import Console

from agentkit import cli, demo
from agentkit.backends.embedded import EmbeddedModel
from agentkit.backends.scripted import scripted_turn
from agentkit.tiny.tasks import Task
from agentkit.train.bpe import train_bpe
from agentkit.train.demo_tasks import DEMO_FAMILIES, demo_episodes
from agentkit.train.episodes import Episode
from agentkit.train.trainer import build_model, micro_config


@pytest.mark.docker
def test_plain_demo_runs_the_shipped_model_and_solves_every_task(capsys: pytest.CaptureFixture[str]) -> None:
    # The README's main command: the shipped agentkit-tiny on every demo task, each in a real container.
    # A task the shipped model fails makes the demo exit 1, and this test with it.
    rc = cli.main(["demo", "--sandbox", "docker"])
    out = capsys.readouterr().out
    assert "model: embedded:tiny" in out
    ok = len(re.findall(r"^ok  \d+ steps,", out, re.M))
    failed = len(re.findall(r"^(FAILED|wrong) \(", out, re.M))
    assert (ok, failed) == (len(demo.demo_tasks()), 0), out[-4000:]
    assert rc == 0
    assert "tasks failed" not in out


def test_demo_without_the_shipped_checkpoint_says_so_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a broken install (the package data removed): a clear message, no traceback, exit code 2
    from agentkit.runtime import checkpoint

    monkeypatch.delenv("AGENTKIT_MODEL", raising=False)
    monkeypatch.setattr(checkpoint, "shipped_checkpoint", lambda name: None)
    for argv in (["demo"], ["run", "What is 20 + 22?"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "agentkit-tiny checkpoint is missing" in err and "Traceback" not in err


def test_the_shipped_demo_tasks_are_the_generators_heldout_episodes() -> None:
    # The demo reads its tasks from package data so the CLI needs no training code; they must still be
    # exactly what the generator makes (`python -m agentkit.train.demo_tasks` writes them again).
    episodes = anyio.run(demo_episodes)
    assert [e.family.split("_")[0] for e in episodes] == list(DEMO_FAMILIES)
    assert demo.demo_tasks() == [e.as_task() for e in episodes]


def _forced_micro_model(episodes: list[Episode]) -> EmbeddedModel:
    """A micro model that can only write the episodes' reference turns: the demo's plumbing, not skill."""
    tok = train_bpe([e.text for e in episodes], 300)
    model = build_model(micro_config(tok.vocab_size), 0, torch.device("cpu"))
    force = forcer(reference_turns(tok.encode, episodes))
    return EmbeddedModel(model=model, tokenizer=tok, logits_processor=force, max_tokens=400)


@pytest.mark.docker
def test_demo_runs_an_embedded_model_on_its_tasks_in_real_sandboxes() -> None:
    # A micro model forced to write each demo task's reference turns (from the generator, which the
    # shipped tasks equal): the demo's whole path (the tasks, one fresh Docker sandbox per task with its
    # files, the embedded backend, rendering, the verdicts) without depending on how well a trained model
    # does.
    episodes = anyio.run(demo_episodes)
    backend = _forced_micro_model(episodes)
    buf = io.StringIO()
    console = Console(file=buf, width=120)
    rc = anyio.run(demo.run_demo, console, backend, "docker")
    out = buf.getvalue()
    assert rc == 0, out[-4000:]
    for e in episodes:
        assert f"{e.family} task · sandbox DockerSandbox" in out
        assert f"The answer is {e.answer}." in out
    assert "tasks failed" not in out


@pytest.mark.bwrap
def test_a_failed_demo_task_is_reported_and_makes_the_exit_code_1(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same forced micro model, but the demo expects another answer for its third task: that task
    # (and only it) is wrong, the summary counts it, and the exit code is 1.
    episodes = anyio.run(demo_episodes)
    backend = _forced_micro_model(episodes)
    tasks = demo.demo_tasks()
    wrong = [dataclasses.replace(t, answer=t.answer + "0") if i == 2 else t for i, t in enumerate(tasks)]

    def wrong_tasks() -> list[Task]:
        return wrong

    monkeypatch.setattr(demo, "demo_tasks", wrong_tasks)
    buf = io.StringIO()
    rc = anyio.run(demo.run_demo, Console(file=buf, width=120), backend, "bwrap")
    out = buf.getvalue()
    assert rc == 1, out[-4000:]
    assert len(re.findall(r"^wrong \(expected The answer is \S+0\.\)", out, re.M)) == 1
    assert len(re.findall(r"^ok  \d+ steps,", out, re.M)) == len(episodes) - 1
    assert f"1 of {len(episodes)} tasks failed" in out


def test_demo_with_an_unloadable_model_says_why_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["demo", "--model", f"embedded:{tmp_path / 'nope'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no checkpoint folder at" in err and "Traceback" not in err


@pytest.mark.bwrap
def test_run_streams_a_task_with_real_tools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "turns.json"
    script.write_text(
        json.dumps(
            [
                scripted_turn("Use the calculator.", calls=[("calculator", {"expression": "12 * (3 + 4)"})]),
                scripted_turn("It said 84.", "The answer is 84."),
            ]
        ),
        encoding="utf-8",
    )
    argv = ["run", "What is 12 * (3 + 4)?", "--model", f"scripted:{script}", "--sandbox", "bwrap"]
    rc = cli.main([*argv, "--tools", "calculator,shell"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"^answered  2 steps", out, re.M)  # no expected answer: no verdict, only "answered"
    assert 'call calculator(expression="12 * (3 + 4)")' in out
    assert "result calculator: 84" in out
    assert "The answer is 84." in out


def test_run_with_an_unknown_tool_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["run", "What is 2 + 2?", "--tools", "calculator,teleport", "--model", "scripted"])
    err = capsys.readouterr().err
    assert rc == 2
    known = err.split("known:")[1]
    assert "unknown tools: teleport" in err and "calculator" in known and "browser" in known
