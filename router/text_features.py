"""Bag-of-words features of the question and of tier 0's answer, for a learned deferral rule.

A cascade's traffic repeats kinds of question, and a small model fails some kinds far more
often than others (on the built-in set SmolLM2 answers 2 of 16 arithmetic questions and 14 of
16 table lookups). Token logprobs do not see that; the words of the question do, as in the
query-only routers of Ding et al. (Hybrid LLM, ICLR 2024) and Ong et al. (RouteLLM, 2024). The
words of the answer see another kind of error: a small model that starts "To find out how many
..." instead of answering has usually run out of tokens before the answer.

Each field is a TF-IDF vector of its word 1..n-grams (lowercased, `\\w+` words; term frequency
1 + ln(count); smoothed idf ln((1 + n) / (1 + df)) + 1; L2-normalised over the known terms),
the same as scikit-learn's `TfidfVectorizer(sublinear_tf=True, token_pattern=r"(?u)\\b\\w+\\b")`
(tested). It is computed here, in plain Python over a few dozen words, so `serve` needs no
scikit-learn. A learned rule adds `scale * sum_t tfidf_t * weight_t` for each field to its
log-odds (router.learned); in a policy file:

```yaml
text:
  - field: question
    ngrams: 2
    scale: 1.0
    terms: {"what is": [1.69, -0.41], "capital": [2.1, 0.52]}   # term: [idf, weight]
```
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from router.errors import PolicyError

QUESTION = "question"
ANSWER = "answer"
TEXT_FIELDS = (QUESTION, ANSWER)
DEFAULT_NGRAMS = 2
DEFAULT_TEXT_SCALE = 3.0

_WORD = re.compile(r"(?u)\b\w+\b")

Texts = Mapping[str, str]  # field -> text, e.g. {"question": "...", "answer": "..."}


def terms(text: str, ngrams: int = DEFAULT_NGRAMS) -> list[str]:
    """The word 1..ngrams-grams of a text, in scikit-learn's order.

    >>> terms("What is 7 + 5?")
    ['what', 'is', '7', '5', 'what is', 'is 7', '7 5']
    """
    words = _WORD.findall(text.lower())
    out = list(words)
    for n in range(2, ngrams + 1):
        out.extend(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return out


def document_frequencies(texts: Iterable[str], ngrams: int = DEFAULT_NGRAMS
                         ) -> tuple[dict[str, float], int]:
    """Smoothed idf of every term of `texts`, and the number of texts.

    >>> idf, n = document_frequencies(["a b", "a"], ngrams=1)
    >>> n, round(idf["a"], 4), round(idf["b"], 4)
    (2, 1.0, 1.4055)
    """
    df: Counter[str] = Counter()
    n = 0
    for text in texts:
        n += 1
        df.update(set(terms(text, ngrams)))
    return {t: math.log((1 + n) / (1 + d)) + 1.0 for t, d in sorted(df.items())}, n


def tfidf(text: str, idf: Mapping[str, float], ngrams: int = DEFAULT_NGRAMS
          ) -> dict[str, float]:
    """One text's L2-normalised TF-IDF weights over the terms of `idf` (unknown terms are
    dropped, as a fitted vectoriser drops them).

    >>> {t: round(v, 3) for t, v in tfidf("a a b", {"a": 1.0, "b": 1.4055}, 1).items()}
    {'a': 0.769, 'b': 0.639}
    """
    counts = Counter(t for t in terms(text, ngrams) if t in idf)
    raw = {t: (1.0 + math.log(c)) * idf[t] for t, c in counts.items()}
    norm = math.sqrt(sum(v * v for v in raw.values()))
    return {t: v / norm for t, v in raw.items()} if norm > 0 else {}


def tfidf_matrix(texts: Sequence[str], vocab: Sequence[str], idf: Mapping[str, float],
                 ngrams: int = DEFAULT_NGRAMS) -> npt.NDArray[np.float64]:
    """(n, len(vocab)) TF-IDF rows of `texts`, columns in `vocab` order (for fitting)."""
    col = {t: j for j, t in enumerate(vocab)}
    out = np.zeros((len(texts), len(vocab)))
    for i, text in enumerate(texts):
        for t, v in tfidf(text, idf, ngrams).items():
            out[i, col[t]] = v
    return out


@dataclass(frozen=True)
class TextBlock:
    """One field's fitted term weights: adds `scale * tfidf(text) . weights` to the log-odds."""

    field: str
    ngrams: int
    scale: float
    idf: Mapping[str, float]
    weights: Mapping[str, float]

    def __post_init__(self) -> None:
        if self.field not in TEXT_FIELDS:
            raise PolicyError(f"text field {self.field!r} is not one of "
                              f"{', '.join(TEXT_FIELDS)}")
        if not 1 <= self.ngrams <= 4:
            raise PolicyError("text.ngrams must be 1 to 4")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise PolicyError("text.scale must be a positive number")
        if set(self.weights) - set(self.idf):
            raise PolicyError("text: every weighted term needs its idf")
        for v in (*self.idf.values(), *self.weights.values()):
            if not math.isfinite(v):
                raise PolicyError("text: idf and weights must be finite numbers")

    def score(self, text: str) -> float:
        """This field's share of the log-odds for one text.

        >>> b = TextBlock("question", 1, 2.0, {"sum": 1.0, "capital": 1.0},
        ...               {"sum": -1.5, "capital": 0.5})
        >>> b.score("What is the sum?"), b.score("The capital?"), b.score("Hello")
        (-3.0, 1.0, 0.0)
        """
        vec = tfidf(text, self.idf, self.ngrams)
        return self.scale * sum(v * self.weights.get(t, 0.0) for t, v in vec.items())

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "ngrams": self.ngrams, "scale": self.scale,
                "terms": {t: [round(float(self.idf[t]), 6),
                              round(float(self.weights.get(t, 0.0)), 6)]
                          for t in sorted(self.idf)}}


def text_block_from_dict(raw: Any, where: str) -> TextBlock:
    """A policy file's `signal.text[i]` mapping -> TextBlock."""
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: must be a mapping with field, ngrams, scale, terms")
    allowed = {"field", "ngrams", "scale", "terms"}
    extra = set(raw) - allowed
    if extra:
        raise PolicyError(f"{where}.{sorted(extra)[0]} is not a key of a text block "
                          f"(keys: {', '.join(sorted(allowed))})")
    if "field" not in raw or "terms" not in raw:
        raise PolicyError(f"{where}: a text block needs field and terms")
    ngrams = raw.get("ngrams", DEFAULT_NGRAMS)
    scale = raw.get("scale", DEFAULT_TEXT_SCALE)
    if isinstance(ngrams, bool) or not isinstance(ngrams, int):
        raise PolicyError(f"{where}.ngrams must be an integer")
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise PolicyError(f"{where}.scale must be a number")
    table = raw["terms"]
    if not isinstance(table, Mapping):
        raise PolicyError(f"{where}.terms must map each term to [idf, weight]")
    idf: dict[str, float] = {}
    weights: dict[str, float] = {}
    for term, pair in table.items():
        if (not isinstance(pair, list | tuple) or len(pair) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           for v in pair)):
            raise PolicyError(f"{where}.terms[{term!r}] must be [idf, weight]")
        idf[str(term)] = float(pair[0])
        weights[str(term)] = float(pair[1])
    try:
        return TextBlock(str(raw["field"]), ngrams, float(scale), idf, weights)
    except PolicyError as exc:
        raise PolicyError(f"{where}: {exc.message}") from None


def texts_of(question: str, answer: str) -> dict[str, str]:
    """The fields a text block reads. Example: ("Q?", "A.") -> {"question": "Q?", ...}."""
    return {QUESTION: question, ANSWER: answer}
