"""piece_bytes: tokens decoded one at a time (as vLLM before PR 28874 sent them, and as some
tokens still come) -> the bytes of the text they make, on real tokenizations (SmolLM2's and
Qwen2.5's token bytes in the comments) and on random byte-level ones."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.backends._utf8 import piece_bytes

R = "\ufffd"


@pytest.mark.parametrize(("pieces", "text", "want"), [
    # SmolLM2 "Tokyo: 日本" [2068 'To', 17405, 42, 17097 b" \xe6", 241 b"\x97", 115 b"\xa5",
    # 40993 '本']: decoded alone, each token's own bytes
    (["To", "kyo", ":", f" {R}", R, R, "本"], "Tokyo: 日本", [2, 3, 1, 2, 1, 1, 3]),
    # vLLM 0.32's own pieces of the same tokens: exact sums already, kept as they are
    (["To", "kyo", ":", "", "", " 日", "本"], "Tokyo: 日本", [2, 3, 1, 0, 0, 4, 3]),
    # SmolLM2's 🍣🍜 as generated: [10813 b"\xf0\x9f", 231 b"\x8d", 113 b"\xa3", 10813, 231,
    # 246 b"\x9c"]; six pieces of one U+FFFD could also be 2 + 4 or 4 + 2 per character
    ([R] * 6, "🍣🍜", [2, 1, 1, 2, 1, 1]),
    # Qwen2.5 "的䷻加" [9370 '的', 160 b"\xe4", 35125 b"\xb7\xbb\xe5\x8a\xa0"]: vLLM 0.32's own
    # pieces, the last one left uncorrected ("\ufffd\ufffd加", 9 bytes for 5; ䷻ counts in it)
    (["的", "", f"{R}{R}加"], "的䷻加", [3, 0, 6]),
    # a stop string vLLM cut from the text ("す"): the token still counts its bytes
    ([R, R, R, R, "で", "す"], "テキで", [2, 1, 2, 1, 3, 3]),
    # SmolLM2 ' "こ' + the start of a character the text never finished (max_tokens):
    # [476 ' "', 7365 b"\xe3\x81", 237 b"\x93", 10391 b"\xe3\x82"]: the sum is exact, the
    # cut a guess (three pieces of one U+FFFD each fit こ alone too)
    ([' "', R, R, R], ' "こ', [2, 1, 1, 1]),
    (['"', "こ", R], '"こ', [1, 3, 0]),  # U+FFFD past the end of the text: none
    # "日本本" cut as [E6][97 A5 E6][9C AC][本]: the run stands for 日本, not for 日
    ([R, R * 3, R * 2, "本"], "日本本", [1, 3, 2, 3]),
    (["x", R], "ab", [1, 3]),  # pieces that are not the text's: their own bytes
])
def test_pieces_of_real_tokens(pieces: list[str], text: str, want: list[int]) -> None:
    assert piece_bytes(pieces, text) == want
    assert piece_bytes(pieces) == [len(p.encode()) for p in pieces]  # no text: their own


@pytest.mark.parametrize(("pieces", "text", "want"), [
    (["kyo", ":", f" {R}", R, R, "本"], "Tokyo: 日本", [3, 1, 2, 1, 1, 3]),
    (["kyo", ":", "", "", " 日", "本"], "Tokyo: 日本", [3, 1, 0, 0, 4, 3]),
    (["", f"{R}{R}加"], "的䷻加", [0, 6]),
    # SmolLM2 "日本" [23274 b"\xe6\x97", 115 b"\xa5", 40993 '本']: the first token (no
    # logprob, no piece) and the second share 日
    ([R, "本"], "日本", [1, 3]),
])
def test_scored_pieces_of_real_tokens(pieces: list[str], text: str, want: list[int]) -> None:
    assert piece_bytes(pieces, text, suffix=True) == want


ALPHABET = "ab .éü日本語。🙂🍜"


@st.composite
def cut_text(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """A text and its UTF-8 cut into byte-level tokens anywhere, even inside characters."""
    text = draw(st.text(ALPHABET, min_size=1, max_size=16))
    data = text.encode()
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=10)))
    cuts = [c for c in cuts if c < len(data)]
    return text, [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def alone(tokens: list[bytes]) -> list[str]:
    return [t.decode("utf-8", errors="replace") for t in tokens]  # as a byte-level decoder


@given(cut_text())
@settings(max_examples=500, deadline=None)
def test_pieces_sum_to_the_texts_bytes(case: tuple[str, list[bytes]]) -> None:
    text, tokens = case
    got = piece_bytes(alone(tokens), text)
    assert sum(got) == len(text.encode()) and min(got) >= 0
    if text.isascii():
        assert got == [len(t) for t in tokens]


@given(cut_text())
@settings(max_examples=500, deadline=None)
def test_scored_pieces_sum_to_the_texts_bytes_after_the_first_token(
        case: tuple[str, list[bytes]]) -> None:
    text, tokens = case
    if len(tokens) < 2 or tokens[0][-1] >= 0x80:
        return  # a first token ending in a split character: its share is not known
    got = piece_bytes(alone(tokens[1:]), text, suffix=True)
    assert sum(got) == len(text.encode()) - len(tokens[0])
