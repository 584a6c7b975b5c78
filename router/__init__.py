"""cascade-router: answer with a small model, escalate when unsure; score data the same way."""

from router._version import __version__
from router.errors import RouterError
from router.scoring import SCORER_VERSION, ScoreResult, SignalSpec, TokenLogprobs, score_sequences

__all__ = [
    "SCORER_VERSION",
    "RouterError",
    "ScoreResult",
    "SignalSpec",
    "TokenLogprobs",
    "__version__",
    "score_sequences",
]
