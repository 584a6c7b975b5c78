"""POST /v1/completions (`endpoint` is what the hot lane calls, as for chat completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from router.serve.error_handlers import request_id_of
from router.serve.respond import respond
from router.serve.schemas import (
    CompletionBody,
    check_supported,
    completion_request,
    parse_body,
    prompt_text_of,
)
from router.serve.state import ServeState

router = APIRouter(prefix="/v1", tags=["completions"])


async def endpoint(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    body = parse_body(await request.body(), CompletionBody)
    direct = state.cascade.route(body.model)
    check_supported(body, [t.config for t in ([direct] if direct else state.cascade.tiers)])
    gen = completion_request(body, state.settings.server)
    return await respond(state, chat=False, model=body.model, request=gen,
                         prompt=prompt_text_of(body), stream=body.stream,
                         logprobs_k=body.logprobs, include_usage=body.include_usage,
                         request_id=request_id_of(request))


@router.post("/completions", response_model=None)
async def completions(request: Request) -> Response:
    return await endpoint(request)
