"""Synchronous llama.cpp engine: decode, log-softmax, sample, score. Not thread-safe.

llama-cpp-python's own `logprobs`/`echo` paths are slow (a Python sort of the whole vocabulary
per token) and, for models without a BOS token, its echo logprobs are shifted by one. This
module drives the context directly: each decode asks llama.cpp for exactly the logits it needs,
and numpy turns them into log-probabilities in one vectorised step per batch.

Token alignment: the logits output at position i predict token i+1. A text's first token is
scored only when the model prepends BOS (as vLLM/Transformers do); otherwise it is context.

Scoring many texts (`score_many`, the default of the embedded backend) packs their short windows
into one llama.cpp batch of up to PACK_TOKENS tokens, one sequence id per window, each starting at
position 0 in a KV cache cleared before the batch: a window attends only to its own tokens, so
its logits are those of scoring it alone, up to the rounding of llama.cpp's batched kernels.
Only the positions that predict a scored token ask for logits (context-only positions of a
strided window skip the LM head), and numpy reduces them to a log-sum-exp and one gather per
row (`router.backends._packing`). `score` keeps the one-text-at-a-time path as the reference.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.backends import _vocab_cache
from router.backends._packing import (
    Segment,
    gather_logprobs,
    pack_segments,
    row_logsumexp,
    top_k_logprobs,
)
from router.errors import InputError, ModelError
from router.scoring import TokenLogprobs, Window, window_plan

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: sequence ids one packed batch may hold (llama.cpp allows up to 256)
MAX_PACKED_SEQUENCES = 64
#: tokens per packed batch. Without flash attention, llama.cpp's CPU attention computes every
#: (token, cell) pair of the batch and masks the other sequences' cells afterwards, so a
#: packed batch of n tokens pays n^2 attention whatever its windows' lengths; measured with
#: bench/scoring_profile.py, decode throughput peaks near 128-token batches on SmolLM2
PACK_TOKENS = 128


def log_softmax_rows(logits: F32) -> F32:
    """Row-wise log-softmax. Example: [[0, 0]] -> [[-0.693, -0.693]]."""
    m = logits.max(axis=1, keepdims=True)
    shifted = logits - m
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return np.asarray(shifted - lse, dtype=np.float32)


def top_k_rows(logprobs: F32, k: int) -> tuple[npt.NDArray[np.int64], F32]:
    """Indices and values of each row's k largest entries, sorted descending."""
    k = min(k, logprobs.shape[1])
    part = np.argpartition(-logprobs, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(logprobs, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64), np.take_along_axis(
        vals, order, axis=1
    )


@dataclass(frozen=True)
class SampleParams:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    top_k: int
    seed: int | None


@dataclass(frozen=True)
class Step:
    """One generated token: its text (possibly empty while UTF-8 is incomplete) and scores."""

    token: int
    text: str
    logprob: float
    nbytes: int
    top_ids: npt.NDArray[np.int64]
    top_logprobs: F32


class Cancelled(Exception):
    """Generation was aborted by the caller."""


_backend_ready = False


def _init_backend(llama_cpp: Any) -> None:
    """llama.cpp's one-time process set-up, and its log quiet but for errors (as `llama_cpp.Llama`
    does with verbose=False: llama-cpp-python routes llama.cpp's log through this logger)."""
    global _backend_ready
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


class LlamaEngine:
    """One GGUF model in one llama.cpp context. Callers serialise access (see EmbeddedBackend)."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int | None = None,
        seed: int = 0,
        flash_attn: bool = False,
    ) -> None:
        try:
            import llama_cpp
            from llama_cpp import _internals
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ModelError(f"llama-cpp-python is not installed: {exc}") from None
        threads = n_threads or max(1, os.cpu_count() or 1)
        _init_backend(llama_cpp)
        # the model, context and batch are made directly rather than through `llama_cpp.Llama`,
        # which also builds a one-sequence context (replaced here by one that holds the packed
        # sequences), a sampler, its chat handlers and score buffers: ~0.25 s at every start
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = ctx_params.n_ubatch = n_batch
        ctx_params.n_threads = ctx_params.n_threads_batch = threads
        ctx_params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                      else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        # a unified KV cache (`kv_unified`) keeps one cell pool for all sequence ids, so a
        # packed batch may mix windows of any lengths; generation uses sequence 0 alone
        ctx_params.n_seq_max = MAX_PACKED_SEQUENCES
        ctx_params.kv_unified = True
        # YaRN settings as `Llama` sets them (llama.cpp's -1 would read them from the model)
        ctx_params.yarn_attn_factor, ctx_params.yarn_beta_fast = 1.0, 32.0
        ctx_params.yarn_beta_slow = 1.0
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        try:
            model_params = llama_cpp.llama_model_default_params()
            model_params.n_gpu_layers = 0  # as `Llama` defaults: the CPU, the file mmap'd
            model_params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
            self._model = _internals.LlamaModel(path_model=str(path), params=model_params,
                                                verbose=False)
            self._ctx = _internals.LlamaContext(model=self._model, params=ctx_params,
                                                verbose=False)
            # one sequence id per token (`_decode_packed` and `set_batch` write one)
            self._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1,
                                                verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            self.close()
            raise ModelError(f"cannot load GGUF model {path}: {exc}") from None
        self._lc: Any = llama_cpp
        self.path = path
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.seed = seed  # generation seeds its own sampler per request (SampleParams.seed)
        self.n_vocab = int(self._model.n_vocab())
        self._vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        self.add_bos = bool(self._model.add_bos_token())
        self.bos = int(self._model.token_bos())
        self.eos = int(self._model.token_eos())
        self.metadata: dict[str, str] = dict(self._model.metadata())
        self._cached: list[int] = []  # tokens whose KV entries are in the context
        self._pieces: list[bytes] | None = None
        self._piece_len: npt.NDArray[np.int64] | None = None

    def close(self) -> None:
        """Free the batch, the context and the model, in that order (idempotent)."""
        for name in ("_batch", "_ctx", "_model"):
            part = getattr(self, name, None)
            if part is not None:
                part.close()
                setattr(self, name, None)

    def __del__(self) -> None:
        self.close()

    # -- vocabulary -------------------------------------------------------------------------

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:  # pragma: no cover - no piece is that long in our models
            buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return bytes(buf.raw[:n])

    @property
    def pieces(self) -> list[bytes]:
        """The UTF-8 bytes of every token (special tokens render as empty)."""
        if self._pieces is None:
            pieces = _vocab_cache.load(self.path, self.n_vocab)
            if pieces is None:
                pieces = [self._piece(t) for t in range(self.n_vocab)]
                _vocab_cache.save(self.path, pieces)
            self._pieces = pieces
            self._piece_len = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        return self._pieces

    @property
    def piece_len(self) -> npt.NDArray[np.int64]:
        if self._piece_len is None:
            _ = self.pieces
        assert self._piece_len is not None
        return self._piece_len

    def token_str(self, token: int) -> str:
        return self.pieces[token].decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lc.llama_vocab_is_eog(self._vocab, token))

    def tokenize(self, text: str, *, add_bos: bool, special: bool = False) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def token_id(self, piece: str) -> int | None:
        ids = self.tokenize(piece, add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    # -- decoding ---------------------------------------------------------------------------

    def _reset(self) -> None:
        """Start from an empty KV cache.

        Reusing a cached prompt prefix would save a little prompt work, but llama.cpp's batched
        and single-token kernels round differently, so a reused prefix changes later logits
        slightly and a greedy answer could depend on the previous request. Every request
        evaluates its whole prompt in batches instead: same request, same answer.
        """
        self._lc.llama_memory_clear(self._ctx.memory, False)  # every sequence id
        self._cached.clear()

    def _decode(self, tokens: Sequence[int], n_past: int, all_logits: bool) -> F32:
        """Evaluate `tokens` at positions n_past..; return log-softmax rows.

        all_logits: one row per token (row i predicts token i+1); else only the last row.
        """
        out: list[F32] = []
        batch = self._batch
        for i in range(0, len(tokens), self.n_batch):
            chunk = list(tokens[i : i + self.n_batch])
            last_chunk = i + self.n_batch >= len(tokens)
            want_all = all_logits
            batch.set_batch(batch=chunk, n_past=n_past + i, logits_all=want_all)
            try:
                self._ctx.decode(batch)
            except RuntimeError as exc:
                self._ctx.kv_cache_seq_rm(-1, n_past + i, -1)
                del self._cached[n_past + i :]
                raise ModelError(f"llama.cpp decode failed: {exc}") from None
            self._cached.extend(chunk)
            if want_all or last_chunk:
                rows = len(chunk) if want_all else 1
                raw = np.ctypeslib.as_array(
                    self._ctx.get_logits(),  # type: ignore[no-untyped-call]
                    shape=(rows * self.n_vocab,),
                )
                out.append(log_softmax_rows(raw.reshape(rows, self.n_vocab)))
        return np.concatenate(out) if out else np.zeros((0, self.n_vocab), np.float32)

    # -- scoring ----------------------------------------------------------------------------

    def score(
        self, text: str, *, window: int | None = None, stride: int | None = None, top_k: int = 0
    ) -> TokenLogprobs:
        """Log-probability of every scorable token of `text`, in strided windows if long."""
        ids = self._score_ids(text)
        return self._score_plan(ids, self._windows(len(ids), window, stride), top_k)

    def _score_ids(self, text: str) -> list[int]:
        if not text:
            raise InputError("cannot score an empty text")
        ids = self.tokenize(text, add_bos=self.add_bos)
        if len(ids) < 2:  # logits at position i predict token i+1
            raise InputError(
                f"text {text[:40]!r} has {len(ids)} token(s): at least 2 are needed to "
                "score it with a model that has no BOS token"
            )
        return ids

    def _windows(self, n_tokens: int, window: int | None, stride: int | None) -> list[Window]:
        win = min(window or self.n_ctx, self.n_ctx)
        return window_plan(n_tokens, win, stride or max(1, win // 2))

    def _score_plan(self, ids: list[int], plan: list[Window], top_k: int) -> TokenLogprobs:
        lps: list[F32] = []
        tgt: list[npt.NDArray[np.int64]] = []
        tops: list[F32] = []
        for w in plan:
            self._reset()  # every window is evaluated at positions 0..(end-start)
            rows = self._decode(ids[w.start : w.end], 0, all_logits=True)
            lo = max(w.score_from, w.start + 1)  # row j predicts token start + j + 1
            targets = np.asarray(ids[lo : w.end], dtype=np.int64)
            pred = rows[lo - w.start - 1 : w.end - w.start - 1]
            lps.append(np.take_along_axis(pred, targets[:, None], axis=1)[:, 0])
            tgt.append(targets)
            if top_k > 0:
                tops.append(top_k_rows(pred, top_k)[1])
        targets_all = np.concatenate(tgt)
        return TokenLogprobs(
            logprobs=np.concatenate(lps).astype(np.float64),
            token_bytes=self.piece_len[targets_all],
            top_logprobs=np.concatenate(tops).astype(np.float64) if tops else None,
            tokens=tuple(self.token_str(int(t)) for t in targets_all),
        )

    # -- packed scoring ---------------------------------------------------------------------

    def score_many(
        self,
        texts: Sequence[str],
        *,
        window: int | None = None,
        stride: int | None = None,
        top_k: int = 0,
    ) -> list[TokenLogprobs]:
        """`score` of every text, their windows packed several to a llama.cpp batch.

        Every text is tokenised and checked first, so a text that cannot be scored raises
        InputError before any work. Results come back in the order of `texts`.
        """
        ids = [self._score_ids(t) for t in texts]
        segs: list[Segment] = []
        for d, seq in enumerate(ids):
            for w in self._windows(len(seq), window, stride):
                lo = max(w.score_from, w.start + 1)  # row j predicts token start + j + 1
                segs.append(Segment(d, w.start, w.end, lo - w.start - 1))
        done: list[tuple[F32, F32 | None]] = [(np.zeros(0, np.float32), None)] * len(segs)
        plan = pack_segments([s.length for s in segs], n_batch=min(self.n_batch, PACK_TOKENS),
                             max_seqs=MAX_PACKED_SEQUENCES)
        for group in plan:
            parts = [segs[i] for i in group]
            for i, res in zip(group, self._eval_segments(ids, parts, top_k), strict=True):
                done[i] = res
        per_doc: list[list[int]] = [[] for _ in texts]
        for i, s in enumerate(segs):
            per_doc[s.doc].append(i)  # windows of a text stay in plan order
        return [self._assemble(ids[d], [segs[i] for i in idx], [done[i] for i in idx])
                for d, idx in enumerate(per_doc)]

    def _eval_segments(
        self, ids: list[list[int]], parts: list[Segment], top_k: int
    ) -> list[tuple[F32, F32 | None]]:
        """Log-probabilities (and top-k) of the output rows of each segment of one batch.

        Segments that fit share one decode; a longer one (alone in its group) is decoded in
        chunks of `n_batch`, its KV cache growing chunk by chunk.
        """
        self._reset()
        toks = [ids[p.doc][p.start : p.end] for p in parts]
        targets = [np.asarray(ids[p.doc][p.start + p.out_from + 1 : p.end], np.int64)
                   for p in parts]
        if len(parts) > 1 or parts[0].length <= self.n_batch:
            logits = self._decode_packed(
                [(seq, t, 0, p.out_from, p.length - 1)
                 for seq, (t, p) in enumerate(zip(toks, parts, strict=True))])
            rows = _reduce(logits, np.concatenate(targets), top_k)
            bounds = itertools.pairwise(np.cumsum([0] + [p.n_out for p in parts]))
            return [(rows[0][a:b], None if rows[1] is None else rows[1][a:b])
                    for a, b in bounds]
        (p,), (t,), (tg,) = parts, toks, targets
        lps: list[F32] = []
        tops: list[F32] = []
        got = 0
        for c0 in range(0, p.length, self.n_batch):
            c1 = min(c0 + self.n_batch, p.length)
            lo, hi = max(p.out_from, c0) - c0, min(p.length - 1, c1) - c0
            logits = self._decode_packed([(0, t[c0:c1], c0, lo, hi)])
            n = len(logits)
            lp, top = _reduce(logits, tg[got : got + n], top_k)
            got += n
            lps.append(lp)
            if top is not None:
                tops.append(top)
        return [(np.concatenate(lps), np.concatenate(tops) if tops else None)]

    def _decode_packed(self, seqs: Sequence[tuple[int, Sequence[int], int, int, int]]) -> F32:
        """One llama_decode of (seq_id, tokens, first position, out_lo, out_hi) sequences.

        Rows out_lo..out_hi-1 (relative to the sequence's tokens) ask for logits. Returns the
        output rows in batch order: a view of llama.cpp's buffer, valid until the next decode.
        """
        b = self._batch.batch
        n = sum(len(t) for _, t, _, _, _ in seqs)
        tok = np.ctypeslib.as_array(b.token, shape=(n,))
        pos = np.ctypeslib.as_array(b.pos, shape=(n,))
        out = np.ctypeslib.as_array(b.logits, shape=(n,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(n,))[:] = 1
        seq_of = b.seq_id
        o = 0
        for seq, t, p0, lo, hi in seqs:
            m = len(t)
            tok[o : o + m] = t
            pos[o : o + m] = np.arange(p0, p0 + m)
            out[o : o + m] = 0
            out[o + lo : o + hi] = 1
            for j in range(o, o + m):  # one pointer per token: no array view exists
                seq_of[j][0] = seq
            o += m
        b.n_tokens = n
        try:
            self._ctx.decode(self._batch)
        except RuntimeError as exc:
            self._reset()
            raise ModelError(f"llama.cpp decode failed: {exc}") from None
        n_out = int(out.sum())
        if n_out == 0:
            return np.zeros((0, self.n_vocab), np.float32)
        raw = np.ctypeslib.as_array(
            self._ctx.get_logits(),  # type: ignore[no-untyped-call]
            shape=(n_out * self.n_vocab,),
        )
        return raw.reshape(n_out, self.n_vocab)

    def _assemble(
        self, ids: list[int], segs: list[Segment], rows: list[tuple[F32, F32 | None]]
    ) -> TokenLogprobs:
        targets = np.concatenate(
            [np.asarray(ids[s.start + s.out_from + 1 : s.end], np.int64) for s in segs])
        tops = [t for _, t in rows if t is not None]
        return TokenLogprobs(
            logprobs=np.concatenate([lp for lp, _ in rows]).astype(np.float64),
            token_bytes=self.piece_len[targets],
            top_logprobs=np.concatenate(tops).astype(np.float64) if tops else None,
            tokens=tuple(self.token_str(int(t)) for t in targets),
        )

    # -- generation -------------------------------------------------------------------------

    def generate(
        self, prompt_ids: list[int], params: SampleParams, cancel: threading.Event | None = None
    ) -> Iterator[Step]:
        """Yield generated tokens one by one; stops at EOG, max_tokens or the context end.

        Stop strings are the caller's business (they span tokens). The caller must hold the
        engine for the whole iteration.
        """
        if len(prompt_ids) >= self.n_ctx:
            raise InputError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context holds "
                f"{self.n_ctx} (prompt plus completion)",
                code="context_length_exceeded",
            )
        rng = np.random.default_rng(params.seed)
        self._reset()
        row = self._decode(prompt_ids, 0, all_logits=False)[-1]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        budget = min(params.max_tokens, self.n_ctx - len(prompt_ids))
        for _ in range(budget):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            token = self._sample(row, params, rng)
            if self.is_eog(token):
                return
            ids, vals = top_k_rows(row[None, :], max(params.top_k, 1))
            piece = self.pieces[token]
            yield Step(
                token=token,
                text=decoder.decode(piece),
                logprob=float(row[token]),
                nbytes=len(piece),
                top_ids=ids[0],
                top_logprobs=vals[0],
            )
            if len(self._cached) + 1 >= self.n_ctx:
                return
            row = self._decode([token], len(self._cached), all_logits=False)[-1]

    @staticmethod
    def _sample(row: F32, params: SampleParams, rng: np.random.Generator) -> int:
        """Greedy at temperature 0, else temperature + nucleus (top-p) sampling."""
        if params.temperature <= 0.0:
            return int(np.argmax(row))
        scaled = row.astype(np.float64) / params.temperature
        scaled -= scaled.max()
        p = np.exp(scaled)
        p /= p.sum()
        if params.top_p < 1.0:
            order = np.argsort(-p)
            cum = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cum, params.top_p) + 1)]
            q = p[keep] / p[keep].sum()
            return int(keep[rng.choice(len(keep), p=q)])
        return int(rng.choice(len(p), p=p))


def _reduce(logits: F32, targets: I64, top_k: int) -> tuple[F32, F32 | None]:
    """Output rows -> (log-probability of each target, top-k log-probabilities or None)."""
    lse = row_logsumexp(logits)
    top = top_k_logprobs(logits, lse, top_k) if top_k > 0 else None
    return gather_logprobs(logits, targets, lse), top
