"""The embedded backend: a GGUF model in-process through llama.cpp, off the event loop.

A llama.cpp context is not thread-safe. Requests queue on an asyncio.Lock (no thread is held
while waiting), and the engine itself is only touched inside worker threads that hold its
threading.Lock, so an aborted stream can never overlap the next request's work.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from router.backends._llama import Cancelled, LlamaEngine, SampleParams, Step
from router.backends.base import (
    FinishReason,
    Generation,
    GenerationRequest,
    StreamDelta,
    TopAlternatives,
    Usage,
)
from router.backends.collect import collect, empty_logprobs
from router.backends.stops import StopScanner
from router.errors import ConfigError, InputError
from router.prompting import JinjaChatTemplate, PromptTemplate
from router.scoring import TokenLogprobs
from router.weights import Weights, model_file

T = TypeVar("T")


@dataclass
class _StreamMeta:
    """Filled by the worker thread before it queues the matching event."""

    prompt_tokens: int = 0
    completion_tokens: int = -1
    stops: tuple[str, ...] = ()
    finish: FinishReason = "stop"


_END = object()


@dataclass(frozen=True)
class EmbeddedSettings:
    model: str  # packaged model id or GGUF path
    n_ctx: int = 2048
    n_batch: int = 512
    n_threads: int | None = None
    score_window: int | None = None  # default: n_ctx
    score_stride: int | None = None  # default: half the window
    score_top_k: int = 0
    seed: int = 0
    weights: Weights = "file"  # "f16"/"f32": the file's tensors widened (router.weights)
    flash_attn: bool = False


class EmbeddedBackend:
    def __init__(
        self, model_id: str, settings: EmbeddedSettings, template: PromptTemplate | None = None
    ) -> None:
        self._model_id = model_id
        self.settings = settings
        self._template = template
        self._engine: LlamaEngine | None = None
        self._chat_template: PromptTemplate | None = template
        self._queue = asyncio.Lock()
        self._engine_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    # -- engine access ----------------------------------------------------------------------

    def _load_sync(self) -> LlamaEngine:
        if self._engine is None:
            path: Path = model_file(self.settings.model, self.settings.weights)
            self._engine = LlamaEngine(
                path,
                n_ctx=self.settings.n_ctx,
                n_batch=self.settings.n_batch,
                n_threads=self.settings.n_threads,
                seed=self.settings.seed,
                flash_attn=self.settings.flash_attn,
            )
        return self._engine

    def _locked(self, fn: Callable[[LlamaEngine], T]) -> Callable[[], T]:
        def run() -> T:
            with self._engine_lock:
                return fn(self._load_sync())

        return run

    async def _run(self, fn: Callable[[LlamaEngine], T]) -> T:
        async with self._queue:
            return await asyncio.to_thread(self._locked(fn))

    async def check(self) -> None:
        await self._run(lambda e: e.n_vocab)

    async def aclose(self) -> None:
        self._engine = None

    # -- prompts ----------------------------------------------------------------------------

    def _template_for(self, engine: LlamaEngine) -> PromptTemplate:
        if self._chat_template is None:
            source = engine.metadata.get("tokenizer.chat_template")
            if not source:
                raise ConfigError(
                    f"model {self.model_id!r} has no chat template in its GGUF metadata: "
                    "set prompt_template for this tier"
                )
            bos = engine._piece(engine.bos, special=True).decode() if engine.bos >= 0 else ""
            eos = engine._piece(engine.eos, special=True).decode() if engine.eos >= 0 else ""
            self._chat_template = JinjaChatTemplate(source, bos_token=bos, eos_token=eos)
        return self._chat_template

    def _prepare(
        self, engine: LlamaEngine, req: GenerationRequest
    ) -> tuple[list[int], tuple[str, ...]]:
        if req.messages is not None:
            template = self._template_for(engine)
            text = template.render(req.messages)
            bos = engine._piece(engine.bos, special=True).decode() if engine.bos >= 0 else ""
            add_bos = engine.add_bos and not (bos and text.startswith(bos))
            ids = engine.tokenize(text, add_bos=add_bos, special=template.parses_special)
            return ids, tuple(req.stop) + template.stop
        assert req.prompt is not None
        ids = engine.tokenize(req.prompt, add_bos=engine.add_bos)
        if not ids:
            raise InputError("the prompt is empty", param="prompt")
        return ids, tuple(req.stop)

    # -- generation -------------------------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()
        params = SampleParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            top_k=max(request.top_logprobs, 1),
            seed=request.seed,
        )
        meta = _StreamMeta()

        def produce(engine: LlamaEngine) -> None:
            try:
                ids, stops = self._prepare(engine, request)
                meta.prompt_tokens = len(ids)
                meta.stops = stops
                loop.call_soon_threadsafe(queue.put_nowait, ("start", None))
                n = 0
                for step in engine.generate(ids, params, cancel):
                    n += 1
                    alts = tuple(engine.token_str(int(t)) for t in step.top_ids)
                    loop.call_soon_threadsafe(queue.put_nowait, ("step", (step, alts)))
                meta.completion_tokens = n
                meta.finish = "length" if n >= params.max_tokens else "stop"
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Cancelled:
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as exc:  # handed to the consumer, raised there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        async with self._queue:
            worker = asyncio.ensure_future(asyncio.to_thread(self._locked(produce)))
            try:
                async for delta in self._consume(queue, meta, cancel):
                    yield delta
            finally:
                cancel.set()
                await asyncio.shield(worker)

    async def _consume(
        self, queue: asyncio.Queue[object], meta: _StreamMeta, cancel: threading.Event
    ) -> AsyncIterator[StreamDelta]:
        scanner: StopScanner | None = None
        n_tokens = 0
        while True:
            item = queue.get_nowait() if not queue.empty() else await queue.get()
            kind, payload = cast(tuple[str, Any], item)
            if kind == "error":
                assert isinstance(payload, BaseException)
                raise payload
            if kind == "start":
                scanner = StopScanner(meta.stops)
                continue
            assert scanner is not None
            if kind == "end":
                tail = scanner.flush()
                finish = meta.finish
                usage = Usage(
                    meta.prompt_tokens,
                    meta.completion_tokens if meta.completion_tokens >= 0 else n_tokens,
                )
                yield StreamDelta(
                    text=tail,
                    logprobs=empty_logprobs(),
                    finish_reason=finish,
                    usage=usage,
                )
                return
            step, alts = payload  # type: ignore[misc]
            assert isinstance(step, Step)
            n_tokens += 1
            text, stopped = scanner.feed(step.text)
            lp = TokenLogprobs(
                logprobs=np.array([step.logprob], dtype=np.float64),
                token_bytes=np.array([step.nbytes], dtype=np.int64),
                top_logprobs=step.top_logprobs[None, :].astype(np.float64),
                tokens=(step.text,),
            )
            if stopped:
                cancel.set()
                yield StreamDelta(
                    text=text,
                    logprobs=lp,
                    alternatives=TopAlternatives((alts,)),
                    finish_reason="stop",
                    usage=Usage(meta.prompt_tokens, n_tokens),
                )
                return
            # running usage on every delta: an aborted stream is still accounted for
            yield StreamDelta(text=text, logprobs=lp, alternatives=TopAlternatives((alts,)),
                              usage=Usage(meta.prompt_tokens, n_tokens))

    async def generate(self, request: GenerationRequest) -> Generation:
        return await collect(self.model_id, self.stream(request))

    # -- scoring ----------------------------------------------------------------------------

    async def score(self, texts: Sequence[str], *, top_k: int = 0) -> list[TokenLogprobs]:
        s = self.settings
        k = top_k or s.score_top_k
        return await self._run(
            lambda e: e.score_many(texts, window=s.score_window, stride=s.score_stride, top_k=k)
        )

    async def tokenize(self, text: str) -> list[int]:
        return await self._run(lambda e: e.tokenize(text, add_bos=e.add_bos))
