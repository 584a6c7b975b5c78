"""A second checkable set, generated differently from the built-in one, to test whether a
deferral rule fitted on one set generalises to another (`router eval --set heldout`).

Other templates and other facts than `router.evalset.generate`: word problems (not bare
arithmetic), facts of science, books and languages (not capitals and currencies), yes/no
questions, letter tasks of another kind, and support questions about other intents.
`generate_heldout(seed=0, n=80)` always returns the same items; ids are `heldout-s{seed}-NNNN`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from router.evalset.generate import EvalItem, Made, interleaved

NAMES = ("Anna", "Ben", "Carla", "David", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas")
THINGS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells")

# question -> accepted answers (first = canonical)
FACTS: dict[str, tuple[str, ...]] = {
    "What is the chemical symbol for gold?": ("Au",),
    "What is the chemical symbol for iron?": ("Fe",),
    "What is the chemical symbol for sodium?": ("Na",),
    "What is the chemical symbol for oxygen?": ("O",),
    "Which planet is known as the Red Planet?": ("Mars",),
    "Which planet is the largest in our solar system?": ("Jupiter",),
    "Which planet is closest to the Sun?": ("Mercury",),
    "What gas do plants take in from the air for photosynthesis?": ("carbon dioxide", "CO2"),
    "What is the freezing point of water in degrees Celsius?": ("0", "zero"),
    "Who wrote the play Romeo and Juliet?": ("Shakespeare",),
    "Who wrote the novel Pride and Prejudice?": ("Austen",),
    "Who painted the Mona Lisa?": ("Leonardo", "da Vinci"),
    "Which language is mainly spoken in Brazil?": ("Portuguese",),
    "Which language is mainly spoken in Argentina?": ("Spanish",),
    "What is the largest ocean on Earth?": ("Pacific",),
    "What is the longest river in Africa?": ("Nile",),
    "How many legs does a spider have?": ("8", "eight"),
    "How many continents are there?": ("7", "seven"),
    "What is the hardest natural substance?": ("diamond",),
    "Which animal is known as the king of the jungle?": ("lion",),
}
SYMBOLS = {"Au", "Fe", "Na", "O", "CO2"}  # checked case-sensitively (exact)

# intent -> (phrasings, canonical answer, keyword groups)
SUPPORT_HELDOUT: dict[str, tuple[tuple[str, ...], str, tuple[tuple[str, ...], ...]]] = {
    "change_email": (
        ("How can I change the email address on my account?",
         "I have a new email. How do I update it in my profile?"),
        "Open Account settings, Profile, and enter the new email; confirm it from the link "
        "we send.",
        (("email", "e-mail"), ("settings", "account", "profile", "update", "change")),
    ),
    "two_factor": (
        ("How do I turn on two-factor authentication?",
         "How can I add an extra login code for security?"),
        "Go to Account settings, Security, and enable two-factor authentication.",
        (("two-factor", "2fa", "authentication", "verification", "code"),
         ("settings", "security", "account", "enable", "app")),
    ),
    "invoice": (
        ("Where can I download my invoice?", "How do I get a receipt for my last payment?"),
        "Invoices are under Account settings, Billing history; click Download.",
        (("invoice", "receipt", "billing"), ("account", "settings", "download", "history",
                                            "email", "order")),
    ),
    "damaged_item": (
        ("My item arrived broken. What should I do?",
         "The product I received is damaged. Can you help?"),
        "Sorry about that: report it from your order page within 14 days and we send a "
        "replacement or a refund.",
        (("replace", "replacement", "refund", "return", "exchange"),
         ("order", "contact", "support", "photo", "days", "customer service")),
    ),
    "shipping_time": (
        ("How long does shipping take?", "When will my order be delivered?"),
        "Standard shipping takes 3-5 business days; you get a tracking link by email.",
        (("days", "business days", "week", "tracking", "shipping", "delivery"),),
    ),
}


def _word_problem(rng: random.Random) -> Made:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.choice(("more", "less", "groups"))
    if kind == "more":
        a, b = rng.randint(3, 40), rng.randint(2, 30)
        value = a + b
        prompt = (f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} "
                  "have now?")
    elif kind == "less":
        a = rng.randint(15, 60)
        b = rng.randint(2, a - 3)
        value = a - b
        prompt = f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?"
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        value = a * b
        prompt = f"{name} has {a} bags with {b} {thing} in each bag. How many {thing} in total?"
    return prompt + " Answer with the number only.", {"kind": "number", "value": value}, \
        str(value)


def _fact(rng: random.Random) -> Made:
    question = rng.choice(sorted(FACTS))
    answers = FACTS[question]
    if answers[0] in SYMBOLS:
        return question, {"kind": "exact", "any": list(answers)}, answers[0]
    if answers[0].isdigit():
        return (question, {"kind": "number", "value": int(answers[0])}, answers[0])
    return question, {"kind": "contains", "any": list(answers)}, answers[0]


def _yes_no(rng: random.Random) -> Made:
    kind = rng.choice(("even", "greater", "fact"))
    if kind == "even":
        v = rng.randint(3, 99)
        truth = v % 2 == 0
        prompt = f"Is {v} an even number?"
    elif kind == "greater":
        a, b = rng.sample(range(2, 100), 2)
        truth = a > b
        prompt = f"Is {a} greater than {b}?"
    else:
        question, truth = rng.choice((
            ("Is the Sun a star?", True), ("Is a whale a fish?", False),
            ("Do penguins fly?", False), ("Is water made of hydrogen and oxygen?", True),
            ("Is Tokyo in China?", False), ("Is ice colder than boiling water?", True),
            ("Does a week have eight days?", False), ("Is a triangle a shape with three sides?",
                                                      True)))
        prompt = question
    word = "yes" if truth else "no"
    return prompt + " Answer yes or no.", {"kind": "yesno", "value": truth}, word


def _letters(rng: random.Random) -> Made:
    from router.evalset.tables import WORDS

    task = rng.choice(("second", "vowels", "alphabetical"))
    if task == "second":
        word = rng.choice([w for w in WORDS if len(w) >= 4])
        return (f"What is the second letter of the word '{word}'?",
                {"kind": "letters", "value": word[1]}, word[1])
    if task == "vowels":
        word = rng.choice(WORDS)
        n = sum(c in "aeiou" for c in word)
        return (f"How many vowels are in the word '{word}'? Answer with the number only.",
                {"kind": "number", "value": n}, str(n))
    a, b = rng.sample(WORDS, 2)
    first = min(a, b)
    return (f"Which word comes first in alphabetical order: '{a}' or '{b}'? Answer with the "
            "word only.", {"kind": "contains", "any": [first]}, first)


def _support(rng: random.Random) -> Made:
    intent = rng.choice(sorted(SUPPORT_HELDOUT))
    phrasings, canonical, groups = SUPPORT_HELDOUT[intent]
    return (rng.choice(phrasings), {"kind": "keywords", "groups": [list(g) for g in groups]},
            canonical)


CATEGORIES_HELDOUT: tuple[tuple[str, Callable[[random.Random], Made]], ...] = (
    ("word_problem", _word_problem),
    ("facts", _fact),
    ("yes_no", _yes_no),
    ("letters", _letters),
    ("support", _support),
)


def generate_heldout(seed: int = 0, n: int = 80) -> list[EvalItem]:
    """`n` items of the held-out family, categories interleaved (item i has category i % 5).

    Example: generate_heldout(0, 2) -> a word problem "heldout-s0-0000", a fact "...-0001".
    """
    return interleaved(CATEGORIES_HELDOUT, random.Random(f"heldout-{seed}"), n,
                       f"heldout-s{seed}")
