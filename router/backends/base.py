"""The backend interface: `generate`/`stream` (completion + token logprobs + top-k) and `score`.

A backend is one model behind one engine. Every method is async; engines that block (llama.cpp)
run in worker threads. Requests and results are small frozen value objects so that `serve`,
`select` and the tests all speak the same language whatever the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from router.scoring import TokenLogprobs

FinishReason = Literal["stop", "length"]
DEFAULT_TOP_LOGPROBS = 5


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One completion request. Exactly one of `prompt` (raw text) and `messages` (chat) is set.

    `top_logprobs` is the k of the top-k alternatives the backend returns with every token
    (the router always asks for logprobs: the cascade needs them to score the answer).
    `extra` carries OpenAI/vLLM parameters an HTTP upstream understands and we pass through.
    """

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    top_logprobs: int = DEFAULT_TOP_LOGPROBS
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("GenerationRequest needs exactly one of prompt and messages")

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True)
class TopAlternatives:
    """Display data for OpenAI-style logprobs: the token strings behind `TokenLogprobs.top`."""

    tokens: tuple[tuple[str, ...], ...]  # (n, k) token strings, same order as top_logprobs


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Generation:
    """A finished completion with the log-probabilities of its own tokens."""

    model: str
    text: str
    finish_reason: FinishReason
    logprobs: TokenLogprobs  # the completion's tokens, with top-k
    usage: Usage
    alternatives: TopAlternatives | None = None


@dataclass(frozen=True)
class StreamDelta:
    """One piece of a streamed completion: new text, the logprobs of the tokens behind it,
    and, on the last piece, the finish reason and usage."""

    text: str
    logprobs: TokenLogprobs
    alternatives: TopAlternatives | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@runtime_checkable
class Backend(Protocol):
    """What a tier needs from an engine."""

    @property
    def model_id(self) -> str:
        """The model's id, stamped on scores and shown as `model` in replies."""
        ...

    async def generate(self, request: GenerationRequest) -> Generation: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Stream the completion. Closing the iterator early (aclose) aborts the generation."""
        ...

    async def score(self, texts: Sequence[str], *, top_k: int = 0) -> list[TokenLogprobs]:
        """Per-token log-probabilities of each text under the model (prompt scoring),
        with the top-k log-probabilities of every position when top_k > 0."""
        ...

    async def check(self) -> None:
        """Raise a RouterError unless the model is loadable / the upstream reachable."""
        ...

    async def aclose(self) -> None: ...
