"""OpenAI request bodies -> validated models -> `GenerationRequest`.

Unknown parameters are ignored (as vLLM does); known ones are type-checked strictly, as OpenAI
does (`"stream": "yes"`, `n: 1.0` and `top_logprobs: false` are wrong types, a seed must fit in
an int64), and a bad one is a 400 whose `param` names it. `max_tokens` is clamped to
`server.max_tokens_limit`. Sampling and format parameters the router does not use itself
(`FORWARDED`) are passed to the tiers whose backend supports them; a request that sets one for a
tier that does not, or sets tool calling (no tier relays tool calls), is a 400 naming it: a
parameter is never dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from router.backends.base import ChatMessage, GenerationRequest
from router.config import ServerConfig, TierConfig
from router.errors import InputError

MAX_TOP_LOGPROBS = 20
INT64 = 2**63
M = TypeVar("M", bound=BaseModel)

#: parameters passed through to upstreams, and the backends that take them
FORWARDED = ("logit_bias", "response_format", "presence_penalty", "frequency_penalty")
FORWARDING_BACKENDS = frozenset({"openai_http"})
#: tool calling: a tier's tool calls cannot be scored or relayed, so no tier takes these
TOOL_PARAMS = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call")

TokenId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Body(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    user: str | None = None
    # forwarded to tiers that support them (FORWARDED)
    logit_bias: dict[TokenId, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def forwarded(self) -> dict[str, Any]:
        """The set FORWARDED parameters, in the upstream's JSON (defaults are not sent)."""
        out: dict[str, Any] = {}
        for name in FORWARDED:
            value = getattr(self, name, None)
            if value is None or value == {} or value == 0.0:
                continue
            out[name] = value.model_dump(by_alias=True, exclude_none=True) \
                if isinstance(value, BaseModel) else value
        return out


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
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
    # no tier relays tool calls: set, they are refused by name (`unsupported`)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None


class CompletionBody(_Body):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        description="one prompt per request")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Literal[False] = Field(False, description="echo is not supported")

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


def _first_error(exc: ValidationError) -> Any:
    """The error to report: the first one, but for a parameter whose union of types failed
    in every member, the member whose type matched and whose value did not (`stop` with five
    strings is "too long", not "not a string")."""
    errors = exc.errors()
    first = errors[0]
    same = [e for e in errors if e["loc"][:1] == first["loc"][:1]]
    value_errors = [e for e in same if _error_code(e["type"]) == "invalid_value"]
    return value_errors[0] if value_errors else first


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
        err = _first_error(exc)
        loc = ".".join(str(p) for p in err["loc"])
        msg = "Field required" if err["type"] == "missing" else err["msg"]
        raise InputError(f"{loc}: {msg}", param=str(err["loc"][0]) if err["loc"] else None,
                         code=_error_code(err["type"])) from None


def check_supported(body: _Body, tiers: Sequence[TierConfig]) -> None:
    """A 400 naming the first parameter that a tier which may answer cannot take.

    Example: `logit_bias` set and a tier with `backend: embedded` in the plan -> InputError
    "logit_bias is not supported by tier small (backend embedded)", param "logit_bias".
    """
    for name in TOOL_PARAMS:
        if getattr(body, name, None) is not None:
            raise InputError(f"{name} is not supported: the router does not relay tool calls",
                             param=name, code="unsupported_parameter")
    for name in body.forwarded():
        for tier in tiers:
            if tier.backend not in FORWARDING_BACKENDS:
                raise InputError(f"{name} is not supported by tier {tier.name} "
                                 f"(backend {tier.backend})", param=name,
                                 code="unsupported_parameter")


def _temperature(requested: float | None, server: ServerConfig) -> float:
    """The client's temperature, else the server's default (OpenAI's own default is 1.0;
    confidence from raw logprobs is sharper on greedy answers, so configs often use 0)."""
    return server.default_temperature if requested is None else requested


def _max_tokens(requested: int | None, server: ServerConfig) -> int:
    return min(requested or server.default_max_tokens, server.max_tokens_limit)


def chat_request(body: ChatBody, server: ServerConfig) -> GenerationRequest:
    """The chat body -> the request every tier is asked; `top_logprobs` is the client's k
    (0 when it asks for none), each tier asks for at least what its confidence reads
    (`Tier.request_for`)."""
    messages = tuple(ChatMessage("system" if m.role == "developer" else m.role, m.text())
                     for m in body.messages)
    return GenerationRequest(
        messages=messages, max_tokens=_max_tokens(body.max_completion_tokens or body.max_tokens,
                                                  server),
        temperature=_temperature(body.temperature, server), top_p=body.top_p, stop=body.stops(),
        top_logprobs=body.top_logprobs or 0, seed=body.seed,
        extra=body.forwarded())


def completion_request(body: CompletionBody, server: ServerConfig) -> GenerationRequest:
    prompt = body.prompt_text()
    if not prompt:
        raise InputError("prompt must not be empty", param="prompt")
    return GenerationRequest(
        prompt=prompt, max_tokens=_max_tokens(body.max_tokens, server),
        temperature=_temperature(body.temperature, server), top_p=body.top_p, stop=body.stops(),
        top_logprobs=body.logprobs or 0, seed=body.seed,
        extra=body.forwarded())


def prompt_text_of(body: ChatBody | CompletionBody) -> str:
    """The text the prompt gate scores: the user turns of a chat, or the prompt."""
    if isinstance(body, ChatBody):
        return "\n".join(m.text() for m in body.messages if m.role == "user")
    return body.prompt_text()
