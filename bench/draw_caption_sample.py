"""Draw a labelling sample of the shared LAION captions that the grammar accepts, excluding those
already labelled; prints the captions only (label them before looking at what the grammar returns).

    .venv/bin/python bench/draw_caption_sample.py --seed 4848 --n 100 > sample.jsonl

The pool: the shared captions (../shared/laion-captions/captions.jsonl) in file order, each kept
once, that are not in tests/data/laion_captions_labelled.jsonl and for which `parse_caption` returns
a count. The sample: ``random.Random(seed).sample(pool, n)``. The pool's size goes to stderr: a drawn
row stands for pool / n captions (its `weight`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--captions", type=Path, default=REPO.parent / "shared" / "laion-captions" / "captions.jsonl")
    parser.add_argument("--labels", type=Path, default=REPO / "tests" / "data" / "laion_captions_labelled.jsonl")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from countclip.numbers import parse_caption

    labelled = {json.loads(line)["caption"] for line in args.labels.read_text(encoding="utf-8").splitlines() if line.strip()}
    captions = [json.loads(line)["caption"] for line in args.captions.read_text(encoding="utf-8").splitlines() if line.strip()]
    pool = [c for c in dict.fromkeys(captions) if c not in labelled and parse_caption(c) is not None]
    print(f"pool: {len(pool)} captions accepted and not labelled", file=sys.stderr)
    for caption in random.Random(args.seed).sample(pool, args.n):
        print(json.dumps({"caption": caption}, ensure_ascii=False))


if __name__ == "__main__":
    main()
