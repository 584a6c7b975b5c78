"""The UTF-8 bytes of each token, from tokens decoded one at a time and the text they make.

A byte-level BPE tokenizer (SmolLM2, Qwen, GPT-2) splits some multi-byte characters over
several tokens. Decoded alone, each piece of such a character is U+FFFD (3 bytes), so counting
each token's decoded string over-counts it (Japanese came out at ~1.8x its bytes). vLLM since
PR 28874 (late 2025) decodes a piece with the tokens before it: "" while its character is
unfinished, the whole character on the token that completes it, which sums exactly. Older
vLLM servers, other servers, and a few tokens vLLM leaves uncorrected (Qwen2.5's
b"\\x8e\\xb7\\xe5\\x8f\\x96", "\\ufffd\\ufffd取") still send U+FFFD. `piece_bytes`
counts what the text holds:

- a piece that matches the text counts its own bytes (ASCII, vLLM's corrected pieces),
- a run of n U+FFFD (in one piece or several) stands for 1..n characters of the text, up to
  where the next piece matches; their bytes are cut among the run's pieces as the pieces
  decode alone (b"\\xe3\\x83" and b"\\x86" are one U+FFFD each: テ as 2 + 1 bytes), which
  is each token's own bytes where the cut is unique (a guess between equal cuts); where no cut
  fits, each character counts in the piece that completes it,
- past the end of the text (a stop string cut from it), a piece counts its own bytes and
  U+FFFD none (a character never finished).

Pieces that do not fit the text count their own bytes, as without it. Scored prompt tokens
have no piece for the first token: what the pieces leave at the start of the text is its,
exact when it ends in ASCII (a character it shares with the next token is cut as above).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache, lru_cache
from itertools import accumulate, groupby
from math import ceil

REPLACEMENT = "\ufffd"
MAX_CUT = 64  # U+FFFD in a run cut into its pieces' exact bytes; a longer one is spread
Cost = tuple[int, int]  # a cut's (characters starting inside a chunk, sum of squared lengths)
_RUNS = re.compile(f"{REPLACEMENT}+|[^{REPLACEMENT}]+")


def piece_bytes(pieces: Sequence[str], text: str | None = None, *, suffix: bool = False
                ) -> list[int]:
    """The bytes of `text` each decoded piece stands for, summing to the text's UTF-8 length.
    `suffix`: the pieces make the end of `text` (prompt scoring: the first token has no
    logprob, so no piece); what they leave at the start is that token's.

    >>> piece_bytes(["a", " \\ufffd", "\\ufffd", "\\ufffd"], "a 日")  # b" \\xe6", b"\\x97"...
    [1, 2, 1, 1]
    >>> piece_bytes(["a", "", "", " 日"], "a 日"), piece_bytes([" \\ufffd"])  # vLLM's; no text
    ([1, 0, 0, 4], [4])
    >>> piece_bytes(["kyo", ":", " \\ufffd", "\\ufffd", "\\ufffd"], "Tokyo: 日", suffix=True)
    [3, 1, 2, 1, 1]
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
    src = text[::-1] if suffix else text  # read from the end when suffix
    segs = _segments(pieces, reverse=suffix)
    last = len(segs) - 1

    @cache
    def run_ends(k: int, p: int) -> tuple[tuple[int, ...], _Cuts | None]:
        """Where run k can end when it starts at p (after 1..n non-ASCII characters: ASCII is
        never split), and the cuts of its pieces over the longest of them."""
        n = len(segs[k][1])
        ends = []
        for q in range(p + 1, min(len(src), p + n) + 1):
            if ord(src[q - 1]) < 0x80:
                break
            ends.append(q)
        if not ends or n > MAX_CUT:
            return tuple(ends), None
        counts = [len(list(g)) for _, g in groupby(segs[k][1])]
        return tuple(ends), _Cuts(src[p:ends[-1]], counts, reverse=suffix)

    def lead(k: int, q: int) -> int:
        """Bytes of run k's first character (in text order) that may be the first token's:
        in a scored text, when the run starts with its first piece (vLLM's "" pieces before
        it hold a part of that character)."""
        if suffix and k == last and min(segs[k][1]) == 0:
            return len(src[q - 1].encode("utf-8"))
        return 1

    @cache
    def moves(k: int, p: int) -> tuple[int, ...]:
        """Where segment k can end in src when it starts at p. A literal: after itself, or
        at the end of src if src ends inside it (a stop string). A run: where its pieces
        can be cut from the text if anywhere, none past the end of src; reaching the first
        token of a scored text, the most it can be cut from, else all but that token's last
        character."""
        run = segs[k][0]
        if run[0] != REPLACEMENT:
            if src.startswith(run, p):
                return (p + len(run),)
            return (len(src),) if _ends_in(src, p, run) else ()
        if p == len(src):
            return (p,)
        ends, cuts = run_ends(k, p)
        exact = [q for q in ends if cuts and cuts.sizes(q - p, lead(k, q)) is not None]
        if suffix and k == last:
            return tuple(exact[-1:]) or tuple(([q for q in ends if q < len(src)] or ends)[-1:])
        return tuple(exact or ends)

    reach = [{0}]  # reach[k]: where segment k can start in src
    for k in range(len(segs)):
        reach.append({q for p in reach[k] for q in moves(k, p)})
        if not reach[-1]:
            return None
    ends = reach[-1] if suffix else reach[-1] & {len(src)}
    if not ends:
        return None
    out = [0] * len(pieces)
    q = max(ends)  # scoring: what the pieces leave at the start is the first token's
    for k in range(len(segs) - 1, -1, -1):
        p = min(s for s in reach[k] if q in moves(k, s))
        run, owners = segs[k]
        if run[0] != REPLACEMENT:
            out[owners[0]] += len(run.encode("utf-8"))
            q = p
            continue
        cuts = run_ends(k, p)[1] if p < q else None
        sizes = cuts.sizes(q - p, lead(k, q)) if cuts else None
        if sizes is not None:  # each piece's own bytes
            for (i, _), size in zip(groupby(owners), sizes, strict=True):
                out[i] += size
        elif suffix:  # in text order
            _spread(src[p:q][::-1], owners[::-1], out)
        else:
            _spread(src[p:q], owners, out)
        q = p
    return out


class _Cuts:
    """The ways to cut the bytes of `chars` (read from the end when `reverse`) into the chunks
    of consecutive pieces, piece i decoding alone to counts[i] U+FFFD and nothing else (each
    U+FFFD is 1..3 bytes), for every prefix of the characters at once.

    Of several cuts, the one whose chunks have fewest characters starting inside them (a token
    more often holds pieces of one character than the end of one and the start of the next),
    then the most even (least sum of squared lengths: six pieces of one U+FFFD each are 🍣🍜
    as 3 + 3 pieces, not 2 + 4), then the one with the earlier chunks longest (byte-level BPE
    merges a lead byte with what follows it).
    Example: _Cuts("日", [1, 1], reverse=False).sizes(1, 1) -> (2, 1)
    """

    def __init__(self, chars: str, counts: list[int], *, reverse: bool) -> None:
        encoded = [c.encode("utf-8") for c in chars]
        self.data = b"".join(b[::-1] for b in encoded) if reverse else b"".join(encoded)
        self.reverse = reverse
        self.char_ends = list(accumulate(map(len, encoded), initial=0))  # (chars + 1,)
        bounds = [0] * (len(self.data) + 1)  # (bytes + 1,) character boundaries before each
        for e in self.char_ends[1:-1]:
            bounds[e + 1] = 1
        self.bounds = list(accumulate(bounds))
        self.layers: list[dict[int, tuple[Cost, int]]] = []  # per chunk: end -> (cost, start)
        costs: dict[int, Cost] = {0: (0, 0)}
        for n in counts:
            layer: dict[int, tuple[Cost, int]] = {}
            for p in sorted(costs, reverse=not reverse):  # ties: text-order earlier longest
                for end in range(p + n, min(len(self.data), p + 3 * n) + 1):
                    inside = self.bounds[end] - self.bounds[p + 1]  # in data[p:end]
                    cost = (costs[p][0] + inside, costs[p][1] + (end - p) ** 2)
                    if (end not in layer or cost < layer[end][0]) and self._alone(p, end) == n:
                        layer[end] = (cost, p)
            self.layers.append(layer)
            costs = {e: c for e, (c, _) in layer.items()}

    def _alone(self, p: int, end: int) -> int:
        chunk = self.data[p:end]
        return _alone(chunk[::-1] if self.reverse else chunk)

    def sizes(self, n_chars: int, lead: int) -> tuple[int, ...] | None:
        """Each piece's bytes in a cut of the first n_chars characters read, which may leave
        out up to lead - 1 bytes at the far end (the first token's part of a character it
        shares), as few as it can. None if no cut fits."""
        total = self.char_ends[n_chars]
        end = next((e for e in range(total, total - lead, -1) if e in self.layers[-1]), None)
        if end is None:
            return None
        sizes = []
        for layer in reversed(self.layers):
            sizes.append(end - layer[end][1])
            end = layer[end][1]
        return tuple(reversed(sizes))


@lru_cache(maxsize=4096)
def _alone(chunk: bytes) -> int:
    """How many U+FFFD a chunk of bytes decodes to alone, or -1 if it holds a character."""
    text = chunk.decode("utf-8", errors="replace")
    return len(text) if text.count(REPLACEMENT) == len(text) else -1


def _ends_in(src: str, p: int, literal: str) -> bool:
    """Whether src ends inside `literal` read from p. Example: ("Hel", 0, "Hello") -> True."""
    return len(src) - p < len(literal) and literal.startswith(src[p:])


def _spread(chars: str, owners: list[int], out: list[int]) -> None:
    """Count each character of a U+FFFD run's text in the piece that completes it (where no
    cut fits the pieces): character j ends at U+FFFD ceil(n * bytes up to j / bytes of all).
    Example: ("🍣🍜", [0, 0, 1, 2, 2, 3]) -> 4 bytes to piece 1, 4 to piece 3."""
    sizes = [len(c.encode("utf-8")) for c in chars]
    total, done = sum(sizes), 0
    for size in sizes:
        done += size
        out[owners[ceil(len(owners) * done / total) - 1]] += size
