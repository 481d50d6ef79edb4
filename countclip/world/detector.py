"""The CountWorld detector behind the offline verify stage: train it, and measure how well it counts.

``train_countworld_verifier`` renders a YOLO-format dataset of CountWorld scenes (1..10 objects of one
shape, and in some scenes distractors of another shape; every object is labelled with its own shape,
class names = ``world.scenes.SHAPES``), trains Ultralytics YOLOv8n from its architecture YAML (no download),
and keeps ``best.pt`` under a stable name with a JSON record of how it was made.
``evaluate_counts`` renders fresh scenes and reports how often the counted shape's detected count is
exact, counting with the verify stage's own code (``countclip.data.verify.YoloVerifier.count``).

Seeds: a seed s gives the training scenes from (s, 0), the validation scenes from (s, 1), and
``evaluate_counts(seed=s)`` scenes from (s, 2), so an evaluation never reuses a training scene.
Everything is written under ``out_dir``; nothing goes to the working directory or the home directory.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from countclip import storage
from countclip.data.verify import VerifyConfig, YoloVerifier, configure_ultralytics
from countclip.numbers import COUNTS
from countclip.world.files import png_bytes
from countclip.world.scenes import PLURALS, SHAPES, Scene, render, sample_scene

CHECKPOINT_NAME = "countworld-yolov8n.pt"
MAX_DISTRACTORS = 4
# Thresholds for counting CountWorld objects, chosen on scenes of seed 7 (countclip/weights/README.md):
# objects never overlap, so two boxes overlapping by IoU > 0.3 are one object seen twice.
COUNTWORLD_CONFIDENCE = 0.35
COUNTWORLD_IOU = 0.3


def detection_scene(rng: np.random.Generator, count: int, distractor_share: float, same_size: bool | None) -> Scene:
    """A scene for training or testing the detector: distractors (1..4, at most 12 objects in all) in
    ``distractor_share`` of the scenes; ``same_size=None`` flips a coin per scene."""
    distractors = 0
    if rng.random() < distractor_share:
        distractors = int(rng.integers(1, min(MAX_DISTRACTORS, 12 - count) + 1))
    same = bool(rng.random() < 0.5) if same_size is None else same_size
    return sample_scene(rng, count, distractors=distractors, same_size=same)


def yolo_labels(scene: Scene) -> str:
    """One line per object: ``class cx cy w h`` in [0, 1] (the YOLO txt label format)."""
    lines = []
    for shape, boxes in ((scene.shape, scene.boxes), (scene.distractor_shape, scene.distractor_boxes)):
        for x0, y0, x1, y1 in boxes:
            lines.append(f"{SHAPES.index(shape)} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}")
    return "\n".join(lines) + "\n"


def write_yolo_dataset(folder: str | Path, seed: int, train_images: int, val_images: int, image_size: int,
                       distractor_share: float = 0.4) -> Path:
    """Render the train and val splits (counts 1..10 uniform, same_size mixed) and the dataset YAML;
    return the YAML's path. The same arguments give the same files."""
    folder = Path(folder).resolve()
    for split, n, stream in (("train", train_images, 0), ("val", val_images, 1)):
        rng = np.random.default_rng((seed, stream))
        for i in range(n):
            scene = detection_scene(rng, int(rng.integers(1, 11)), distractor_share, same_size=None)
            storage.write_bytes(folder / "images" / split / f"{i:05d}.png", png_bytes(render(scene, image_size)))
            storage.write_text(folder / "labels" / split / f"{i:05d}.txt", yolo_labels(scene))
    names = "\n".join(f"  {i}: {shape}" for i, shape in enumerate(SHAPES))
    yaml_path = folder / "countworld.yaml"
    storage.write_text(yaml_path, f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return yaml_path


def train_countworld_verifier(
    out_dir: str | Path,
    seed: int = 0,
    images: int = 600,
    epochs: int = 100,
    image_size: int = 128,
    *,
    val_images: int = 100,
    distractor_share: float = 0.4,
    batch: int = 16,
    scale: float = 0.25,
    device: str = "cpu",
    workers: int = 0,
    eval_scenes: int = 300,
    echo: Callable[[str], None] = print,
) -> Path:
    """Train YOLOv8n on CountWorld; return ``out_dir/countworld-yolov8n.pt``.

    ``scale`` is Ultralytics' random-zoom range (1 +- scale). The dataset and Ultralytics' run folder go
    to ``out_dir/work``. Beside the checkpoint, ``countworld-yolov8n.json`` records the call, seed,
    versions, time, Ultralytics' validation metrics and ``evaluate_counts`` on ``eval_scenes`` fresh
    scenes (0 skips it). The shipped checkpoint's command and numbers: countclip/weights/README.md.
    """
    if images < 1 or val_images < 1 or epochs < 1:
        raise ValueError(f"images, val_images and epochs must be positive, got {images}, {val_images}, {epochs}")
    params = dict(seed=seed, images=images, epochs=epochs, image_size=image_size, val_images=val_images,
                  distractor_share=distractor_share, batch=batch, scale=scale, device=device, workers=workers)
    out_dir = Path(out_dir).resolve()
    work = out_dir / "work"
    data_yaml = write_yolo_dataset(work / "dataset", seed, images, val_images, image_size, distractor_share)
    echo(f"dataset: {images} train + {val_images} val scenes at {image_size} px in {data_yaml.parent}")

    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics import __version__ as ultralytics_version

    model = YOLO("yolov8n.yaml")  # the architecture alone: random init, nothing downloaded
    started = time.monotonic()
    metrics = model.train(
        data=str(data_yaml), epochs=epochs, imgsz=image_size, batch=batch, seed=seed, deterministic=True,
        workers=workers, device=device, project=str(work / "runs"), name="train", exist_ok=True,
        plots=False, verbose=False, scale=scale,
        # Upside-down triangles and hearts are not in this world; and objects shrunk far below their
        # drawn size (Ultralytics' default scale=0.5) turn hexagons into circles.
        flipud=0.0,
    )
    train_s = time.monotonic() - started
    best = Path(model.trainer.best)
    if not best.is_file():
        raise RuntimeError(f"Ultralytics finished without writing {best}")
    checkpoint = out_dir / CHECKPOINT_NAME
    with storage.atomic_file(checkpoint) as tmp:
        shutil.copyfile(best, tmp)
    echo(f"trained {epochs} epochs in {train_s:.0f} s; checkpoint {checkpoint}")

    counts = evaluate_counts(checkpoint, seed=seed, n=eval_scenes, image_size=image_size) if eval_scenes else None
    if counts:
        echo(f"exact counts on {eval_scenes} fresh scenes: {counts['accuracy']:.3f}")
    import torch

    record = {
        "call": "from countclip.world.detector import train_countworld_verifier; "
                f"train_countworld_verifier({str(out_dir)!r}, " + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")",
        "params": params,
        "ultralytics_args": dict(model="yolov8n.yaml", deterministic=True, plots=False, flipud=0.0, scale=scale),
        "versions": {"ultralytics": ultralytics_version, "torch": torch.__version__, "python": platform.python_version()},
        "train_seconds": round(train_s, 1),
        "val_metrics": {k: round(float(v), 4) for k, v in getattr(metrics, "results_dict", {}).items()},
        "count_eval": counts,
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }
    storage.write_text(checkpoint.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    return checkpoint


def evaluate_counts(
    weights: str | Path,
    seed: int = 1,
    n: int = 300,
    image_size: int = 128,
    *,
    distractor_share: float = 0.4,
    same_size: bool | None = True,
    confidence: float = COUNTWORLD_CONFIDENCE,
    iou: float = COUNTWORLD_IOU,
    device: str = "auto",
    verifier: YoloVerifier | None = None,
) -> dict:
    """Exact-count accuracy of the counted shape on ``n`` fresh scenes (counts 2..10 in turn).

    Returns ``accuracy``, ``per_count`` {count: accuracy}, ``distractor_accuracy`` (scenes with
    distractors), ``mean_abs_error`` and the settings. ``same_size=None`` mixes both kinds of scene.
    Pass a ready ``verifier`` to reuse a loaded model (then its own weights, thresholds and device apply).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if verifier is None:
        verifier = YoloVerifier(VerifyConfig(weights=str(weights), confidence=confidence, iou=iou,
                                             image_size=max(32, -(-image_size // 32) * 32), device=device))
    rng = np.random.default_rng((seed, 2))
    scenes = [detection_scene(rng, COUNTS[i % len(COUNTS)], distractor_share, same_size) for i in range(n)]
    found = verifier.count([render(s, image_size) for s in scenes], [PLURALS[s.shape] for s in scenes])
    truth = np.array([s.count for s in scenes])
    detected = np.array([c for c, _ in found])
    exact = detected == truth
    with_distractors = np.array([bool(s.distractor_boxes) for s in scenes])
    return {
        "accuracy": round(float(exact.mean()), 4),
        "per_count": {int(c): round(float(exact[truth == c].mean()), 4) for c in COUNTS if (truth == c).any()},
        "distractor_accuracy": round(float(exact[with_distractors].mean()), 4) if with_distractors.any() else None,
        "mean_abs_error": round(float(np.abs(detected - truth).mean()), 4),
        "n": n, "seed": seed, "image_size": image_size, "same_size": same_size,
        "distractor_share": distractor_share, "confidence": verifier.cfg.confidence, "iou": verifier.cfg.iou,
    }
