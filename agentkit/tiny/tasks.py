"""A task with one known answer: set up the way its episode was rendered, run in a fresh sandbox, judged.

A `Task` is what running a generated episode through the real loop needs, and nothing of its reference
transcript: the user's prompt, the system instructions, the tools offered (in the order the episode
rendered them), the workspace files and the expected answer. `task_agent` and `task_sandbox` set the run
up exactly as the episode was rendered, so the loop's transcript can equal the training text. A run is
judged only by what a user would see: it completed and its final message states exactly the expected
answer in `ANSWER_TEMPLATE`, the format every episode ends with.

The training code builds its runs from here (`agentkit.train.loop_eval`), and `agentkit demo` runs tasks
saved as data (`DEMO_TASKS`, through `save_tasks` / `load_tasks`), so the CLI never imports the generator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from agentkit.agent import Agent
from agentkit.limits import Limits
from agentkit.tools.sandbox import Sandbox, open_sandbox
from agentkit.tools.sandbox.select import Backend
from agentkit.tools.tool import Tool

ANSWER_TEMPLATE = "The answer is {answer}."
_ANSWER_RE = re.compile(r"The answer is (.*)\.\s*\Z", re.S)
REFUSAL = "I cannot do this task with my tools."
"""The whole final message of a task none of the trained shapes covers (the refusal family, issue 21); a
task's `answer` is this exact text when the right outcome is to refuse."""
MAX_STEPS = 8
DEMO_TASKS = Path(__file__).resolve().with_name("demo_tasks.json")
"""`agentkit demo`'s tasks, package data written by `python -m agentkit.train.demo_tasks`."""


def answer_content(answer: str) -> str:
    return REFUSAL if answer == REFUSAL else ANSWER_TEMPLATE.format(answer=answer)


def extract_answer(content: str) -> str | None:
    """The answer inside a final assistant message (`REFUSAL` for a refusal), or None if it does not
    follow the format."""
    if content.strip() == REFUSAL:
        return REFUSAL
    m = _ANSWER_RE.search(content.strip())
    return m.group(1).strip() if m else None


@dataclass(frozen=True)
class Task:
    id: str
    family: str
    prompt: str
    """The user's message."""
    instructions: str
    """The system prompt."""
    tools: tuple[str, ...]
    """Names of the tools offered, in the order the system prompt lists them."""
    answer: str
    files: dict[str, str] = field(default_factory=dict)
    """Workspace files (path -> text), written into the sandbox in this order."""

    @property
    def expected(self) -> str:
        """The final message of a correct run."""
        return answer_content(self.answer)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["tools"] = list(self.tools)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Task:
        return cls(
            id=str(d["id"]),
            family=str(d["family"]),
            prompt=str(d["prompt"]),
            instructions=str(d["instructions"]),
            tools=tuple(str(t) for t in d["tools"]),
            answer=str(d["answer"]),
            files={str(k): str(v) for k, v in d["files"].items()},
        )


def task_agent(backend: Any, task: Task, tools: Mapping[str, Tool], sandbox: Sandbox) -> Agent[None, str]:
    """An agent set up exactly as the task's episode was rendered: its system prompt, its tools in order."""
    return Agent(
        backend,
        tools=[tools[n] for n in task.tools],
        instructions=task.instructions,
        thinking="high",
        sandbox=sandbox,
        limits=Limits(max_steps=MAX_STEPS),
    )


async def task_sandbox(task: Task, backend: str) -> Sandbox:
    """A fresh sandbox holding the task's workspace files."""
    sb = await open_sandbox(cast(Backend, backend))
    try:
        for path, text in task.files.items():
            await sb.write_file(path, text)
    except BaseException:
        await sb.close()
        raise
    return sb


def save_tasks(tasks: Sequence[Task], path: str | Path, **about: Any) -> None:
    """Write tasks as one JSON document; `about` records where they came from (kept beside them)."""
    doc = {**about, "tasks": [t.to_json() for t in tasks]}
    Path(path).write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def load_tasks(path: str | Path) -> list[Task]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Task.from_json(t) for t in doc["tasks"]]
