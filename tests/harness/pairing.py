"""Is one per-token logprob sequence the same pairing of tokens and distributions as another?

Two engines (or two llama.cpp kernels, or two builds of one) round differently: their logprobs
for the same token agree to hundredths or a few tenths, by an amount that depends on the CPU,
the build flags and the thread count. An off-by-one pairing (each token scored against its
neighbour's distribution) is off by nats. So tests compare the aligned pairing with the shifted
one measured on the same data, instead of a tolerance fitted to one machine's build.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: the aligned pairing must be at least this many times closer than the shifted one
MIN_SEPARATION = 5.0


@dataclass(frozen=True)
class Pairing:
    aligned_mean: float  # mean |a - b| with tokens paired as given
    aligned_max: float
    shifted_mean: float  # mean |a - b| with one sequence shifted by one token (either way)

    @property
    def separation(self) -> float:
        return self.shifted_mean / max(self.aligned_mean, 1e-9)


def pairing(a: npt.ArrayLike, b: npt.ArrayLike) -> Pairing:
    """Aligned vs shifted disagreement of two logprob sequences of the same tokens.

    >>> p = pairing([-0.1, -3.0, -0.2, -5.0], [-0.12, -2.9, -0.25, -5.1])
    >>> round(p.aligned_mean, 3), p.separation > 5
    (0.067, True)
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two 1-d sequences of one length >= 2, got {x.shape}, {y.shape}")
    aligned = np.abs(x - y)
    shifted = min(float(np.abs(x[1:] - y[:-1]).mean()), float(np.abs(x[:-1] - y[1:]).mean()))
    return Pairing(float(aligned.mean()), float(aligned.max()), shifted)


def assert_same_pairing(a: npt.ArrayLike, b: npt.ArrayLike, what: str = "") -> Pairing:
    """Fail unless `a` and `b` pair each token with the same distribution (up to rounding)."""
    p = pairing(a, b)
    assert p.separation >= MIN_SEPARATION, (
        f"{what}: aligned pairing differs by {p.aligned_mean:.4f} on average "
        f"(max {p.aligned_max:.4f}), the shifted pairing by {p.shifted_mean:.4f}: "
        f"not {MIN_SEPARATION:.0f}x closer, so the tokens are paired with the wrong distributions"
    )
    return p
