"""The built-in evaluation set: deterministic, programmatically checkable prompts."""

from router.evalset.checks import CHECK_KINDS, check_answer, reference_check, validate_check
from router.evalset.generate import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_SEED,
    DEFAULT_SIZE,
    EvalItem,
    generate,
)

__all__ = [
    "CHECK_KINDS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_SEED",
    "DEFAULT_SIZE",
    "EvalItem",
    "check_answer",
    "generate",
    "reference_check",
    "validate_check",
]
