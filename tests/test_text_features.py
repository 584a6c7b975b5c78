"""Text terms of a learned rule: the TF-IDF by hand and against scikit-learn, the policy file
round trip, the fit (vocabulary learned per fold), and one score in serve, eval and calibrate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from router.errors import PolicyError
from router.learned import LearnedSignal, confidence_and_values
from router.learned_fit import TextFit, fit_learned, out_of_fold
from router.policy import Policy, ThresholdRule, load_policy, policy_from_dict, save_policy
from router.scoring import TokenLogprobs
from router.text_features import (
    TextBlock,
    document_frequencies,
    terms,
    tfidf,
    tfidf_matrix,
)

TEXTS = ["What is 73 - 7? Answer with the number only.",
         "How many centimeters are in 9 meters? Answer with the number only.",
         "What is the capital of France?", "Spell 'cat' backwards.",
         "My password reset link expired, what now?", "what is WHAT is what"]


def test_tfidf_equals_scikit_learn() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    for ngrams in (1, 2, 3):
        ref = TfidfVectorizer(ngram_range=(1, ngrams), sublinear_tf=True,
                              token_pattern=r"(?u)\b\w+\b")
        want = ref.fit_transform(TEXTS[:4]).toarray()
        idf, n = document_frequencies(TEXTS[:4], ngrams)
        vocab = sorted(idf)
        assert n == 4 and vocab == list(ref.get_feature_names_out())
        np.testing.assert_allclose([idf[t] for t in vocab], ref.idf_, rtol=1e-12)
        np.testing.assert_allclose(tfidf_matrix(TEXTS[:4], vocab, idf, ngrams), want,
                                   atol=1e-12)
        # unseen texts: unknown terms dropped, the rest renormalised, as transform() does
        np.testing.assert_allclose(tfidf_matrix(TEXTS[4:], vocab, idf, ngrams),
                                   ref.transform(TEXTS[4:]).toarray(), atol=1e-12)


def test_tfidf_by_hand() -> None:
    assert terms("Don't stop", 2) == ["don", "t", "stop", "don t", "t stop"]
    # "what" three times, "is" twice: tf 1 + ln 3 and 1 + ln 2, times idf 1, normalised
    got = tfidf("what is WHAT is what", {"what": 1.0, "is": 1.0}, 1)
    a, b = 1 + math.log(3), 1 + math.log(2)
    assert got == pytest.approx({"what": a / math.hypot(a, b), "is": b / math.hypot(a, b)})
    assert tfidf("nothing known", {"what": 1.0}) == {}


BLOCK = TextBlock("question", 1, 2.0, {"number": 1.5, "capital": 1.2},
                  {"number": -1.0, "capital": 0.75})
SIG = LearnedSignal(("mean_logprob",), (-1.0,), (0.5,), (1.0,), 0.1, {}, (BLOCK,))


def test_learned_rule_with_text_scores_by_hand() -> None:
    lp = TokenLogprobs(np.array([-0.5, -0.5]), np.array([1, 1]))
    score, values = confidence_and_values(SIG, lp, texts={"question": "The number? number."})
    # dense: 0.1 + (-0.5 - -1) / 0.5 = 1.1; text: 2.0 * 1.0 * -1.0 (one known term, norm 1)
    assert score == pytest.approx(1.1 - 2.0)
    assert values == pytest.approx({"mean_logprob": -0.5, "text:question": -2.0})
    # a missing field adds nothing; the answer field is not read by this rule
    assert SIG.score({"mean_logprob": -0.5}) == pytest.approx(1.1)
    assert not SIG.reads_answer_text
    with pytest.raises(Exception, match="text blocks need each row"):
        SIG.score_matrix([[-0.5]])


def test_text_blocks_round_trip_through_a_policy_file(tmp_path: Path) -> None:
    policy = Policy("words", SIG, ThresholdRule(escalate_below=0.0), {"data": "x"})
    back = load_policy(save_policy(policy, tmp_path / "p.yaml"))
    assert isinstance(back.signal, LearnedSignal)
    assert back.signal.text[0].idf == BLOCK.idf and back.signal.text[0].weights == BLOCK.weights
    for text in TEXTS:
        assert back.signal.score({"mean_logprob": -1.2}, {"question": text}) == \
            SIG.score({"mean_logprob": -1.2}, {"question": text})


@pytest.mark.parametrize(("patch", "message"), [
    ({"field": "system"}, "text field 'system' is not one of question, answer"),
    ({"terms": {"a": [1.0]}}, r"terms\['a'\] must be \[idf, weight\]"),
    ({"scale": 0}, "text.scale must be a positive number"),
    ({"ngrams": 9}, "text.ngrams must be 1 to 4"),
    ({"stop_words": []}, "stop_words is not a key of a text block"),
])
def test_bad_text_blocks_name_the_key(patch: dict[str, object], message: str) -> None:
    raw = SIG.to_dict()
    raw["text"] = [{**raw["text"][0], **patch}]
    with pytest.raises(PolicyError, match=message):
        policy_from_dict({"signal": raw, "rule": {"kind": "threshold", "escalate_below": 0}},
                         "p.yaml")


def _kinds(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Questions of two kinds; the small model gets "sum" questions wrong 90% of the time and
    "capital" ones right 90%; one numeric feature is pure noise."""
    rng = np.random.default_rng(seed)
    kind = rng.random(n) < 0.5
    y = np.where(kind, rng.random(n) < 0.1, rng.random(n) < 0.9)
    texts = [{"question": (f"What is the sum of {rng.integers(99)} and {rng.integers(99)}?"
                           if k else f"What is the capital of country {rng.integers(99)}?"),
              "answer": "It is."} for k in kind]
    return rng.normal(0, 1, (n, 1)), y, texts


def test_fit_learns_which_questions_fail_from_their_words() -> None:
    x, y, texts = _kinds(200, 0)
    plain = fit_learned(x, y, ["mean_logprob"], c=1.0)
    words = fit_learned(x, y, ["mean_logprob"], c=1.0, texts=texts,
                        text=TextFit(("question",)))
    assert plain.cv_auroc < 0.65 < 0.8 < words.cv_auroc
    block = words.signal.text[0]
    assert block.weights["sum"] < 0 < block.weights["capital"]
    assert words.signal.fitted["text"] == {"fields": ["question"], "ngrams": 2, "scale": 3.0}
    # the fitted rule's numpy scores are the ones the fit computed
    np.testing.assert_allclose(words.signal.score_matrix(x, texts),
                               [words.signal.score({"mean_logprob": v}, t)
                                for v, t in zip(x[:, 0], texts, strict=True)], atol=1e-12)


def test_out_of_fold_vocabulary_comes_from_the_training_folds() -> None:
    # each question is unique and its label is its own word: only a vocabulary that leaked
    # from the scored rows could predict it
    rng = np.random.default_rng(1)
    y = rng.random(120) < 0.5
    texts = [{"question": f"token{i}{'yes' if ok else 'no'}"} for i, ok in enumerate(y)]
    scores = out_of_fold(np.zeros((120, 0)), y, [], c=10.0, texts=texts,
                         text=TextFit(("question",)))
    from router.evaluate.metrics_math import auroc

    assert abs(auroc(scores, y.astype(float)) - 0.5) < 0.15
