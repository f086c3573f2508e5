"""Families about the shape of a turn rather than a kind of tool: a question that needs no tool, a tool
error followed by a corrected call, and calls made in parallel in one block. The last two mix numbers and
files, so they borrow the task builders of `arithmetic` and `workspace`.
"""

from __future__ import annotations

import random

from agentkit.tiny import calc
from agentkit.train.families.arithmetic import expression
from agentkit.train.families.script import Call, Draft, Final, Script, Step, say
from agentkit.train.families.workspace import distinct_names, kv_file, render_kv
from agentkit.train.phrasing import expr_slots
from agentkit.train.vocab import Pools

# ---- questions that need no tool ---------------------------------------------------------------


def direct_family(rng: random.Random, p: Pools) -> Draft:
    mode = rng.randrange(4)
    if mode == 0:
        name = rng.choice(p.person)
        answer = name
        task = say(
            rng,
            p,
            [f"Hi, my name is {name}. What is my name?", f"I am {name}. Who am I?"],
            "direct_name",
            person=name,
        )
        why = "The user told me their name."
    elif mode == 1:
        word = f"{rng.choice(p.adj)}-{rng.choice(p.noun)}-{p.number(rng, 10, 999)}"
        answer = word
        task = say(
            rng,
            p,
            [f"Repeat this code word exactly: {word}", f"Say back the code {word}."],
            "direct_code",
            code=word,
        )
        why = "The user wants the code word repeated."
    else:
        things = rng.sample(p.noun, rng.randint(3, 6))
        first = mode == 2
        answer = things[0] if first else things[-1]
        which = "first" if first else "last"
        task = f"What is the {which} item in this list: {', '.join(things)}?"
        if p.phrasing is not None:
            task = p.phrasing.say(task, f"direct_{which}", {"items": things})
        why = f"The {which} item of the list is {answer}."
    tools = rng.sample(["calculator", "read_file", "list_dir", "python"], 2)

    def script() -> Script:
        yield Final(f"{why} No tool is needed.", answer)

    return Draft("direct", task, answer, tools, script)


# ---- a tool error, then a corrected call --------------------------------------------------------


def error_family(rng: random.Random, p: Pools) -> Draft:
    if rng.random() < 0.5:
        a, b = p.number(rng, 10, 9999), p.number(rng, 2, 999)
        sign = rng.choice(["x", "×"])
        bad, good = f"{a} {sign} {b}", f"{a} * {b}"
        answer = calc.calculate(good)
        task = say(rng, p, [f"What is {bad}?", f"Compute {bad} please."], "calc_x", a=a, b=b, sign=sign)

        def script() -> Script:
            yield Step(
                f"I need {bad}. I will use the calculator.",
                [Call("calculator", {"expression": bad})],
                loss=False,
            )
            results = yield Step(
                f"The calculator rejected {sign}. I will write the product with *.",
                [Call("calculator", {"expression": good})],
            )
            yield Final(f"The calculator returned {results[0]}.", results[0])

        return Draft("error", task, answer, ["calculator"], script)
    folder = rng.choice(p.dir)
    name = p.filename(rng)
    kv = kv_file(rng, p)
    key = rng.choice(list(kv))
    files = {f"{folder}/{name}": render_kv(kv)}
    for other in distinct_names(rng, p, 2):
        if other != name:
            files[f"{rng.choice(p.dir)}/{other}"] = render_kv(kv_file(rng, p))
    value = kv[key]
    task = say(
        rng,
        p,
        [f"What is the {key} in {name}?", f"Tell me the {key} from {name}."],
        "file_read",
        path=name,
        key=key,
    )

    # Every step restates the asked key: three tool results later the user's question is past the
    # 128-token window, and a copy from the previous step (inside it) is what a small model learns
    # reliably; without the restatement the answer was another key's value (run-cpu-4).
    def script_file() -> Script:
        yield Step(f"I will read {name} for the {key}.", [Call("read_file", {"path": name})])
        yield Step(
            f"{name} is not in the top folder. I will search for it to get the {key}.",
            [Call("shell", {"command": f"find . -name '{name}'"})],
        )
        yield Step(
            f"It is {folder}/{name}. I will read the {key} there.",
            [Call("read_file", {"path": f"{folder}/{name}"})],
        )
        yield Final(f"The file says {key}: {value}.", value)

    return Draft("error", task, value, ["read_file", "list_dir", "shell"], script_file, files)


# ---- parallel calls in one block ---------------------------------------------------------------


def parallel_family(rng: random.Random, p: Pools) -> Draft:
    if rng.random() < 0.5:
        (e1, s1), (e2, s2) = expression(rng, p), expression(rng, p)
        r1, r2 = calc.calculate(e1), calc.calculate(e2)
        answer = f"{r1} and {r2}"
        task = say(
            rng,
            p,
            [f"What are {s1} and {s2}?", f"Compute both {s1} and {s2}."],
            "parallel_calc",
            **expr_slots(e1),
            **expr_slots(e2, "2"),
        )

        def script() -> Script:
            results = yield Step(
                f"I need {e1} and {e2}. I will run both in parallel.",
                [Call("calculator", {"expression": e1}), Call("calculator", {"expression": e2})],
            )
            yield Final(f"The results are {results[0]} and {results[1]}.", f"{results[0]} and {results[1]}")

        return Draft("parallel", task, answer, ["calculator", "read_file"], script)
    n1, n2 = distinct_names(rng, p, 2, "txt")
    v1, v2 = p.number(rng, 10, 99999), p.number(rng, 10, 99999)
    files = {n1: f"value: {v1}\n", n2: f"value: {v2}\n"}
    expr = f"{v1} + {v2}"
    answer = calc.calculate(expr)
    task = say(
        rng,
        p,
        [f"Add the values in {n1} and {n2}.", f"What is the sum of the values stored in {n1} and {n2}?"],
        "parallel_files",
        file=n1,
        file2=n2,
    )

    def script_files() -> Script:
        yield Step(
            f"I will read {n1} and {n2} in parallel.",
            [Call("read_file", {"path": n1}), Call("read_file", {"path": n2})],
        )
        results = yield Step(
            f"The values are {v1} and {v2}. I will add them.", [Call("calculator", {"expression": expr})]
        )
        yield Final(f"The calculator returned {results[0]}.", results[0])

    return Draft("parallel", task, answer, ["read_file", "calculator"], script_files, files)
