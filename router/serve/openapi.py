"""The OpenAPI document of `router serve` (`GET /openapi.json`): the routes FastAPI knows, with
the request bodies the routes parse themselves (`schemas.ChatBody`, `schemas.CompletionBody`),
the answers `openai_format` writes, OpenAI's error body on every error status, and `model`
limited to the models this router serves. The test suite fuzzes the router against it
(schemathesis), so the document and the code cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from router.config import Settings
from router.serve.schemas import ChatBody, CompletionBody

REF = "#/components/schemas/{model}"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Doc):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(_Doc):
    error: ErrorDetail


class UsageBody(_Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(_Doc):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Doc):
    content: list[ChatTokenLogprob]


class AssistantMessage(_Doc):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Doc):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(_Doc):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageBody


class CompletionLogprobs(_Doc):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(_Doc):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"]


class TextCompletion(_Doc):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageBody


class ModelEntry(_Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Doc):
    object: Literal["list"]
    data: list[ModelEntry]


class Health(_Doc):
    status: Literal["ok"]


class Readiness(_Doc):
    status: Literal["ok", "unavailable"]
    tiers: dict[str, str] | None = None  # absent for a caller without a key (ops_require_key)
    request_id: str | None = None  # when a tier is not ready: its reason is logged under it


#: statuses with OpenAI's error body, by route kind
API_ERRORS = {400: "Invalid request", 401: "Missing or wrong API key", 404: "Unknown model",
              408: "The request body did not arrive in time", 413: "Request body too large",
              429: "Overloaded (see Retry-After)", 500: "Internal error",
              502: "A model tier failed", 503: "A model tier is unavailable",
              504: "A model tier did not answer in time"}
MODELS_ERRORS = {k: v for k, v in API_ERRORS.items() if k in (401, 408, 413, 429, 500)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def _errors(statuses: dict[int, str]) -> dict[str, Any]:
    return {str(code): _json(_ref(ErrorBody), text) for code, text in statuses.items()}


def openapi_schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The document: FastAPI's paths, completed with bodies, answers and errors."""
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="OpenAI-compatible cascade router")
    models: list[type[BaseModel]] = [ChatBody, CompletionBody, ErrorBody, ChatCompletion,
                                     TextCompletion, ModelList, Health, Readiness]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs.get("$defs", {}))
    served = [settings.server.cascade_model, *(t.model for t in settings.tiers),
              *(t.name for t in settings.tiers)]
    for body in ("ChatBody", "CompletionBody"):
        props = schemas[body]["properties"]
        props["model"]["enum"] = sorted(set(served))
        props["logit_bias"]["anyOf"][0]["additionalProperties"] = False  # token ids only
    # OpenAPI 3.1: the schema of an event stream describes one event; `data` is a JSON chunk
    # (`chat.completion.chunk` / `text_completion`, or an error body), the last one `[DONE]`
    stream = {"text/event-stream": {"schema": {
        "type": "object", "required": ["data"],
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}
    paths = doc["paths"]
    for path, body_model, answer in (("/v1/chat/completions", ChatBody, ChatCompletion),
                                     ("/v1/completions", CompletionBody, TextCompletion)):
        op = paths[path]["post"]
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": _ref(body_model)}}}
        ok = _json(_ref(answer), "The answer (`stream: true`: server-sent events)")
        ok["content"].update(stream)
        op["responses"] = {"200": ok, **_errors(API_ERRORS)}
    paths["/v1/models"]["get"]["responses"] = {
        "200": _json(_ref(ModelList), "The cascade's model, then every tier's"),
        **_errors(MODELS_ERRORS)}
    paths["/healthz"]["get"]["responses"] = {"200": _json(_ref(Health), "Alive")}
    paths["/readyz"]["get"]["responses"] = {
        "200": _json(_ref(Readiness), "Every tier is ready"),
        "503": _json(_ref(Readiness), "A tier is not ready")}
    metrics_errors = _errors({401: API_ERRORS[401]}) if settings.server.ops_require_key else {}
    paths["/metrics"]["get"]["responses"] = {
        "200": {"description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}, **metrics_errors}
    if settings.server.api_keys or settings.server.api_keys_env:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
            for op in paths[path].values():
                op["security"] = [{"bearer": []}]
    return doc
