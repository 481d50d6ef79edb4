"""The caption filter on real LAION text: precision and recall on the hand-labelled captions, and
how many counting captions name a class a COCO detector can count; this grammar against a previous one.

    .venv/bin/python bench/caption_labels.py --out bench/results/caption_labels.json
    .venv/bin/python bench/caption_labels.py --previous 950dded --captions ../shared/laion-captions/captions.jsonl

Labels: tests/data/laion_captions_labelled.jsonl (see tests/data/LAION_LABELS.md: how they were drawn
and labelled). A caption states a count only where a number word two..ten counts visible things; a
returned count is a true positive when it equals the label. Each row carries `weight`, the share of
its population stratum it stands for (the strata were drawn at different rates), so the weighted
figures estimate precision and recall over all the shared captions that hold a number word.

The previous grammar and noun mapping are read from git (``git show REV:countclip/numbers.py`` and
``countclip/data/nouns.py``), so the comparison needs no copy of old code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "tests" / "data" / "laion_captions_labelled.jsonl"
CAPTIONS = REPO.parent / "shared" / "laion-captions" / "captions.jsonl"


def previous_module(rev: str, path: str, name: str) -> types.ModuleType:
    """A module's source at a git revision, executed as a module of its own (it must need no
    other module of the package)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, text=True)
    if source.returncode:
        raise SystemExit(f"cannot read {path} at {rev}: {source.stderr.strip()}")
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source.stdout, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def scores(rows: list[dict], counts: list[int | None]) -> dict:
    """Precision and recall of the returned counts against the labels, plain and weighted."""
    tally = Counter()
    for row, count in zip(rows, counts):
        hit = count is not None and count == row["count"]
        for key, w in (("", 1.0), ("w_", row["weight"])):
            tally[key + "tp"] += w * hit
            tally[key + "fp"] += w * (count is not None and not hit)
            tally[key + "fn"] += w * (row["count"] is not None and not hit)
    out = {k: int(tally[k]) for k in ("tp", "fp", "fn")}
    for key in ("", "w_"):
        tp, fp, fn = tally[key + "tp"], tally[key + "fp"], tally[key + "fn"]
        out[key + "precision"] = round(tp / (tp + fp), 4) if tp + fp else None
        out[key + "recall"] = round(tp / (tp + fn), 4) if tp + fn else None
    return out


def coco_share(captions: list[str], parse, class_for_noun, coco_names: list[str]) -> dict:
    """How many captions the grammar counts, and how many of those name a COCO class."""
    nouns = [p.noun for p in map(parse, captions) if p is not None]
    mapped = Counter(coco_names[c] for c in (class_for_noun(n, coco_names) for n in nouns) if c is not None)
    total = sum(mapped.values())
    return {"counting": len(nouns), "mapped": total, "share": round(total / max(len(nouns), 1), 4),
            "unmapped": len(nouns) - total, "top_classes": dict(mapped.most_common(8))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--captions", type=Path, default=CAPTIONS, help="all shared captions (JSON lines); skipped if absent")
    parser.add_argument("--previous", default="950dded", help="git revision of the previous grammar and noun mapping")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from countclip import vocabulary
    from countclip.data.nouns import class_for_noun
    from countclip.numbers import parse_caption

    old_numbers = previous_module(args.previous, "countclip/numbers.py", "previous_numbers")
    old_nouns = previous_module(args.previous, "countclip/data/nouns.py", "previous_nouns")
    rows = [json.loads(line) for line in args.labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    current = [p.count if p else None for p in map(parse_caption, (r["caption"] for r in rows))]
    previous = [p.count if p else None for p in map(old_numbers.parse_caption, (r["caption"] for r in rows))]
    assert previous == [r["previous_count"] for r in rows], "previous_count is not what --previous returns"
    results: dict = {"labels": str(args.labels), "previous": args.previous, "splits": {}}
    for split in [*dict.fromkeys(r["split"] for r in rows), "all"]:
        idx = [i for i, r in enumerate(rows) if split in ("all", r["split"])]
        pick = [rows[i] for i in idx]
        results["splits"][split] = {"rows": len(idx), "true_counts": sum(r["count"] is not None for r in pick),
                                    "previous": scores(pick, [previous[i] for i in idx]),
                                    "current": scores(pick, [current[i] for i in idx])}
    coco = [s[0] for s in vocabulary.class_names("coco")]
    # What a COCO detector can verify: the returned counts whose noun names a COCO class, and the rest
    # (VerifyConfig.unmapped_noun: "dominant" counts the most frequent detected class, "skip" drops them).
    nouns = [p.noun if p else None for p in map(parse_caption, (r["caption"] for r in rows))]
    for split in results["splits"]:
        for mapped in (True, False):
            idx = [i for i, r in enumerate(rows) if split in ("all", r["split"]) and current[i] is not None
                   and (class_for_noun(nouns[i], coco) is not None) == mapped]
            hits = sum(current[i] == rows[i]["count"] for i in idx)
            results["splits"][split]["coco_mapped" if mapped else "coco_unmapped"] = {
                "returned": len(idx), "true": hits, "precision": round(hits / max(len(idx), 1), 4)}
    true = [r for r in rows if r["count"] is not None]
    results["labelled_true_counts_noun_to_coco"] = {
        "rows": len(true),
        "label_says_coco": sum(r["coco"] is not None for r in true),
        "previous_agrees_with_label": sum(_name(old_nouns.class_for_noun(r["noun"], coco), coco) == r["coco"] for r in true),
        "current_agrees_with_label": sum(_name(class_for_noun(r["noun"], coco), coco) == r["coco"] for r in true),
    }
    if args.captions.is_file():
        captions = [json.loads(line)["caption"] for line in args.captions.read_text(encoding="utf-8").splitlines() if line.strip()]
        results["shared_captions"] = {"captions": len(captions),
                                      "previous": coco_share(captions, old_numbers.parse_caption, old_nouns.class_for_noun, coco),
                                      "current": coco_share(captions, parse_caption, class_for_noun, coco)}
    else:
        print(f"{args.captions} not found: the COCO share on the shared captions is not measured", file=sys.stderr)
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


def _name(cls: int | None, names: list[str]) -> str | None:
    return None if cls is None else names[cls]


if __name__ == "__main__":
    main()
