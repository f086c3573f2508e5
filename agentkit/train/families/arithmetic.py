"""Families answered by the number tools alone: arithmetic through the calculator, and choosing among
the calculator, unit conversion, word count and dates by their descriptions.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from agentkit.tiny import calc
from agentkit.train.families.script import Call, Draft, Final, Script, Step, pick, say
from agentkit.train.phrasing import expr_slots
from agentkit.train.vocab import Pools

# ---- arithmetic through the calculator ----------------------------------------------------------


def expression(rng: random.Random, p: Pools) -> tuple[str, str]:
    """An expression and how a user might say it; every result is exact."""
    shape = rng.randrange(6)
    if shape == 0:
        a, b = p.number(rng, 10, 99999), p.number(rng, 10, 99999)
        return f"{a} + {b}", pick(rng, [f"{a} + {b}", f"{a} plus {b}", f"the sum of {a} and {b}"])
    if shape == 1:
        a, b = p.number(rng, 100, 99999), p.number(rng, 10, 9999)
        return f"{a} - {b}", pick(rng, [f"{a} - {b}", f"{a} minus {b}", f"{b} subtracted from {a}"])
    if shape == 2:
        a, b = p.number(rng, 10, 9999), p.number(rng, 2, 999)
        return f"{a} * {b}", pick(rng, [f"{a} * {b}", f"{a} times {b}", f"the product of {a} and {b}"])
    if shape == 3:
        b, q = p.number(rng, 2, 999), p.number(rng, 2, 9999)
        return f"{b * q} / {b}", pick(rng, [f"{b * q} / {b}", f"{b * q} divided by {b}"])
    if shape == 4:
        a, b, c = p.number(rng, 10, 999), p.number(rng, 10, 999), p.number(rng, 2, 99)
        return f"({a} + {b}) * {c}", f"({a} + {b}) * {c}"
    a, b, c = p.number(rng, 10, 999), p.number(rng, 10, 999), p.number(rng, 10, 9999)
    return f"{a} * {b} - {c}", f"{a} * {b} - {c}"


def calc_family(rng: random.Random, p: Pools) -> Draft:
    if rng.random() < 0.3:
        n, price = p.number(rng, 2, 999), p.number(rng, 2, 999)
        expr = f"{n} * {price}"
        person, item1, city, item2 = (
            rng.choice(p.person),
            rng.choice(p.item),
            rng.choice(p.city),
            rng.choice(p.item),
        )
        task = say(
            rng,
            p,
            [
                f"{person} buys {n} {item1} at {price} each. What is the total cost?",
                f"A shop in {city} sells {item2} for {price} each. How much do {n} of them cost?",
            ],
            "calc_buy",
            person=person,
            n=n,
            item=item1,
            price=price,
            city=city,
        )
    elif p.split == "train" and rng.random() < 0.15:
        # the error family's questions ("What is 12 x 5?") answered right the first time: that family's
        # first, mistaken turn is context (never trained), so without these the model has never
        # produced a first turn for such a question, which is exactly what the real loop asks of it
        a, b = p.number(rng, 10, 9999), p.number(rng, 2, 999)
        expr = f"{a} * {b}"
        sign = rng.choice(["x", "×"])
        task = say(
            rng, p, [f"What is {a} {sign} {b}?", f"Compute {a} x {b} please."], "calc_x", a=a, b=b, sign=sign
        )
    else:
        expr, spoken = expression(rng, p)
        task = say(
            rng,
            p,
            [
                f"What is {spoken}?",
                f"Compute {spoken}.",
                f"Please calculate {spoken}.",
                f"I need the result of {spoken}.",
                f"Can you work out {spoken} for me?",
                f"{spoken} = ?",
            ],
            "calc",
            **expr_slots(expr),
        )
    answer = calc.calculate(expr)

    def script() -> Script:
        results = yield Step(
            f"I need {expr}. I will use the calculator.", [Call("calculator", {"expression": expr})]
        )
        yield Final(f"The calculator returned {results[0]}.", results[0])

    return Draft("calc", task, answer, ["calculator"], script)


# ---- choosing among several tools by their descriptions -----------------------------------------


def choose_family(rng: random.Random, p: Pools) -> Draft:
    mode = rng.randrange(3)
    offered = ["calculator", "convert_units", "count_words", "days_between"]
    rng.shuffle(offered)
    if mode == 0:
        src, dst = rng.choice(list(calc.UNIT_FACTORS))
        if rng.random() < 0.5:
            value = p.number(rng, 2, 9999)
            args: dict[str, Any] = {"value": value, "from_unit": src, "to_unit": dst}
        else:
            value = p.number(rng, 2, 999) * calc.UNIT_FACTORS[(src, dst)]
            args = {"value": value, "from_unit": dst, "to_unit": src}
        answer = calc.convert(args["value"], args["from_unit"], args["to_unit"])
        task = say(
            rng,
            p,
            [
                f"Convert {args['value']} {args['from_unit']} to {args['to_unit']}.",
                f"How many {args['to_unit']} is {args['value']} {args['from_unit']}?",
            ],
            "convert",
            value=args["value"],
            u1=args["from_unit"],
            u2=args["to_unit"],
        )
        call = Call("convert_units", args)
        why = "This is a unit conversion."
    elif mode == 1:
        words = [rng.choice(p.noun + p.adj) for _ in range(rng.randint(3, 14))]
        text = " ".join(words)
        answer = calc.count_words(text)
        task = say(
            rng,
            p,
            [f'How many words are in "{text}"?', f"Count the words in this text: {text}"],
            "words",
            text=text,
        )
        call = Call("count_words", {"text": text})
        why = "This asks for a word count."
    else:
        start = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(2000))
        span = p.number(rng, 1, 1500)
        end = start + dt.timedelta(days=span)
        answer = str(span)
        task = say(
            rng,
            p,
            [
                f"How many days are there from {start.isoformat()} to {end.isoformat()}?",
                f"Count the days between {start.isoformat()} and {end.isoformat()}.",
            ],
            "days",
            d1=start.isoformat(),
            d2=end.isoformat(),
        )
        call = Call("days_between", {"start": start.isoformat(), "end": end.isoformat()})
        why = "This asks for the days between two dates."

    def script() -> Script:
        results = yield Step(f"{why} I will use {call.name}.", [call])
        yield Final(f"{call.name} returned {results[0]}.", results[0])

    return Draft("choose", task, answer, offered, script)
