"""The built-in evaluation set: deterministic, balanced, and its own answers pass its checks."""

from __future__ import annotations

from collections import Counter

import pytest

from router.evalset import DEFAULT_SIZE, check_answer, generate, reference_check, validate_check


def test_same_seed_same_set() -> None:
    a = [it.to_json() for it in generate(7, 60)]
    b = [it.to_json() for it in generate(7, 60)]
    assert a == b
    assert [it.to_json() for it in generate(8, 60)] != a
    assert [it.to_json() for it in generate(7, 20)] == a[:20]  # a prefix is a smaller set


def test_default_set_is_balanced_and_distinct() -> None:
    items = generate()
    assert len(items) == DEFAULT_SIZE
    assert len({it.id for it in items}) == DEFAULT_SIZE
    assert len({it.prompt for it in items}) >= DEFAULT_SIZE - 5  # support phrasings may repeat
    counts = Counter(it.category for it in items)
    assert set(counts.values()) == {DEFAULT_SIZE // 5}


def test_every_reference_passes_its_check() -> None:
    for it in generate(3, 200):
        assert it.check is not None and validate_check(it.check) is None
        assert check_answer(it.check, it.reference), it


@pytest.mark.parametrize(("check", "text", "ok"), [
    ({"kind": "number", "value": 3000}, "3 kilometers = 3,000 meters", True),
    ({"kind": "number", "value": 42}, "17 + 25 = 32", False),
    ({"kind": "number", "value": 5}, "1, 2, 3, 4, 5, 6, 7", False),  # an enumeration
    ({"kind": "number", "value": 42}, "The answer is 42.", True),
    ({"kind": "contains", "any": ["Bogota"]}, "It is Bogotá.", True),
    ({"kind": "contains", "any": ["Rome"]}, "Romeo", False),
    ({"kind": "exact", "any": ["BANANA"]}, "Banana", False),
    ({"kind": "exact", "any": ["BANANA"]}, "It is BANANA.", True),
    ({"kind": "letters", "value": "tac"}, "The word backwards is t-a-c.", True),
    ({"kind": "letters", "value": "tac"}, "To spell 'cat' backwards, reverse it.", False),
    ({"kind": "letters", "value": "r"}, "The first letter of 'river' is 'r'.", True),
    ({"kind": "keywords", "groups": [["refund"], ["order", "days"]]},
     "You can get a refund within 30 days.", True),
    ({"kind": "keywords", "groups": [["refund"], ["order", "days"]]}, "Refunds are nice.", False),
])
def test_checkers(check: dict[str, object], text: str, ok: bool) -> None:
    assert check_answer(check, text) is ok


def test_reference_check() -> None:
    assert reference_check(" 1,200 ") == {"kind": "number", "value": 1200.0}
    assert reference_check("Paris") == {"kind": "contains", "any": ["Paris"]}
    assert validate_check({"kind": "nope"}) is not None
    assert validate_check({"kind": "number", "value": True}) is not None
