"""Make the sample corpus of `router select` (real prose, corrupted text, boilerplate and a few
malformed lines), deterministically from a seed.

    python bench/make_sample_corpus.py --seed 0 --out examples/sample_corpus.jsonl
"""

from __future__ import annotations

import argparse

from router.select.sample import write_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="examples/sample_corpus.jsonl")
    args = ap.parse_args()
    counts = write_corpus(args.out, args.seed)
    print(f"wrote {args.out}: {counts['records']} lines ({counts['malformed']} malformed)")


if __name__ == "__main__":
    main()
