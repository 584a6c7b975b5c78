"""`openai_http.SseLines`: event-stream lines from a body cut anywhere."""

from __future__ import annotations

import pytest

from router.backends.openai_http import SseLines
from router.errors import UpstreamError

STREAM = (b": keep-alive\r\n\r\nevent: message\r\ndata: {\"a\": 1}\r\n\r\n"
          b"data:{\"b\": 2}\n\ndata: [DONE]\n\n")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, len(STREAM)])
def test_the_payloads_whatever_the_pieces(size: int) -> None:
    lines = SseLines(1 << 20)
    got = []
    for i in range(0, len(STREAM), size):
        got += lines.feed(STREAM[i:i + size])
    got += lines.close()
    assert got == ['{"a": 1}', '{"b": 2}', "[DONE]"]  # comments and event names skipped


def test_a_last_line_without_newline_and_a_long_line() -> None:
    lines = SseLines(1 << 22)
    long = b"data: " + b"x" * 200_000 + b"\n"
    got = []
    for i in range(0, len(long), 1024):
        got += lines.feed(long[i:i + 1024])
    assert got == ["x" * 200_000]
    assert lines.feed(b"data: tail") == []
    assert lines.close() == ["tail"]
    assert lines.close() == []


def test_more_than_the_cap_is_an_upstream_error() -> None:
    lines = SseLines(100)
    lines.feed(b"data: " + b"x" * 90)
    with pytest.raises(UpstreamError, match="max_upstream_response_bytes"):
        lines.feed(b"x" * 20)
