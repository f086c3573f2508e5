"""Families added for issue 21, kept out of `FAMILIES` so that registry's draws (and every template-worded
episode it makes) stay as they were: tasks that combine two shapes, and tasks none of the shapes can do,
which the model answers with `REFUSAL` and no tool call.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from agentkit.tiny import calc
from agentkit.tiny.tasks import REFUSAL
from agentkit.train.families.arithmetic import expression
from agentkit.train.families.script import Call, Draft, Final, Script, Step, say
from agentkit.train.families.workspace import _CSV_LOAD, _stdout_value, distinct_names, kv_file, render_kv
from agentkit.train.phrasing import Phrasing, bank, expr_slots
from agentkit.train.vocab import Pools

_NUMERIC_KEYS = ("port", "limit", "version", "count")
_OPS = {"add": "+", "sub": "-", "mul": "*"}


def _files(rng: random.Random, p: Pools) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    folder = rng.choice(p.dir) if rng.random() < 0.5 else ""
    files: dict[str, str] = {}
    contents: dict[str, dict[str, str]] = {}
    for name in distinct_names(rng, p, rng.randint(1, 3)):
        kv = kv_file(rng, p)
        path = f"{folder}/{name}" if folder else name
        files[path] = render_kv(kv)
        contents[path] = kv
    return files, contents


def _small(rng: random.Random, p: Pools) -> int:
    return p.number(rng, 2, 99) if rng.random() < 0.5 else p.number(rng, 10, 999)


def combo_family(rng: random.Random, p: Pools) -> Draft:
    """Two shapes in one task: a file's value then arithmetic on it, a CSV total then a product, an
    expression and a file's value in one parallel block, days between dates then a product."""
    kind = rng.randrange(4)
    if kind == 0:
        files, contents = _files(rng, p)
        path = rng.choice(list(files))
        kv = contents[path]
        key = rng.choice([k for k in kv if k in _NUMERIC_KEYS] or [""])
        if not key:
            key = rng.choice(_NUMERIC_KEYS)
            kv[key] = str(p.number(rng, 1, 9999))
            files[path] = render_kv(kv)
        value = kv[key]
        op, n = rng.choice(list(_OPS)), _small(rng, p)
        expr = f"{value} {_OPS[op]} {n}"
        answer = calc.calculate(expr)
        opp = {"add": f"add {n} to it", "sub": f"subtract {n} from it", "mul": f"multiply it by {n}"}[op]
        task = say(
            rng,
            p,
            [f"Read the {key} in {path} and {opp}.", f"What is the {key} in {path} if you {opp}?"],
            "combo_file_calc",
            key=key,
            path=path,
            op=op,
            n=n,
        )

        def script_file() -> Script:
            yield Step(
                f"I need the {key} in {path}. I will read it first.", [Call("read_file", {"path": path})]
            )
            results = yield Step(
                f"The file says {key}: {value}. I need {expr}. I will use the calculator.",
                [Call("calculator", {"expression": expr})],
            )
            yield Final(f"The calculator returned {results[0]}.", results[0])

        return Draft(
            "combo_file_calc", task, answer, ["read_file", "calculator", "list_dir"], script_file, files
        )
    if kind == 1:
        name = p.filename(rng, "csv")
        items, cities = rng.sample(p.item, 3), rng.sample(p.city, 3)
        rows = [
            (rng.choice(items), rng.choice(cities), p.number(rng, 1, 999)) for _ in range(rng.randint(3, 8))
        ]
        csv_files = {name: "item,city,qty\n" + "".join(f"{i},{c},{q}\n" for i, c, q in rows)}
        total = sum(q for _, _, q in rows)
        n = _small(rng, p)
        expr = f"{total} * {n}"
        answer = calc.calculate(expr)
        task = say(
            rng,
            p,
            [
                f"Sum the qty column of {name} and multiply it by {n}.",
                f"What is the total qty in {name} times {n}?",
            ],
            "combo_csv_calc",
            file=name,
            n=n,
        )
        py = f"{_CSV_LOAD.format(name=name)}print(sum(int(r['qty']) for r in rows))"
        call = Call("python", {"code": py})

        def script_csv() -> Script:
            results = yield Step(
                f"I will sum the qty column in {name} with python, then multiply by {n}.", [call]
            )
            value = _stdout_value(results[0])
            results = yield Step(
                f"The total qty is {value}. I need {value} * {n}. I will use the calculator.",
                [Call("calculator", {"expression": f"{value} * {n}"})],
            )
            yield Final(f"The calculator returned {results[0]}.", results[0])

        return Draft(
            "combo_csv_calc", task, answer, ["python", "read_file", "calculator"], script_csv, csv_files
        )
    if kind == 2:
        files, contents = _files(rng, p)
        path = rng.choice(list(files))
        key = rng.choice(list(contents[path]))
        value = contents[path][key]
        expr, spoken = expression(rng, p)
        result = calc.calculate(expr)
        answer = f"{result} and {value}"
        task = say(
            rng,
            p,
            [
                f"What is {spoken}, and what is the {key} in {path}?",
                f"Compute {spoken} and read the {key} in {path}.",
            ],
            "combo_calc_read",
            key=key,
            path=path,
            **expr_slots(expr),
        )

        def script_both() -> Script:
            results = yield Step(
                f"I need {expr} and the {key} in {path}. I will do both in parallel.",
                [Call("calculator", {"expression": expr}), Call("read_file", {"path": path})],
            )
            yield Final(
                f"The calculator returned {results[0]} and the file says {key}: {value}.",
                f"{results[0]} and {value}",
            )

        return Draft("combo_calc_read", task, answer, ["calculator", "read_file"], script_both, files)
    start = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(2000))
    span = p.number(rng, 1, 400)
    end = start + dt.timedelta(days=span)
    price = _small(rng, p)
    expr = f"{span} * {price}"
    answer = calc.calculate(expr)
    d1, d2 = start.isoformat(), end.isoformat()
    task = say(
        rng,
        p,
        [
            f"A room costs {price} per day. What does a stay from {d1} to {d2} cost?",
            f"Count the days between {d1} and {d2} and multiply them by {price}.",
        ],
        "combo_days_calc",
        d1=d1,
        d2=d2,
        price=price,
    )
    offered = ["days_between", "calculator", "convert_units", "count_words"]
    rng.shuffle(offered)

    def script_days() -> Script:
        results = yield Step(
            f"I need the days from {d1} to {d2}, then times {price}. I will use days_between.",
            [Call("days_between", {"start": d1, "end": d2})],
        )
        days = results[0]
        results = yield Step(
            f"There are {days} days. I need {days} * {price}. I will use the calculator.",
            [Call("calculator", {"expression": f"{days} * {price}"})],
        )
        yield Final(f"The calculator returned {results[0]}.", results[0])

    return Draft("combo_days_calc", task, answer, offered, script_days)


_COUNTRIES = ("France", "Brazil", "Kenya", "Japan", "Canada", "Peru", "Norway", "Egypt", "Chile", "India")
_TOOLBOXES: tuple[tuple[str, ...], ...] = (
    ("calculator",),
    ("read_file", "list_dir"),
    ("read_file", "list_dir", "grep"),
    ("python", "shell", "read_file"),
    ("read_file", "calculator", "list_dir"),
    ("calculator", "convert_units", "count_words", "days_between"),
    ("calculator", "read_file"),
)


def refuse_family(rng: random.Random, p: Pools) -> Draft:
    """A task none of the shapes can do (world knowledge, writing, actions outside the workspace, file
    edits, arithmetic and units the tools do not have, ...): the answer is `REFUSAL`, with no tool call."""
    phrasing = p.phrasing or Phrasing(bank("train"), random.Random(rng.random()))
    files: dict[str, str] = {}
    names = distinct_names(rng, p, 2)
    if rng.random() < 0.5:
        files = {names[0]: render_kv(kv_file(rng, p))}
    start = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(2000))
    slots: dict[str, Any] = {
        "city": rng.choice(p.city),
        "city2": rng.choice(p.city),
        "noun": rng.choice(p.noun),
        "person": rng.choice(p.person),
        "country": rng.choice(_COUNTRIES),
        "year": rng.randint(1950, 2022),
        "quote": f'"{rng.choice(p.adj)} {rng.choice(p.noun)}"',
        "x": p.number(rng, 2, 999),
        "y": p.number(rng, 2, 99),
        "d1": start.isoformat(),
        "file": names[0],
        "file2": names[1],
        "folder": rng.choice(p.dir),
        "items": rng.sample(p.noun, rng.randint(3, 5)),
    }
    task = phrasing.compose("refuse", slots)
    tools = list(rng.choice(_TOOLBOXES))

    def script() -> Script:
        yield Final("None of my tools can do what the user asks, so I cannot do this task.", REFUSAL)

    return Draft("refuse", task, REFUSAL, tools, script, files)


EXTRA_FAMILIES = {"combo": (combo_family, 1.2), "refuse": (refuse_family, 1.0)}
"""Drawn (by weight) for the share of episodes a recipe gives them; see `episodes.draft_episode`."""
