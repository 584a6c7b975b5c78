"""POST /v1/chat/completions

`endpoint` takes nothing but the request: the hot lane (`router.serve.hot_lane`) calls it
without FastAPI's per-request dependency solving and query parsing (about 15% of the router's
CPU per request, measured with py-spy). The FastAPI route stays for the OpenAPI document and
for other methods (405). Errors are raised as ever; the app's handlers answer.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from router.serve.error_handlers import request_id_of
from router.serve.respond import respond
from router.serve.schemas import (
    ChatBody,
    chat_request,
    check_supported,
    parse_body,
    prompt_text_of,
)
from router.serve.state import ServeState

router = APIRouter(prefix="/v1", tags=["chat"])


async def endpoint(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    body = parse_body(await request.body(), ChatBody)
    direct = state.cascade.route(body.model)
    check_supported(body, [t.config for t in ([direct] if direct else state.cascade.tiers)])
    gen = chat_request(body, state.settings.server)
    return await respond(state, chat=True, model=body.model, request=gen,
                         prompt=prompt_text_of(body), stream=body.stream,
                         logprobs_k=(body.top_logprobs or 0) if body.logprobs else None,
                         include_usage=body.include_usage,
                         request_id=request_id_of(request))


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    return await endpoint(request)
