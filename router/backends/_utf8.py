"""The UTF-8 bytes of each token, from tokens decoded one at a time and the text they make.

A byte-level BPE tokenizer (SmolLM2, Qwen, GPT-2) splits some multi-byte characters over
several tokens. Decoded alone, each piece of such a character is U+FFFD (3 bytes), so counting
each token's decoded string over-counts it (Japanese came out at ~1.8x its bytes). vLLM since
PR 28874 (late 2025) decodes a piece with the tokens before it: "" while its character is
unfinished, the whole character on the token that completes it, which sums exactly. Older
vLLM servers, other servers, and a few tokens vLLM leaves uncorrected (Qwen2.5's
b"\\x8e\\xb7\\xe5\\x8f\\x96", "\\ufffd\\ufffd取") still send U+FFFD. `piece_bytes` counts
what the text holds:

- a piece that matches the text counts its own bytes (ASCII, vLLM's corrected pieces),
- a run of n U+FFFD (in one piece or several) stands for 1..n characters of the text, up to
  where the next piece matches; each character counts in the token that completes it, as
  vLLM's own pieces do (n U+FFFD spread over the run's characters by their bytes),
- past the end of the text (a stop string cut from it), a piece counts its own bytes and
  U+FFFD none (a character never finished).

Pieces that do not fit the text count their own bytes, as without it. Scored prompt tokens
have no piece for the first token: a run of U+FFFD that reaches it takes what it can and
leaves that token one character (exact when the first token ends in ASCII).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from math import ceil

REPLACEMENT = "\ufffd"
_RUNS = re.compile(f"{REPLACEMENT}+|[^{REPLACEMENT}]+")


def piece_bytes(pieces: Sequence[str], text: str | None = None, *, suffix: bool = False
                ) -> list[int]:
    """The bytes of `text` each decoded piece stands for, summing to the text's UTF-8 length.
    `suffix`: the pieces make the end of `text` (prompt scoring: the first token has no
    logprob, so no piece); what they leave at the start is that token's.

    >>> piece_bytes(["a", " \\ufffd", "\\ufffd", "\\ufffd"], "a 日")  # decoded alone
    [1, 1, 0, 3]
    >>> piece_bytes(["a", "", "", " 日"], "a 日"), piece_bytes([" \\ufffd"])  # vLLM's; no text
    ([1, 0, 0, 4], [4])
    >>> piece_bytes(["kyo", ":", " \\ufffd", "\\ufffd", "\\ufffd"], "Tokyo: 日", suffix=True)
    [3, 1, 1, 0, 3]
    """
    own = [len(p.encode("utf-8")) for p in pieces]
    if text is None or not any(REPLACEMENT in p for p in pieces):
        return own
    fitted = _fit(text, pieces, suffix=suffix)
    return own if fitted is None else fitted


def _segments(pieces: Sequence[str], reverse: bool) -> list[tuple[str, list[int]]]:
    """Pieces -> (literal, [its piece]) and (U+FFFD run, the piece of each U+FFFD) segments,
    in the order they are read (reversed strings when `reverse`); a run goes on over pieces
    that decode to "". Example: (["a\\ufffd", "", "\\ufffd"], False) -> [("a", [0]),
    ("\\ufffd\\ufffd", [0, 2])]."""
    segs: list[tuple[str, list[int]]] = []
    order = range(len(pieces) - 1, -1, -1) if reverse else range(len(pieces))
    for i in order:
        for run in _RUNS.findall(pieces[i][::-1] if reverse else pieces[i]):
            if run[0] != REPLACEMENT:
                segs.append((run, [i]))
            elif segs and segs[-1][0][0] == REPLACEMENT:
                segs[-1] = (segs[-1][0] + run, segs[-1][1] + [i] * len(run))
            else:
                segs.append((run, [i] * len(run)))
    return segs


def _fit(text: str, pieces: Sequence[str], *, suffix: bool) -> list[int] | None:
    """Align the pieces with the text (from its end when `suffix`); None if they cannot be.

    Which characters a U+FFFD run stands for can be ambiguous ("日本本" with the first two
    split), so the places each segment can end are found for all segments first (a set per
    boundary, one place in the usual case), then one alignment is read back from the end,
    each segment starting as early as it can (a piece is past the end only if it must be);
    from the end of a scored text, the alignment that reaches furthest.
    """
    src = text[::-1] if suffix else text
    segs = _segments(pieces, reverse=suffix)
    reach = [{0}]  # reach[k]: where segment k can start in src
    for k in range(len(segs)):
        reach.append({q for p in reach[k] for q in _moves(src, segs, k, p, suffix)})
        if not reach[-1]:
            return None
    ends = reach[-1] if suffix else reach[-1] & {len(src)}
    if not ends:
        return None
    out = [0] * len(pieces)
    q = max(ends)  # scoring: what the pieces leave at the start is the first token's
    for k in range(len(segs) - 1, -1, -1):
        p = min(s for s in reach[k] if q in _moves(src, segs, k, s, suffix))
        run, owners = segs[k]
        if run[0] != REPLACEMENT:
            out[owners[0]] += len(run.encode("utf-8"))
        elif suffix:  # back in text order
            _spread(src[p:q][::-1], owners[::-1], out)
        else:
            _spread(src[p:q], owners, out)
        q = p
    return out


def _moves(src: str, segs: list[tuple[str, list[int]]], k: int, p: int, suffix: bool
           ) -> list[int]:
    """Where segment k can end in src when it starts at p. A literal: after itself, or at
    the end of src if src ends inside it (a stop string). A run of n U+FFFD: after 1..n
    non-ASCII characters (ASCII is never split), none past the end of src; reaching the
    first token of a scored text, all it can but that token's last character."""
    run, owners = segs[k]
    if run[0] != REPLACEMENT:
        if src.startswith(run, p):
            return [p + len(run)]
        return [len(src)] if _ends_in(src, p, run) else []
    if p == len(src):
        return [p]
    out = []
    for q in range(p + 1, min(len(src), p + len(owners)) + 1):
        if ord(src[q - 1]) < 0x80:
            break
        out.append(q)
    if suffix and k == len(segs) - 1:  # the first token's: at least one character, if any
        out = [q for q in out if q < len(src)] or out[:1]
        return out[-1:]
    return out


def _ends_in(src: str, p: int, literal: str) -> bool:
    """Whether src ends inside `literal` read from p. Example: ("Hel", 0, "Hello") -> True."""
    return len(src) - p < len(literal) and literal.startswith(src[p:])


def _spread(chars: str, owners: list[int], out: list[int]) -> None:
    """Count each character of a U+FFFD run's text in the piece that completes it: character j
    ends at U+FFFD ceil(n * bytes up to j / bytes of all). Example: ("🍣🍜", [0, 0, 1, 2, 2,
    3]) -> 4 bytes to piece 1, 4 to piece 3."""
    sizes = [len(c.encode("utf-8")) for c in chars]
    total, done = sum(sizes), 0
    for size in sizes:
        done += size
        out[owners[ceil(len(owners) * done / total) - 1]] += size
