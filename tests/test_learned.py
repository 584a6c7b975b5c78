"""The learned deferral rule: numpy application by hand, the policy file round trip, and the
fit against scikit-learn's own decision function."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from router.errors import PolicyError
from router.learned import LearnedSignal, feature_matrix
from router.learned_fit import fit_learned, out_of_fold, standardisation
from router.policy import Policy, ThresholdRule, load_policy, policy_from_dict, save_policy

SIG = LearnedSignal(("quantile_logprob_q0.1", "verify_p_yes"), (-2.0, 0.5), (0.5, 0.25),
                    (1.5, -0.5), 0.25, {"cv_auroc": 0.8})


def test_score_by_hand() -> None:
    # z = ((-1 - -2) / 0.5, (1 - 0.5) / 0.25) = (2, 2): 0.25 + 1.5 * 2 - 0.5 * 2 = 2.25
    assert SIG.score({"quantile_logprob_q0.1": -1.0, "verify_p_yes": 1.0}) == pytest.approx(2.25)
    # a missing feature sits at its center: 0.25 + 1.5 * 2
    assert SIG.score({"quantile_logprob_q0.1": -1.0}) == pytest.approx(3.25)
    assert SIG.score({"quantile_logprob_q0.1": -1.0, "verify_p_yes": math.nan}) == \
        pytest.approx(3.25)
    assert SIG.key == "learned" and SIG.probe_features == ("verify_p_yes",)
    assert not SIG.needs_top_k


def test_feature_matrix_joins_token_signals_and_probes() -> None:
    x = feature_matrix({"mean_logprob": np.array([-1.0, -2.0])}, [{"consistency": 1.0}, {}],
                       ["mean_logprob", "consistency"])
    np.testing.assert_array_equal(x[:, 0], [-1.0, -2.0])
    assert x[0, 1] == 1.0 and math.isnan(x[1, 1])


def test_learned_policy_round_trips_through_its_file(tmp_path: Path) -> None:
    policy = Policy("learned", SIG, ThresholdRule(escalate_below=0.1), {"data": "x", "n": 3})
    path = save_policy(policy, tmp_path / "p.yaml")
    back = load_policy(path)
    assert back.signal == SIG and back.rule == policy.rule and back.features == SIG.features
    assert back.for_serving() is back
    with pytest.raises(PolicyError, match="selection needs one scorer signal"):
        back.for_selection()


@pytest.mark.parametrize(("patch", "message"), [
    ({"weights": [1.0]}, "weights has 1 values for 2 features"),
    ({"scale": [1.0, 0.0]}, "every scale must be positive"),
    ({"features": ["quantile_logprob_q0.1", "nope"]}, "feature 'nope'"),
    ({"intercept": "high"}, "signal.intercept must be a number"),
    ({"bias": 1}, "signal.bias is not a key of a learned signal"),
])
def test_bad_learned_signals_name_the_key(patch: dict[str, object], message: str) -> None:
    raw = {**SIG.to_dict(), **patch}
    with pytest.raises(PolicyError, match=message):
        policy_from_dict({"signal": raw, "rule": {"kind": "threshold", "escalate_below": 0}},
                         "p.yaml")


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    x = np.stack([rng.normal(y * 1.5, 1.0), rng.normal(0, 1, n), rng.normal(-1.0 * y, 2.0)], axis=1)
    x[rng.random(n) < 0.1, 1] = np.nan  # missing values are imputed at the center
    return x, y


def test_fit_matches_scikit_learn_and_cross_validates() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _synthetic(300, 0)
    feats = ["mean_logprob", "consistency", "verify_p_yes"]
    fit = fit_learned(x, y, feats, c=0.5, folds=5)
    center, scale = standardisation(x)
    z = np.nan_to_num((x - center) / scale, nan=0.0)
    ref = LogisticRegression(C=0.5, max_iter=5000).fit(z, y.astype(int))
    np.testing.assert_allclose(fit.signal.score_matrix(x), ref.decision_function(z), atol=1e-9)
    assert 0.8 < fit.cv_auroc <= fit.train_auroc + 0.05
    assert fit.signal.fitted["cv_auroc"] == pytest.approx(fit.cv_auroc, abs=1e-6)
    assert fit.signal.weights[0] > 0 > fit.signal.weights[2]  # the informative directions
    # out-of-fold: no row is scored by a rule that saw it (so a leaked label cannot help)
    leak = np.column_stack([x, y.astype(float)])
    oof = out_of_fold(leak, y, [*feats, "truncated"], folds=5)
    assert np.isfinite(oof).all()


def test_fit_refuses_too_few_labels_of_one_kind() -> None:
    from router.errors import InputError

    x, y = _synthetic(40, 1)
    y[:] = True
    y[:3] = False
    with pytest.raises(InputError, match="at least 5 correct and as many wrong"):
        fit_learned(x, y, ["mean_logprob", "consistency", "verify_p_yes"])
