"""Lenient, programmatic answer checkers. A check is a small JSON-able dict:

    {"kind": "number", "value": 42}                       the number appears (3,000 == 3000)
    {"kind": "contains", "any": ["Paris"]}                one phrase appears (case/accents folded)
    {"kind": "exact", "any": ["BANANA"]}                  one string appears, case-sensitive
    {"kind": "letters", "value": "tac"}                   the letters appear in order as one word,
                                                          optionally spaced/hyphenated: t-a-c
    {"kind": "keywords", "groups": [["refund"], ["order", "days"]]}   every group has one hit
    {"kind": "yesno", "value": true}                      the first yes/no word is "yes"

`check_answer(check, text) -> bool`; `validate_check(check) -> str | None` (an error message).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

CHECK_KINDS = ("number", "contains", "exact", "letters", "keywords", "yesno")
MAX_NUMBERS = 4  # more distinct numbers than this is an enumeration, not an answer

_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])-?\d+(?:\.\d+)?")


_YES_NO = re.compile(r"(?<![a-z])(yes|no)(?![a-z])")


def fold(text: str) -> str:
    """Lower case, accents stripped, whitespace collapsed. Example: "Bogotá  X" -> "bogota x"."""
    nfkd = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in nfkd if not unicodedata.combining(c))
    return " ".join(plain.lower().split())


def numbers_in(text: str) -> list[float]:
    """Example: "3,000 meters, or 3 km" -> [3000.0, 3.0]."""
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text)]


def _has_phrase(haystack: str, phrase: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", haystack) is not None


def validate_check(check: Any) -> str | None:
    """None when `check` is well formed, else what is wrong with it."""
    if not isinstance(check, Mapping):
        return "check must be an object with a 'kind'"
    kind = check.get("kind")
    if kind not in CHECK_KINDS:
        return f"check kind must be one of {', '.join(CHECK_KINDS)}, got {kind!r}"
    if kind == "number":
        value = check.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "a number check needs a numeric 'value'"
    elif kind in ("contains", "exact"):
        phrases = check.get("any")
        if (not isinstance(phrases, list) or not phrases
                or not all(isinstance(p, str) and p for p in phrases)):
            return f"a {kind} check needs 'any': a non-empty list of strings"
    elif kind == "letters":
        if not isinstance(check.get("value"), str) or not check["value"]:
            return "a letters check needs a string 'value'"
    elif kind == "yesno":
        if not isinstance(check.get("value"), bool):
            return "a yesno check needs a boolean 'value'"
    else:
        groups = check.get("groups")
        if (not isinstance(groups, list) or not groups
                or not all(isinstance(g, list) and g and all(isinstance(w, str) for w in g)
                           for g in groups)):
            return "a keywords check needs 'groups': a list of non-empty lists of strings"
    return None


def check_answer(check: Mapping[str, Any], text: str) -> bool:
    """Whether `text` passes `check`.

    Example: ({"kind": "number", "value": 42}, "17 + 25 = 42.") -> True.
    """
    kind = check["kind"]
    if kind == "number":
        found = set(numbers_in(text))
        return float(check["value"]) in found and len(found) <= MAX_NUMBERS
    if kind == "contains":
        folded = fold(text)
        return any(_has_phrase(folded, fold(p)) for p in check["any"])
    if kind == "exact":
        return any(_has_phrase(text, p) for p in check["any"])
    if kind == "letters":
        letters = [re.escape(c) for c in fold(str(check["value"]))]
        pattern = r"(?<![a-z])" + r"[\s\-,.'\"]*".join(letters) + r"(?![a-z])"
        return re.search(pattern, fold(text)) is not None
    if kind == "yesno":
        first = _YES_NO.search(fold(text))
        return first is not None and (first.group(1) == "yes") == bool(check["value"])
    if kind == "keywords":
        folded = fold(text)
        return all(any(_has_phrase(folded, fold(w)) for w in group) for group in check["groups"])
    raise ValueError(f"unknown check kind {kind!r}")


def reference_check(reference: str) -> dict[str, Any]:
    """The default check of a row that only has a reference answer: a number when it is one,
    else the reference phrase. Example: "42" -> {"kind": "number", "value": 42.0}."""
    stripped = reference.strip()
    try:
        return {"kind": "number", "value": float(stripped.replace(",", ""))}
    except ValueError:
        return {"kind": "contains", "any": [stripped]}
