"""The verify stage (countclip.data.verify) and the CountWorld detector (countclip.verifier).

The stage tests run the shipped CountWorld checkpoint for real: the counts asserted are what it detects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from countclip.data.verify import (
    COUNTWORLD_WEIGHTS,
)
from countclip.world.detector import (
    evaluate_counts,
    train_countworld_verifier,
    write_yolo_dataset,
    yolo_labels,
)
from countclip.world.scenes import SHAPES, sample_scene


def test_evaluate_counts_on_the_shipped_checkpoint(verifier):
    report = evaluate_counts(COUNTWORLD_WEIGHTS, seed=12345, n=270, verifier=verifier)
    assert report["accuracy"] >= 0.95, report
    assert sorted(report["per_count"]) == list(range(2, 11))
    assert report["distractor_accuracy"] >= 0.9, report


def test_yolo_dataset_is_labelled_and_reproducible(tmp_path):
    a = write_yolo_dataset(tmp_path / "a", seed=3, train_images=6, val_images=3, image_size=64, distractor_share=0.5)
    b = write_yolo_dataset(tmp_path / "b", seed=3, train_images=6, val_images=3, image_size=64, distractor_share=0.5)
    assert "train: images/train" in a.read_text() and all(f"{i}: {s}" in a.read_text() for i, s in enumerate(SHAPES))
    files = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*.*") if p.suffix in (".png", ".txt"))
    assert len(files) == 18
    for rel in files:
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes()
    for label in (a.parent / "labels/train").glob("*.txt"):
        rows = np.loadtxt(label, ndmin=2)
        assert rows.shape[1] == 5 and set(rows[:, 0].astype(int)) <= set(range(len(SHAPES)))
        assert (rows[:, 1:] > 0).all() and (rows[:, 1:] < 1).all()


def test_yolo_labels_name_counted_objects_and_distractors():
    scene = sample_scene(np.random.default_rng(0), 3, distractors=2, shape="star")
    lines = [line.split() for line in yolo_labels(scene).splitlines()]
    assert [SHAPES[int(row[0])] for row in lines] == ["star"] * 3 + [scene.distractor_shape] * 2


def test_train_countworld_verifier_writes_checkpoint_and_record(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    out = train_countworld_verifier(tmp_path / "out", seed=1, images=16, val_images=8, epochs=1, eval_scenes=9,
                                    echo=lambda line: None)
    assert out == tmp_path / "out" / "countworld-yolov8n.pt" and out.stat().st_size > 1_000_000
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["params"]["seed"] == 1 and record["params"]["epochs"] == 1
    assert "train_countworld_verifier(" in record["call"] and record["count_eval"]["n"] == 9
    assert set(record["val_metrics"]) >= {"metrics/mAP50(B)", "fitness"}
    assert list(Path.cwd().iterdir()) == []  # nothing written to the working directory


