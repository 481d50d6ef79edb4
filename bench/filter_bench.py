"""Caption filter in Ray Data: the vectorised stage against a per-row Python-regex stage.

Same synthetic LAION-like parquet (default 1 M rows, ~3 % with a number word), same run, on 1 and on
2 CPUs; the two stages and a no-op pass run interleaved for --rounds rounds (this shared machine's
speed drifts by tens of percent from minute to minute). Prints the median rows/s, the median of the
per-round ratios, and the ratio net of the no-op pass (Ray Data's fixed cost of a pass, which the
stages do not control), and writes JSON.

    .venv/bin/python bench/filter_bench.py --rows 10000000 --rounds 3 --out bench/results/filter_cpu.json
    .venv/bin/python bench/filter_bench.py --rows 10000000 --rounds 3 --non-counting-rate 0.05 \
        --out bench/results/filter_cpu_noncounting005.json
    .venv/bin/python bench/filter_bench.py --rows 10000000 --rounds 3 \
        --real-captions ../shared/laion-captions/captions.jsonl --out bench/results/filter_cpu_real.json

--real-captions reads the shared real LAION captions (11,057, ~11 % with a number word, against the
synthetic ~3 %) and repeats them to --rows rows: the per-row grammar then runs on far more rows.

The rows sit in memory as cpus * 8 equal blocks, and each stage is called once per block
(``batch_size=None``), as the build runs its caption stage; ``--batch-size 16384`` calls it on
16,384-row slices instead (this bench's setting before 2026-12-08: on this 2-core machine ~10 %
slower for the vectorised stage, whose fixed cost per call is a few milliseconds). At 3 M rows a
vectorised pass lasts ~4 s, and Ray Data 2.60 runs one task at a time for its first second or so (its
autoscaling coordinator reports no resources yet): short passes understate the 2-CPU rate. 10 M rows
make the passes long enough for that to fade. Each Ray task also costs ~50 ms of wall time on 2 busy
CPUs here (a pass over 64 blocks takes ~40 % longer than over 16), which the vectorised stage's
shorter tasks feel more than the per-row ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = "dog cat car tree house red blue photo of the a on in with beautiful vintage set new".split()
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def synthetic_source(rows: int, folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 14, size=rows)
    words = rng.choice(WORDS, size=(rows, 14))
    captions = [" ".join(words[i, : lengths[i]]) for i in range(rows)]
    for i in np.flatnonzero(rng.random(rows) < 0.03):
        parts = captions[i].split()
        parts.insert(int(rng.integers(len(parts))), str(rng.choice(NUMBERS)))
        captions[i] = " ".join(parts)
    table = pa.table({"SAMPLE_ID": [f"s{i}" for i in range(rows)], "URL": [f"https://x/{i}.jpg" for i in range(rows)],
                      "TEXT": captions})
    path = folder / "source.parquet"
    pq.write_table(table, path, row_group_size=50_000)
    return path


def real_source(rows: int, folder: Path, captions: Path) -> Path:
    """The shared real LAION captions (one JSON object a line, "caption"), repeated to `rows` rows."""
    texts = [json.loads(line)["caption"] for line in captions.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise SystemExit(f"no captions in {captions}")
    text = pa.array(texts, pa.string()).take(pa.array(np.arange(rows) % len(texts)))
    table = pa.table({"SAMPLE_ID": [f"s{i}" for i in range(rows)], "URL": [f"https://x/{i}.jpg" for i in range(rows)],
                      "TEXT": text})
    path = folder / "source.parquet"
    pq.write_table(table, path, row_group_size=50_000)
    return path


def per_row_stage(batch, non_counting_rate: float = 0.0):
    """The baseline: Python's re, one caption at a time (the scalar grammar). With a non-counting
    rate it also keeps that share of the other captioned rows, by a CRC-32 of "u:" + URL per row."""
    import zlib

    from countclip.numbers import count_from_caption

    counts = [count_from_caption(text) if isinstance(text, str) else None for text in batch["TEXT"]]
    batch["caption_count"] = [c or 0 for c in counts]
    keep = batch["caption_count"] > 0
    if non_counting_rate > 0:
        threshold = non_counting_rate * 2**32
        keep |= np.array([zlib.crc32(f"u:{url}".encode()) < threshold and isinstance(text, str) and bool(text.strip())
                          for url, text in zip(batch["URL"], batch["TEXT"])], dtype=bool)
    return batch[keep]


def stage(mode: str, non_counting_rate: float = 0.0):
    """The map_batches pass of one mode: "noop" (Ray Data's own floor), "per_row" or "vectorised"."""
    from countclip.data.captions import CaptionConfig, CaptionFilter

    if mode == "vectorised":
        return dict(fn=CaptionFilter(CaptionConfig(non_counting_rate=non_counting_rate)), batch_format="pyarrow")
    if mode == "per_row":
        return dict(fn=per_row_stage, fn_kwargs={"non_counting_rate": non_counting_rate}, batch_format="pandas")
    return dict(fn=lambda batch: batch.slice(0, 0), batch_format="pyarrow")


MODES = ("noop", "per_row", "vectorised")


def run(path: Path, cpus: int, rounds: int, non_counting_rate: float,
        batch_size: int | None = None) -> tuple[dict[str, list[float]], list[int]]:
    """(seconds of each mode's pass over the same in-memory blocks, the rows of each block), the modes
    interleaved round by round so that a slow spell of this shared machine hits all of them alike."""
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        # The timed passes read nothing: the rows sit in memory as cpus * 8 blocks of equal size. (Ray
        # Data 2.60's parquet reader ignores override_num_blocks here and makes 8 blocks of 50k to 1.6M
        # rows: the longest task then sets a pass's end, on 2 CPUs a quarter of a vectorised pass.)
        ds = ray.data.read_parquet(str(path)).repartition(cpus * 8).materialize()
        block_rows = sorted(r["rows"] for r in ds.map_batches(lambda b: {"rows": [b.num_rows]}, batch_format="pyarrow",
                                                               batch_size=None).take_all())
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(rounds):
            for mode in MODES:
                tic = time.perf_counter()
                ds.map_batches(**stage(mode, non_counting_rate), batch_size=batch_size).materialize()
                seconds[mode].append(time.perf_counter() - tic)
        return seconds, block_rows
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved passes of each mode; medians are reported")
    parser.add_argument("--non-counting-rate", type=float, default=0.0,
                        help="also keep this share of the rows without a count (the build's default is 0.05)")
    parser.add_argument("--real-captions", type=Path, default=None, metavar="JSONL",
                        help="use these real captions (e.g. ../shared/laion-captions/captions.jsonl), repeated to --rows rows, "
                             "instead of the synthetic ones")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per stage call; default: a whole block per call, as the build runs its caption stage")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from countclip.environment import configure_environment

    configure_environment()
    results = {"rows": args.rows, "rounds": args.rounds, "batch_size": args.batch_size, "non_counting_rate": args.non_counting_rate,
               "captions": str(args.real_captions) if args.real_captions else "synthetic"}
    with tempfile.TemporaryDirectory() as folder:
        if args.real_captions:
            path = real_source(args.rows, Path(folder), args.real_captions)
        else:
            path = synthetic_source(args.rows, Path(folder))
        for cpus in (1, 2):
            runs, block_rows = run(path, cpus, args.rounds, args.non_counting_rate, args.batch_size)
            seconds = {mode: statistics.median(values) for mode, values in runs.items()}
            per_row, vector = args.rows / seconds["per_row"], args.rows / seconds["vectorised"]
            ratios = [p / v for p, v in zip(runs["per_row"], runs["vectorised"])]  # per round, same spell
            # Net of the floor: what the stages themselves cost, without Ray Data's fixed scheduling time.
            net = (seconds["per_row"] - seconds["noop"]) / max(seconds["vectorised"] - seconds["noop"], 1e-9)
            results[f"{cpus}cpu"] = {"block_rows": block_rows, "seconds": runs, "median_seconds": seconds, "per_row_rows_per_s": per_row,
                                     "vectorised_rows_per_s": vector, "speedup_per_round": ratios,
                                     "speedup": statistics.median(ratios), "speedup_net_of_noop": net}
            print(f"{cpus} CPU: no-op pass {seconds['noop']:.2f}s; per-row {per_row:,.0f} rows/s, vectorised "
                  f"{vector:,.0f} rows/s: {statistics.median(ratios):.1f}x (rounds: "
                  f"{', '.join(f'{r:.1f}x' for r in ratios)}; {net:.1f}x net of the no-op pass)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
