"""OpenAI/vLLM answers -> `Generation`, `StreamDelta` and `TokenLogprobs`, validated.

Every function here reads one upstream JSON value and either returns our value objects or
raises `MalformedAnswer` naming what was wrong (the backend turns it into an `UpstreamError`,
so the cascade escalates and the last tier answers 502; the client is never blamed). Shapes:

- chat:        choices[0].message.content (str | null),
               choices[0].logprobs.content[] = {token, logprob, bytes, top_logprobs: [...]}
- completions: choices[0].text (str | null),
               choices[0].logprobs = {tokens, token_logprobs, top_logprobs, text_offset}
- scoring:     choices[0].prompt_logprobs = [null, {"<id>": {logprob, rank, decoded_token}}, ...]

A token's bytes are its `bytes` or its string's UTF-8, checked against the text the tokens make
where a token holds U+FFFD (`_utf8.piece_bytes`: a piece of a character split over byte-level
tokens that the server decoded alone, as vLLM before PR 28874 and a few tokens since do).

Logprobs go straight into numpy columns: one list per field, converted once, and the dtype
numpy infers doubles as the type check (a string, null or nested value gives a non-numeric
dtype, which is refused). Top-k rows are sorted only when the upstream did not sort them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from operator import ge, itemgetter
from typing import Any

import numpy as np

from router.backends._utf8 import REPLACEMENT, piece_bytes
from router.backends.base import FinishReason, StreamDelta, TopAlternatives, Usage
from router.backends.collect import empty_logprobs
from router.scoring import FloatArray, TokenLogprobs

Parsed = tuple[TokenLogprobs, TopAlternatives | None]


class MalformedAnswer(ValueError):
    """An upstream answer that does not have the shape of an OpenAI answer."""


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise MalformedAnswer(what)


def _numbers(values: Sequence[Any], what: str) -> FloatArray:
    """A list of JSON numbers -> a float64 column; anything else is malformed.

    Example: [-0.5, -1] -> array([-0.5, -1.0]); [-0.5, "x"] or [None] -> MalformedAnswer.
    """
    try:
        arr = np.array(values)
    except (ValueError, TypeError):  # ragged nesting
        raise MalformedAnswer(f"{what} must be a list of numbers") from None
    _expect(arr.ndim == 1 and arr.dtype.kind in "fi", f"{what} must be a list of numbers")
    return arr.astype(np.float64, copy=False)


def _strings(values: Sequence[Any], what: str) -> None:
    _expect(not values or set(map(type, values)) == {str}, f"{what} must be strings")


def _is_sorted(top: FloatArray) -> bool:
    """Whether every (n, k) row is descending (NaN anywhere counts as unsorted)."""
    return top.shape[1] < 2 or bool((top[:, :-1] >= top[:, 1:]).all())


def _sorted_top(top: FloatArray, tokens: list[list[str]] | None
                ) -> tuple[FloatArray, list[list[str]] | None]:
    """Sort (n, k) top-k rows descending (with their token strings) unless they already are."""
    if _is_sorted(top):
        return top, tokens
    order = np.argsort(-top, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    if tokens is not None:
        tokens = [[row[j] for j in idx] for row, idx in zip(tokens, order.tolist(), strict=True)]
    return top, tokens


def _top_matrix(rows: list[list[float]], tokens: list[list[str]] | None, what: str
                ) -> tuple[FloatArray | None, list[list[str]] | None]:
    """Per-position top-k rows -> (n, k) sorted descending, k the shortest row (None if 0)."""
    if not rows:
        return None, None
    k = min(map(len, rows))
    if k == 0:
        return None, None
    if any(len(r) != k for r in rows):  # ragged: keep each row's best k
        order = [sorted(range(len(r)), key=r.__getitem__, reverse=True)[:k] for r in rows]
        rows = [[r[j] for j in o] for r, o in zip(rows, order, strict=True)]
        if tokens is not None:
            tokens = [[t[j] for j in o] for t, o in zip(tokens, order, strict=True)]
    top = _numbers([v for r in rows for v in r], what).reshape(len(rows), k)
    return _sorted_top(top, tokens)


def _alternatives(tokens: list[list[str]] | None) -> TopAlternatives | None:
    return None if tokens is None else TopAlternatives(tuple(tuple(r) for r in tokens))


_token = itemgetter("token")
_logprob = itemgetter("logprob")


def _rows_descend(flat: list[Any], k: int) -> bool:
    """Whether each run of k values of a flat row-major list descends, compared in Python
    (cheaper than numpy for the few values of a streamed token; a NaN or a non-number is
    "not sorted", and is then checked and sorted by numpy). Example: ([3, 2, 5, 1], 2) -> True.
    """
    try:
        if len(flat) <= k:  # one row
            return all(map(ge, flat, flat[1:]))
        return all(all(map(ge, flat[j::k], flat[j + 1::k])) for j in range(k - 1))
    except TypeError:
        return False


def _chat_top(raw_top: list[Any], n: int, k: int) -> tuple[FloatArray, TopAlternatives]:
    """The usual top-k of a chat answer, k alternatives at every position: (n, k) sorted rows
    and their token strings, in one pass over the flat list."""
    flat = list(chain.from_iterable(raw_top))
    top_toks = list(map(_token, flat))
    _strings(top_toks, "logprobs.content[].top_logprobs[].token")
    values = list(map(_logprob, flat))
    top = _numbers(values, "logprobs.content[].top_logprobs[].logprob").reshape(n, k)
    if _rows_descend(values, k):  # as vLLM sends them: rows straight from the flat list
        return top, TopAlternatives(tuple(zip(*[iter(top_toks)] * k, strict=True)))
    top, rows = _sorted_top(top, [top_toks[i:i + k] for i in range(0, n * k, k)])
    assert rows is not None
    return top, TopAlternatives(tuple(map(tuple, rows)))


def _chosen_only(entry: Any) -> TokenLogprobs | None:
    """One chat logprobs entry without alternatives (asked with top_logprobs 0), in the types
    vLLM sends: {token: str, logprob: float, bytes: list | null, top_logprobs: [] | absent}.
    None for anything else (the general path checks it and raises if it is malformed).

    Example: {"token": " 42", "logprob": -0.1, "bytes": [32, 52, 50], "top_logprobs": []} ->
    logprobs [-0.1], token_bytes [3], no top-k.
    """
    if type(entry) is not dict or entry.get("top_logprobs"):
        return None
    token, lp, raw_bytes = entry.get("token"), entry.get("logprob"), entry.get("bytes")
    if type(token) is not str or type(lp) is not float:
        return None
    if raw_bytes is None:
        nbytes = len(token.encode())
    elif type(raw_bytes) is list:
        nbytes = len(raw_bytes)
    else:
        return None
    return TokenLogprobs.built(np.array((lp,)), np.array((nbytes,), np.int64), None, (token,))


def _one_token(entry: Any) -> Parsed | None:
    """One chat logprobs entry with its top-k in descending order (a streamed token, as vLLM
    sends it): its logprob and top-k in one numpy array. None when the top-k needs sorting
    (the general path sorts it); malformed values raise as there."""
    chosen = _chosen_only(entry)
    if chosen is not None:
        return chosen, None
    try:
        token = entry["token"]
        raw_top = entry.get("top_logprobs") or ()
        tokens = [token, *map(_token, raw_top)]
        values = [entry["logprob"], *map(_logprob, raw_top)]
        raw_bytes = entry.get("bytes")
        _strings(tokens, "logprobs.content[].token and top_logprobs[].token")
        nbytes = len(raw_bytes) if raw_bytes is not None else len(token.encode())
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedAnswer(f"logprobs.content entries need token and logprob ({exc!r})"
                              ) from None
    if not _rows_descend(values[1:], len(values) - 1):
        return None
    column = _numbers(values, "logprobs.content[].logprob and top_logprobs[].logprob")
    k = len(values) - 1
    top = column[1:].reshape(1, k) if k else None
    lp = TokenLogprobs.built(column[:1], np.array((nbytes,), np.int64), top, (token,))
    return lp, TopAlternatives((tuple(tokens[1:]),)) if k else None


def parse_chat_logprobs(obj: Any) -> Parsed:
    """Chat `logprobs` -> TokenLogprobs (+ top-k token strings).

    Example: {"content": [{"token": " 42", "logprob": -0.1, "bytes": [32, 52, 50],
    "top_logprobs": [{"token": " 42", "logprob": -0.1}]}]} -> logprobs [-0.1], token_bytes [3],
    top_logprobs [[-0.1]], alternatives ((" 42",),).

    One streamed token is a call of its own, so the fixed cost counts as much as the per-token
    one: fields are gathered with `map` over the entries and each column is one numpy call.
    """
    if obj is None:
        return empty_logprobs(), None
    _expect(isinstance(obj, dict), "logprobs must be an object")
    content = obj.get("content")
    if content is None:
        return empty_logprobs(), None
    _expect(isinstance(content, list), "logprobs.content must be a list")
    if not content:
        return empty_logprobs(), None
    n = len(content)
    if n == 1:  # a streamed token
        one = _one_token(content[0])
        if one is not None:
            return one
    try:
        tokens = list(map(_token, content))
        lps = list(map(_logprob, content))
        _strings(tokens, "logprobs.content[].token")
        raw_bytes = [c.get("bytes") for c in content]
        nbytes = (list(map(len, raw_bytes)) if None not in raw_bytes else
                  [len(b) if b is not None else len(t.encode())
                   for b, t in zip(raw_bytes, tokens, strict=True)])
        raw_top = [c.get("top_logprobs") or () for c in content]
        widths = set(map(len, raw_top))
        k = min(widths)
        top: FloatArray | None = None
        alts: TopAlternatives | None = None
        if k > 0 and len(widths) == 1:  # the usual case: k alternatives everywhere, one pass
            top, alts = _chat_top(raw_top, n, k)
        elif k > 0:
            alt_rows = [[t["token"] for t in row] for row in raw_top]
            for row in alt_rows:
                _strings(row, "logprobs.content[].top_logprobs[].token")
            top, rows = _top_matrix([[t["logprob"] for t in row] for row in raw_top],
                                    alt_rows, "logprobs.content[].top_logprobs[].logprob")
            alts = _alternatives(rows)
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedAnswer(f"logprobs.content entries need token and logprob ({exc!r})"
                              ) from None
    lp = TokenLogprobs.built(_numbers(lps, "logprobs.content[].logprob"),  # n of each
                             np.array(nbytes, np.int64), top, tuple(tokens))
    return lp, alts


def parse_completion_logprobs(obj: Any) -> Parsed:
    """Completions `logprobs` {tokens, token_logprobs, top_logprobs} -> TokenLogprobs.

    A null token logprob (vLLM's first echoed token) becomes NaN.
    Example: {"tokens": [" a"], "token_logprobs": [-0.2], "top_logprobs": [{" a": -0.2}]} ->
    logprobs [-0.2], token_bytes [2], top_logprobs [[-0.2]].
    """
    if obj is None:
        return empty_logprobs(), None
    _expect(isinstance(obj, dict), "logprobs must be an object")
    tokens = obj.get("tokens")
    if tokens is None or tokens == []:
        return empty_logprobs(), None
    raw_lps = obj.get("token_logprobs")
    _expect(isinstance(tokens, list) and isinstance(raw_lps, list),
            "logprobs.tokens and logprobs.token_logprobs must be lists")
    _strings(tokens, "logprobs.tokens")
    _expect(len(raw_lps) == len(tokens),
            f"logprobs has {len(tokens)} tokens but {len(raw_lps)} token_logprobs")
    lps = _numbers([float("nan") if x is None else x for x in raw_lps],
                   "logprobs.token_logprobs")
    nbytes = np.array([len(t.encode()) for t in tokens], np.int64)
    raw_top = obj.get("top_logprobs")
    top: FloatArray | None = None
    alt_tokens: list[list[str]] | None = None
    if raw_top:
        _expect(isinstance(raw_top, list) and len(raw_top) == len(tokens),
                "logprobs.top_logprobs must have one entry per token")
        _expect(all(d is None or isinstance(d, dict) for d in raw_top),
                "logprobs.top_logprobs entries must be objects")
        rows = [list((d or {}).values()) for d in raw_top]
        keys = [list((d or {}).keys()) for d in raw_top]
        top, alt_tokens = _top_matrix(rows, keys, "logprobs.top_logprobs values")
    return TokenLogprobs(lps, nbytes, top, tuple(tokens)), _alternatives(alt_tokens)


def parse_prompt_logprobs(entries: Any, top_k: int = 0, *, text: str | None = None
                          ) -> TokenLogprobs:
    """vLLM `prompt_logprobs` of the prompt `text` -> TokenLogprobs of every scored token.

    Example: [None, {"42": {"logprob": -1.5, "rank": 3, "decoded_token": " cat"}}] ->
    logprobs [-1.5], token_bytes [4]. vLLM puts the prompt token itself first, then the top-k
    alternatives (rank 1..k); the prompt token may appear among them only once. Given the
    prompt `text`, the bytes are fitted to it (`piece_bytes`): the scored tokens make its end,
    the first token the rest.
    """
    _expect(isinstance(entries, list), "prompt_logprobs must be a list (is it vLLM?)")
    scored = [e for e in entries if e is not None]
    _expect(all(isinstance(e, dict) and e for e in scored),
            "prompt_logprobs entries must be non-empty objects")
    try:
        items = [list(e.values()) for e in scored]
        chosen = [row[0] for row in items]
        lps = [c["logprob"] for c in chosen]
        toks = [c.get("decoded_token") or "" for c in chosen]
        tops = ([[v["logprob"] for v in row if v.get("rank", 1) <= top_k] for row in items]
                if top_k > 0 else [])
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedAnswer(f"prompt_logprobs entries need a logprob ({exc!r})") from None
    _strings(toks, "prompt_logprobs[].decoded_token")
    top, _ = _top_matrix(tops, None, "prompt_logprobs[].logprob")
    if top is not None and top.shape[1] > top_k:
        top = top[:, :top_k]
    return TokenLogprobs(_numbers(lps, "prompt_logprobs[].logprob"),
                         np.array(piece_bytes(toks, text, suffix=True), np.int64), top,
                         tuple(toks))


def _fit_bytes(parsed: Parsed, text: str) -> Parsed:
    """Token bytes as `text`, the text the tokens make, holds them (`piece_bytes`), where a
    token holds U+FFFD; else as they are. Example: tokens ("\ufffd", "\ufffd") with bytes
    [3, 3] and text "é" -> bytes [0, 2]."""
    lp, alts = parsed
    toks = lp.tokens
    if not toks or REPLACEMENT not in "".join(toks):
        return parsed
    nbytes = np.array(piece_bytes(toks, text), np.int64)
    return TokenLogprobs.built(lp.logprobs, nbytes, lp.top_logprobs, toks), alts


def parse_usage(obj: Any, completion_tokens: int) -> Usage:
    """`usage` -> Usage; a missing one counts the completion's tokens and no prompt tokens."""
    if obj is None:
        return Usage(0, completion_tokens)
    _expect(isinstance(obj, dict), "usage must be an object")
    pt, ct = obj.get("prompt_tokens", 0), obj.get("completion_tokens", completion_tokens)
    _expect(type(pt) is int and type(ct) is int and pt >= 0 and ct >= 0,
            "usage token counts must be non-negative integers")
    return Usage(pt, ct)


def parse_finish(value: Any) -> FinishReason | None:
    _expect(value is None or isinstance(value, str), "finish_reason must be a string")
    if not value:
        return None
    return "length" if value == "length" else "stop"


def _text(value: Any, what: str) -> str:
    _expect(value is None or isinstance(value, str), f"{what} must be a string")
    return value or ""


def first_choice(data: Any) -> dict[str, Any]:
    _expect(isinstance(data, dict), "the answer must be a JSON object")
    choices = data.get("choices")
    _expect(isinstance(choices, list) and len(choices) > 0, "choices must be a non-empty list")
    choice = choices[0]
    _expect(isinstance(choice, dict), "choices[0] must be an object")
    return dict(choice)


def parse_answer(data: Any, chat: bool) -> tuple[str, FinishReason, Parsed, Usage]:
    """A whole chat or completions answer -> (text, finish reason, logprobs, usage)."""
    choice = first_choice(data)
    if chat:
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MalformedAnswer("choices[0].message must be an object")
        text = _text(message.get("content"), "choices[0].message.content")
        parsed = _fit_bytes(parse_chat_logprobs(choice.get("logprobs")), text)
    else:
        text = _text(choice.get("text"), "choices[0].text")
        parsed = _fit_bytes(parse_completion_logprobs(choice.get("logprobs")), text)
    usage = parse_usage(data.get("usage"), len(parsed[0]))
    return text, parse_finish(choice.get("finish_reason")) or "stop", parsed, usage


def _one_token_chunk(chunk: Any) -> list[StreamDelta] | None:
    """A streamed chat chunk of one token without alternatives, the bulk of a stream under a
    policy that reads no alternatives: {"choices": [{"delta": {"content": str}, "logprobs":
    {"content": [entry]}, "finish_reason": null}]} and no usage -> its one delta. None for any
    other chunk (the general path parses it, and raises if it is malformed).

    The checks are the general path's, done once on the exact types: a stream parses one of
    these per token, and the general path's layers of checks were most of its cost."""
    if type(chunk) is not dict or chunk.get("usage"):
        return None
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason") is not None:
        return None
    delta, lp = choice.get("delta"), choice.get("logprobs")
    if type(delta) is not dict or type(lp) is not dict:
        return None
    text, content = delta.get("content"), lp.get("content")
    if type(text) is not str or type(content) is not list or len(content) != 1:
        return None
    token = _chosen_only(content[0])
    if token is None or REPLACEMENT in content[0]["token"]:  # bytes to fit to the text
        return None
    return [StreamDelta(text, token)]


def parse_chunk(chunk: Any, chat: bool) -> tuple[list[StreamDelta], FinishReason | None,
                                                  Usage | None]:
    """One streamed chunk -> (its deltas with text or tokens, its finish reason, its usage)."""
    if chat:
        one = _one_token_chunk(chunk)
        if one is not None:
            return one, None, None
    _expect(isinstance(chunk, dict), "a streamed chunk must be a JSON object")
    usage = parse_usage(chunk["usage"], 0) if chunk.get("usage") else None
    choices = chunk.get("choices") or []
    _expect(isinstance(choices, list), "choices must be a list")
    deltas: list[StreamDelta] = []
    finish: FinishReason | None = None
    for choice in choices:
        _expect(isinstance(choice, dict), "choices[] must be objects")
        if chat:
            delta = choice.get("delta") or {}
            _expect(isinstance(delta, dict), "choices[].delta must be an object")
            text = _text(delta.get("content"), "choices[].delta.content")
            lp, alts = _fit_bytes(parse_chat_logprobs(choice.get("logprobs")), text)
        else:
            text = _text(choice.get("text"), "choices[].text")
            lp, alts = _fit_bytes(parse_completion_logprobs(choice.get("logprobs")), text)
        finish = parse_finish(choice.get("finish_reason")) or finish
        if text or len(lp):
            deltas.append(StreamDelta(text=text, logprobs=lp, alternatives=alts, usage=usage))
    return deltas, finish, usage
