"""CPU time to parse an upstream answer's logprobs: `openai_parse` (validated, straight into
numpy columns) next to the per-token reference it replaced (Python lists per token, then
`TokenLogprobs.from_lists`, no validation).

    python bench/upstream_parse.py

Process CPU time (`time.process_time`), best of 7: this machine is shared, so compare ratios.
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from router.backends.openai_parse import parse_chat_logprobs, parse_completion_logprobs
from router.scoring import TokenLogprobs


def reference_chat(obj: Any) -> TokenLogprobs:
    """main before issue 13: per-token lists, then from_lists (sorts every top-k row)."""
    content = obj["content"]
    lps = [float(c["logprob"]) for c in content]
    nbytes = [len(c["bytes"]) if c.get("bytes") is not None else len(c["token"].encode())
              for c in content]
    tops = [[float(t["logprob"]) for t in c.get("top_logprobs") or []] for c in content]
    _alts = tuple(tuple(t["token"] for t in c.get("top_logprobs") or []) for c in content)
    return TokenLogprobs.from_lists(lps, nbytes, tops if all(tops) else None,
                                    [c["token"] for c in content])


def reference_completion(obj: Any) -> TokenLogprobs:
    tokens = list(obj["tokens"])
    lps = [float(x) if x is not None else float("nan") for x in obj["token_logprobs"]]
    tops = [sorted(((float(v), k) for k, v in (d or {}).items()), reverse=True)
            for d in obj["top_logprobs"]]
    _alts = tuple(tuple(k for _, k in row) for row in tops)
    return TokenLogprobs.from_lists(lps, [len(t.encode()) for t in tokens],
                                    [[v for v, _ in row] for row in tops], tokens)


def chat_answer(n: int, k: int) -> Any:
    def entry(i: int) -> dict[str, Any]:
        tok = f" tok{i % 97}"
        alts = [{"token": f"alt{j}", "logprob": -0.5 - j, "bytes": list(f"alt{j}".encode())}
                for j in range(k)]
        return {"token": tok, "logprob": -0.5 - (i % 7) * 0.1, "bytes": list(tok.encode()),
                "top_logprobs": alts}
    return orjson.loads(orjson.dumps({"content": [entry(i) for i in range(n)]}))


def completion_answer(n: int, k: int) -> Any:
    tokens = [f" tok{i % 97}" for i in range(n)]
    return orjson.loads(orjson.dumps({
        "tokens": tokens, "token_logprobs": [-0.5] * n,
        "top_logprobs": [{t: -0.5, **{f"alt{j}": -1.5 - j for j in range(k - 1)}}
                         for t in tokens]}))


def cpu_us(fn: Callable[[], object], n: int) -> float:
    reps = max(20, 20000 // n)
    return min(timeit.repeat(fn, number=reps, repeat=7, timer=time.process_time)) / reps * 1e6


def main() -> None:
    print(f"{'answer':12s} {'tokens':>6s} {'k':>3s} {'reference us':>13s} {'openai_parse us':>16s}"
          " speed-up")
    for n, k in ((16, 5), (256, 5), (256, 20), (1024, 5)):
        for name, ref, new, answer in (
                ("chat", reference_chat, parse_chat_logprobs, chat_answer(n, k)),
                ("completions", reference_completion, parse_completion_logprobs,
                 completion_answer(n, k))):
            a, b = ref(answer), new(answer)[0]
            assert (a.logprobs == b.logprobs).all() and (a.top_logprobs == b.top_logprobs).all()
            t_ref = cpu_us(lambda ref=ref, answer=answer: ref(answer), n)
            t_new = cpu_us(lambda new=new, answer=answer: new(answer), n)
            print(f"{name:12s} {n:6d} {k:3d} {t_ref:13.1f} {t_new:16.1f} {t_ref / t_new:7.2f}x")


if __name__ == "__main__":
    main()
