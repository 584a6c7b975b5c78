"""The built-in evaluation set: prompts a program can check, generated from a seed.

Five categories, interleaved (item i has category i % 5) so any prefix and any even/odd split
is balanced: arithmetic, unit conversion, string tasks, table lookups, customer support.
`generate(seed=0, n=80)` always returns the same items for the same arguments.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.evalset.tables import CAPITALS, CONTINENTS, CURRENCIES, SUPPORT, UNITS, WORDS

DEFAULT_SEED = 0
DEFAULT_SIZE = 80
DEFAULT_MAX_TOKENS = 24
NUMBER_ONLY = " Answer with the number only."


@dataclass(frozen=True)
class EvalItem:
    """One prompt with its check (see router.evalset.checks) and canonical answer."""

    id: str
    prompt: str
    check: dict[str, Any] | None  # None: unlabelled (fine for calibration, not for eval)
    reference: str = ""
    category: str = ""
    max_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "category": self.category, "prompt": self.prompt,
                               "reference": self.reference}
        if self.check is not None:
            out["check"] = self.check
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        return out


Made = tuple[str, dict[str, Any], str]  # (prompt, check, reference)


def _arithmetic(rng: random.Random) -> Made:
    op = rng.choice(("+", "-", "*"))
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        value, words = a * b, f"{a} times {b}"
    elif op == "+":
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        value, words = a + b, f"{a} + {b}"
    else:
        a = rng.randint(20, 99)
        b = rng.randint(2, a - 2)
        value, words = a - b, f"{a} - {b}"
    return f"What is {words}?{NUMBER_ONLY}", {"kind": "number", "value": value}, str(value)


def _units(rng: random.Random) -> Made:
    template, factor = rng.choice(UNITS)
    v = rng.randint(2, 9)
    value = v * factor
    return (template.format(v=v) + NUMBER_ONLY, {"kind": "number", "value": value}, str(value))


def _strings(rng: random.Random) -> Made:
    word = rng.choice(WORDS)
    task = rng.choice(("reverse", "upper", "first", "last", "count"))
    if task == "reverse":
        rev = word[::-1]
        return (f"Write the word '{word}' backwards.", {"kind": "letters", "value": rev}, rev)
    if task == "upper":
        up = word.upper()
        return (f"Write the word '{word}' in capital letters.", {"kind": "exact", "any": [up]},
                up)
    if task == "first":
        return (f"What is the first letter of the word '{word}'?",
                {"kind": "letters", "value": word[0]}, word[0])
    if task == "last":
        return (f"What is the last letter of the word '{word}'?",
                {"kind": "letters", "value": word[-1]}, word[-1])
    return (f"How many letters are in the word '{word}'?{NUMBER_ONLY}",
            {"kind": "number", "value": len(word)}, str(len(word)))


def _lookup(rng: random.Random) -> Made:
    table = rng.choice(("capital", "capital", "currency", "continent"))
    if table == "capital":
        country = rng.choice(sorted(CAPITALS))
        answers = CAPITALS[country]
        prompt = f"What is the capital of {country}? Answer in one word."
    elif table == "currency":
        country = rng.choice(sorted(CURRENCIES))
        answers = CURRENCIES[country]
        prompt = f"What is the name of the currency of {country}?"
    else:
        country = rng.choice(sorted(CONTINENTS))
        answers = CONTINENTS[country]
        prompt = f"On which continent is {country}?"
    return prompt, {"kind": "contains", "any": list(answers)}, answers[0]


def _support(rng: random.Random) -> Made:
    intent = rng.choice(sorted(SUPPORT))
    phrasings, canonical, groups = SUPPORT[intent]
    return (rng.choice(phrasings), {"kind": "keywords", "groups": [list(g) for g in groups]},
            canonical)


CATEGORIES: tuple[tuple[str, Callable[[random.Random], Made]], ...] = (
    ("arithmetic", _arithmetic),
    ("units", _units),
    ("strings", _strings),
    ("lookup", _lookup),
    ("support", _support),
)


Categories = tuple[tuple[str, Callable[[random.Random], Made]], ...]


def interleaved(categories: Categories, rng: random.Random, n: int,
                prefix: str) -> list[EvalItem]:
    """`n` distinct items, item i of category i % len(categories), ids `{prefix}-NNNN`."""
    items: list[EvalItem] = []
    seen: set[str] = set()
    for i in range(n):
        name, make = categories[i % len(categories)]
        for _attempt in range(50):
            prompt, check, reference = make(rng)
            if prompt not in seen:
                break
        seen.add(prompt)
        items.append(EvalItem(id=f"{prefix}-{i:04d}", prompt=prompt, check=check,
                              reference=reference, category=name))
    return items


def generate(seed: int = DEFAULT_SEED, n: int = DEFAULT_SIZE) -> list[EvalItem]:
    """`n` distinct items (support phrasings may repeat once every phrasing is used).

    Example: generate(0, 2) -> [arithmetic item "builtin-s0-0000", units item "builtin-s0-0001"].
    """
    return interleaved(CATEGORIES, random.Random(seed), n, f"builtin-s{seed}")
