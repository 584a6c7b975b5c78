"""Shared by the chat and completions routes: run or stream the cascade, format the reply,
log the decision."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import orjson
from fastapi.responses import Response

from router.backends.base import GenerationRequest, Usage
from router.errors import RouterError, UpstreamTimeout
from router.probes import question_of
from router.serve import openai_format as fmt
from router.serve.cascade import Outcome
from router.serve.decision_log import record_for
from router.serve.state import ServeState
from router.serve.streaming import EventStreamResponse

log = logging.getLogger("router.serve")


def _log(state: ServeState, outcome: Outcome, *, rid: str, endpoint: str, model: str,
         stream: bool, started: float, prompt: str, usage: Usage | None,
         status: int = 200, request: GenerationRequest | None = None) -> None:
    if state.decision_log is None:
        return
    state.decision_log.write(record_for(
        outcome, rid=rid, endpoint=endpoint, requested_model=model, stream=stream,
        latency_s=time.perf_counter() - started, prompt=prompt,
        include_prompt=state.decision_log.include_prompt, status=status,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        question=question_of(request) if request is not None else ""))


def _shadow(state: ServeState, outcome: Outcome, *, direct: bool, request: GenerationRequest,
            prompt: str, answer: str, rid: str | None = None) -> None:
    """Quality sampling of an answer a lower tier gave and the cascade accepted."""
    if (state.shadow is None or direct or outcome.escalated or outcome.degraded
            or outcome.tier is state.cascade.top):
        return
    state.shadow.maybe_sample(tier=outcome.tier.name, request=request, prompt_text=prompt,
                              answer=answer, rid=rid)


class JsonAnswer(Response):
    """A whole answer: Starlette's `Response` with its headers encoded in one pass (its
    `init_headers` lower-cases, encodes and searches them; ours are lower case already), in
    the same order: ours, content-length, content-type."""

    media_type = "application/json"

    def __init__(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [*((k.encode(), v.encode("latin-1")) for k, v in headers.items()),
                            (b"content-length", str(len(body)).encode()),
                            (b"content-type", b"application/json")]


def _logprobs(chat: bool, k: int | None, delta_lp: Any, alts: Any, offset: int = 0
              ) -> dict[str, Any] | None:
    if k is None:
        return None
    if chat:
        return fmt.chat_logprobs(delta_lp, alts, k)
    return fmt.completion_logprobs(delta_lp, alts, k, offset)


async def respond(state: ServeState, *, chat: bool, model: str, request: GenerationRequest,
                  prompt: str, stream: bool, logprobs_k: int | None,
                  include_usage: bool, request_id: str) -> Response:
    """`logprobs_k`: None when the client did not ask for logprobs, else its top-k (may be 0);
    `request_id` is quoted in the error event of a stream that fails after its first byte."""
    cascade = state.cascade
    direct = cascade.route(model)
    started = time.perf_counter()
    endpoint = "chat" if chat else "completions"
    rid = fmt.new_id("chatcmpl" if chat else "cmpl")
    if not stream:
        try:
            async with asyncio.timeout(state.settings.server.request_timeout_s):
                result = await cascade.run(request, direct=direct, prompt_text=prompt)
        except TimeoutError:
            raise UpstreamTimeout(f"no answer within {state.settings.server.request_timeout_s} s "
                                  "(server.request_timeout_s)", public=True) from None
        gen, out = result.generation, result.outcome
        lp = _logprobs(chat, logprobs_k, gen.logprobs, gen.alternatives)
        build = fmt.chat_response if chat else fmt.completion_response
        payload = build(rid=rid, model=out.tier.model, text=gen.text, finish=gen.finish_reason,
                     usage=gen.usage, logprobs=lp)
        _log(state, out, rid=rid, endpoint=endpoint, model=model, stream=False,
             started=started, prompt=prompt, usage=gen.usage, request=request)
        _shadow(state, out, direct=direct is not None, request=request, prompt=prompt, rid=rid,
                answer=gen.text)
        return JsonAnswer(orjson.dumps(payload), out.headers())

    events = cascade.stream_batches(request, direct=direct, prompt_text=prompt)
    limit = state.settings.server.request_timeout_s
    try:
        # until a tier is committed nothing was sent: the request timeout still gives a 504
        async with asyncio.timeout(limit):
            first = await anext(events)
    except TimeoutError:
        await events.aclose()
        raise UpstreamTimeout(f"no tier committed an answer within {limit} s "
                              "(server.request_timeout_s)", public=True) from None
    except BaseException:
        await events.aclose()
        raise
    assert isinstance(first, Outcome)
    outcome = first
    writer = fmt.ChunkWriter(chat=chat, rid=rid, model=outcome.tier.model)

    async def body() -> AsyncGenerator[bytes, None]:
        """One write per batch of deltas (the judged buffer is one), each delta its own
        event; the first write starts with the role chunk, the last ends with [DONE]."""
        finish: str | None = None
        usage: Usage | None = None
        status = 200
        texts: list[str] = []
        out: list[bytes] = [writer.role()] if chat else []
        try:
            async for batch in events:
                assert isinstance(batch, list)
                for ev in batch:
                    if ev.usage is not None:
                        usage = ev.usage
                    if ev.finish_reason is not None:
                        finish = ev.finish_reason
                    if ev.text:
                        texts.append(ev.text)
                    if ev.text or (logprobs_k is not None and len(ev.logprobs)):
                        lp = _logprobs(chat, logprobs_k, ev.logprobs, ev.alternatives,
                                       writer.offset)
                        out.append(writer.delta(ev.text, lp))
                if out:
                    yield b"".join(out)
                    out = []
            out.append(writer.delta("", None, finish or "stop"))
            if include_usage:
                out.append(writer.usage(usage or Usage(0, 0)))
            _shadow(state, outcome, direct=direct is not None, request=request, prompt=prompt,
                    rid=rid, answer="".join(texts))
        except RouterError as err:
            status = err.status_code
            log.warning("%s stream failed after its first byte -> %d %s: %s [%s]", endpoint,
                        status, err.type, err.message, request_id)
            out.append(fmt.sse(err.client_body(request_id)))
        finally:
            await events.aclose()
            _log(state, outcome, rid=rid, endpoint=endpoint, model=model, stream=True,
                 started=started, prompt=prompt, usage=usage, status=status,
                 request=request)
        out.append(fmt.SSE_DONE)
        yield b"".join(out)

    headers = {**outcome.headers(), "cache-control": "no-cache"}
    return EventStreamResponse(body(), headers=headers)
