"""Run variants of the counting experiment side by side and tabulate them.

    python scripts/sweep_experiment.py --out runs/sweep --parallel 4 \
        --variant base: --variant lam1:finetune.loss.count_lambda=1 -- device=cuda

Each variant is ``name:override override ...``; overrides after ``--`` apply to all. Every variant
runs as its own `countclip experiment` process; the table reads each one's report.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_variant(name: str, overrides: list[str], out: Path) -> tuple[str, float, int]:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "countclip.cli", "experiment", "--out", str(folder), *overrides]
    tic = time.time()
    with open(folder / "log.txt", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    return name, time.time() - tic, rc


def _summary(folder: Path, seconds: float, rc: int) -> dict:
    report = folder / "report.json"
    if not report.exists():
        return {"rc": rc, "seconds": seconds, "log_tail": (folder / "log.txt").read_text()[-2000:]}
    r = json.loads(report.read_text())
    r.pop("config", None)
    return {"rc": rc, "seconds": seconds, **r}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--variant", action="append", default=[], help="name:override override ...")
    parser.add_argument("--variants-file", help="one variant per line, name:override override ...")
    parser.add_argument("--summary", help="JSON file rewritten as each variant finishes")
    parser.add_argument("common", nargs="*", help="overrides for every variant")
    args = parser.parse_args()
    out = Path(args.out)
    specs = list(args.variant)
    if args.variants_file:
        specs += [line.strip() for line in Path(args.variants_file).read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
    variants = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        variants.append((name, rest.split() + args.common))
    with ThreadPoolExecutor(args.parallel) as pool:
        done = {}
        for name, seconds, rc in pool.map(lambda v: run_variant(v[0], v[1], out), variants):
            print(f"finished {name} in {seconds:.0f}s rc={rc}", flush=True)
            if args.summary:
                done[name] = _summary(out / name, seconds, rc)
                Path(args.summary).write_text(json.dumps(done, indent=1))
    print(f"{'variant':<16} {'base':>6} {'control':>8} {'countclip':>9} {'gap':>6} {'zs ctl':>7} {'zs cc':>6} {'negs':>5} {'s':>5}")
    for name, _ in variants:
        path = out / name / "report.json"
        if not path.exists():
            print(f"{name:<16} FAILED (see {out / name / 'log.txt'})")
            continue
        r = json.loads(path.read_text())
        print(f"{name:<16} {r['base']['count_accuracy']:>6.1%} {r['control']['count_accuracy']:>8.1%} "
              f"{r['countclip']['count_accuracy']:>9.1%} {r['gain_over_control'] * 100:>+6.1f} "
              f"{r['control']['zeroshot_accuracy']:>7.1%} {r['countclip']['zeroshot_accuracy']:>6.1%} "
              f"{r['control'].get('count_only_negatives_per_image', 0):>5.2f} {r['seconds']:>5.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
