"""OpenAI request bodies -> validated models -> `GenerationRequest`.

Unknown parameters are ignored (as vLLM does); known ones are type-checked, and a bad one is a
400 whose `param` names it. `max_tokens` is clamped to `server.max_tokens_limit`.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.backends.base import ChatMessage, GenerationRequest
from router.config import ServerConfig
from router.errors import InputError

MAX_TOP_LOGPROBS = 20
M = TypeVar("M", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionBody(_Body):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise InputError("only one prompt per request is supported", param="prompt")
        return self.prompt[0]


def _error_code(pydantic_type: str) -> str:
    """Pydantic's error type -> an OpenAI-style code.

    Example: "missing" -> "missing_required_parameter"; "int_parsing" -> "invalid_type";
    "greater_than_equal" -> "invalid_value".
    """
    if pydantic_type == "missing":
        return "missing_required_parameter"
    if pydantic_type.endswith(("_type", "_parsing")) or pydantic_type in ("model_attributes_type",
                                                                           "dict_type"):
        return "invalid_type"
    return "invalid_value"


def parse_body(raw: bytes, model: type[M]) -> M:
    """Raw JSON -> a validated body, or an InputError naming the first bad parameter."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "Field required" if err["type"] == "missing" else err["msg"]
        raise InputError(f"{loc}: {msg}", param=str(err["loc"][0]) if err["loc"] else None,
                         code=_error_code(err["type"])) from None


def _temperature(requested: float | None, server: ServerConfig) -> float:
    """The client's temperature, else the server's default (OpenAI's own default is 1.0;
    confidence from raw logprobs is sharper on greedy answers, so configs often use 0)."""
    return server.default_temperature if requested is None else requested


def _max_tokens(requested: int | None, server: ServerConfig) -> int:
    return min(requested or server.default_max_tokens, server.max_tokens_limit)


def chat_request(body: ChatBody, server: ServerConfig, top_k: int) -> GenerationRequest:
    messages = tuple(ChatMessage("system" if m.role == "developer" else m.role, m.text())
                     for m in body.messages)
    return GenerationRequest(
        messages=messages, max_tokens=_max_tokens(body.max_completion_tokens or body.max_tokens,
                                                  server),
        temperature=_temperature(body.temperature, server), top_p=body.top_p, stop=body.stops(),
        top_logprobs=max(top_k, body.top_logprobs or 0, 1), seed=body.seed)


def completion_request(body: CompletionBody, server: ServerConfig,
                       top_k: int) -> GenerationRequest:
    if body.echo:
        raise InputError("echo is not supported", param="echo")
    prompt = body.prompt_text()
    if not prompt:
        raise InputError("prompt must not be empty", param="prompt")
    return GenerationRequest(
        prompt=prompt, max_tokens=_max_tokens(body.max_tokens, server),
        temperature=_temperature(body.temperature, server), top_p=body.top_p, stop=body.stops(),
        top_logprobs=max(top_k, body.logprobs or 0, 1), seed=body.seed)


def prompt_text_of(body: ChatBody | CompletionBody) -> str:
    """The text the prompt gate scores: the user turns of a chat, or the prompt."""
    if isinstance(body, ChatBody):
        return "\n".join(m.text() for m in body.messages if m.role == "user")
    return body.prompt_text()
