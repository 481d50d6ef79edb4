"""The verify stage: does the image hold as many things as its caption says? (Ultralytics YOLO.)

``YoloVerifier`` is a Ray Data stage without a ``ray`` import: it loads the detector once in
``__init__`` and maps a numpy batch in ``__call__``. It reads the columns

    image          encoded image bytes (None when the fetch failed)
    fetch_status   "ok" or the fetch stage's failure reason
    caption_count  the count the caption states, 2..10; None / NaN / 0 / -1 for non-counting rows
    noun           what the caption counts ("dogs", "cute little girls"); None or "" when unknown

and returns every input column unchanged plus

    detected_count  objects of the counted class the detector found; -1 when the row was not verified
    verified        detected_count == caption_count
    verify_status   verified | count_mismatch | no_detections | skipped | decode_error | unmapped_noun
    verify_class    the class name counted, "" when none

Only rows with fetch_status "ok" and a caption_count in 2..10 are verified; the rest are "skipped".
The counted class is the one the caption's noun names (``class_for_noun``); when the noun names no
class of the model, it is the dominant detected class (``counted_class``), or the row is marked
"unmapped_noun" if ``VerifyConfig.unmapped_noun`` is "skip". A bad row gets a status, never an
exception. ``countclip.world.detector.evaluate_counts`` measures a checkpoint with this same counting code.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from countclip import storage
from countclip.config import ConfigBase, require
from countclip.data.nouns import class_for_noun
from countclip.images import ImageError, decode_image
from countclip.numbers import COUNTS

COUNTWORLD_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "countworld-yolov8n.pt"
STATUSES = ("verified", "count_mismatch", "no_detections", "skipped", "decode_error", "unmapped_noun")


@dataclass
class VerifyConfig(ConfigBase):
    """How the verify stage detects and counts objects."""

    enabled: bool = True
    """Verify counting rows with the detector; false keeps every fetched counting row unverified (a
    naively filtered dataset: the paper's ablation of what verification buys)."""

    weights: str = "countworld"
    """Ultralytics detection weights: a local path, an s3:// URI (downloaded once into the cache), or
    "countworld" for the checkpoint shipped in countclip/weights (classes = CountWorld shapes, 128 px).
    yolov8n.pt (COCO, 80 classes; with image_size 640) for web images on a cluster."""
    confidence: float = 0.25
    """Detections below this confidence are not counted."""
    iou: float = 0.7
    """IoU threshold of non-maximum suppression."""
    image_size: int = 128
    """Inference size in pixels (``imgsz``), a multiple of 32; 128 for CountWorld, 640 for COCO weights."""
    batch_size: int = 32
    """Images per ``predict`` call."""
    device: str = "auto"
    """"auto" (the first CUDA device if there is one, else the CPU), "cpu", "cuda:0", "0", ..."""
    half: bool = False
    """Predict in fp16 on a GPU (ignored on the CPU)."""
    unmapped_noun: Literal["dominant", "skip"] = "dominant"
    """When the caption's noun names no class of the model: count the dominant detected class, or
    skip the row (verify_status "unmapped_noun", never verified)."""
    agnostic_nms: bool = False
    """Non-maximum suppression across classes too, so one object seen as two classes counts once. Right
    for CountWorld (objects never overlap); off for COCO, where a rider overlaps a horse."""
    max_detections: int = 300
    """Most detections kept per image (Ultralytics ``max_det``)."""
    decode_threads: int = 4
    """Threads decoding images (PIL releases the GIL while decoding): on a GPU, serial decoding of
    640 px images halved the stage's throughput against a bare predict loop."""

    def __post_init__(self) -> None:
        require(bool(self.weights), "weights must name an Ultralytics .pt file (local path or s3:// URI)")
        require(0 < self.confidence < 1, f"confidence must be in (0, 1), got {self.confidence}")
        require(0 < self.iou <= 1, f"iou must be in (0, 1], got {self.iou}")
        require(self.image_size >= 32 and self.image_size % 32 == 0,
                f"image_size must be a multiple of 32 (YOLO's stride), at least 32; got {self.image_size}")
        require(1 <= self.batch_size <= 4096, f"batch_size must be in [1, 4096], got {self.batch_size}")
        require(bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?|\d+", self.device)),
                f"device must be auto, cpu, mps, cuda, cuda:N or a GPU index N; got {self.device!r}")
        require(self.unmapped_noun in ("dominant", "skip"),
                f"unmapped_noun must be dominant or skip, got {self.unmapped_noun!r}")
        require(self.max_detections >= 10, f"max_detections must be >= 10 (counts go to 10), got {self.max_detections}")
        require(self.decode_threads >= 1, f"decode_threads must be >= 1, got {self.decode_threads}")

    def resolved_weights(self) -> str:
        return str(COUNTWORLD_WEIGHTS) if self.weights == "countworld" else self.weights

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"


def counted_class(classes: np.ndarray, confidences: np.ndarray, noun_class: int | None) -> int | None:
    """Which class to count in one image's detections: the noun's class when known, else the dominant.

    The dominant class is the most frequent detected class; a tie goes to the class with the larger
    summed confidence, then to the lower class id. None when the noun is unknown and nothing was found.
    """
    if noun_class is not None:
        return noun_class
    if len(classes) == 0:
        return None
    ids = np.asarray(classes, dtype=np.int64)
    found = np.unique(ids)
    ranks = [(int((ids == c).sum()), float(np.asarray(confidences)[ids == c].sum()), -int(c)) for c in found]
    return -max(ranks)[2]


# ------------------------------------------------------------------------------------------------
# The stage


@dataclass(frozen=True)
class Detections:
    """One image's detections above the confidence threshold."""

    classes: np.ndarray  # (K,) int64 class ids
    confidences: np.ndarray  # (K,) float32


def configure_ultralytics() -> None:
    """Turn off Ultralytics' settings sync and tracker integrations, and give it a local font.

    Call after ``countclip.environment.configure_environment`` (which points YOLO_CONFIG_DIR at a temp
    folder and sets YOLO_OFFLINE). Without a local Arial.ttf, building a dataset or drawing labels
    tries to download one even offline: matplotlib's DejaVu Sans stands in.
    """
    import matplotlib
    from ultralytics import settings
    from ultralytics.utils import USER_CONFIG_DIR

    off = {key: False for key in ("sync", "mlflow", "clearml", "comet", "dvc", "raytune", "tensorboard", "wandb",
                                  "vscode_msg", "openvino_msg") if settings.get(key)}
    if off:
        settings.update(off)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists() and font.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with storage.atomic_file(target) as tmp:
                shutil.copyfile(font, tmp)


class YoloVerifier:
    """Ray Data stage: detect and count the caption's objects; see the module doc for the columns."""

    def __init__(self, cfg: VerifyConfig):
        self.cfg = cfg
        self.device = cfg.resolved_device()
        self._decoder = ThreadPoolExecutor(cfg.decode_threads)
        weights = cfg.resolved_weights()
        if not storage.is_s3(weights) and not storage.local_path(weights).is_file():
            raise FileNotFoundError(
                f"verify weights {weights} not found: give VerifyConfig.weights a local .pt path or an s3:// URI"
            )
        path = storage.local_copy(weights)
        configure_ultralytics()
        from ultralytics import YOLO

        self.model = YOLO(str(path), task="detect")
        self.names: dict[int, str] = {int(k): str(v) for k, v in self.model.names.items()}
        self.detect([np.zeros((cfg.image_size, cfg.image_size, 3), dtype=np.uint8)])  # warm-up: build + fuse

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for (H, W, 3) uint8 RGB arrays, predicted in chunks of ``batch_size``."""
        cfg, found = self.cfg, []
        quantize = 16 if cfg.half and self.device not in ("cpu", "mps") else None
        for start in range(0, len(images), cfg.batch_size):
            # Ultralytics reads numpy arrays as OpenCV BGR; a list of arrays (not paths) honours the chunk.
            chunk = [np.ascontiguousarray(image[..., ::-1]) for image in images[start:start + cfg.batch_size]]
            results = self.model.predict(
                chunk, imgsz=cfg.image_size, conf=cfg.confidence, iou=cfg.iou, device=self.device,
                max_det=cfg.max_detections, agnostic_nms=cfg.agnostic_nms, quantize=quantize,
                verbose=False, save=False,
            )
            for result in results:
                boxes = result.boxes
                found.append(Detections(boxes.cls.cpu().numpy().astype(np.int64),
                                        boxes.conf.cpu().numpy().astype(np.float32)))
        return found

    def count(self, images: Sequence[np.ndarray], nouns: Sequence[str | None]) -> list[tuple[int, str]]:
        """(detected count, class name counted) per image; (-1, "") when the noun maps to no class and
        ``unmapped_noun`` is "skip"; the class name is "" when nothing was there to count."""
        results = []
        for noun, det in zip(nouns, self.detect(images)):
            noun_class = class_for_noun(noun, self.names)
            if noun_class is None and self.cfg.unmapped_noun == "skip":
                results.append((-1, ""))
                continue
            cls = counted_class(det.classes, det.confidences, noun_class)
            counted = 0 if cls is None else int((det.classes == cls).sum())
            results.append((counted, "" if cls is None else self.names.get(cls, str(cls))))
        return results

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for column in ("image", "fetch_status", "caption_count"):
            if column not in batch:
                raise KeyError(f"the verify stage needs a {column!r} column; the batch has {sorted(batch)}")
        n = len(batch["fetch_status"])
        nouns = batch["noun"] if "noun" in batch else [None] * n
        detected = np.full(n, -1, dtype=np.int64)
        verified = np.zeros(n, dtype=bool)
        status = np.full(n, "skipped", dtype=object)
        counted = np.full(n, "", dtype=object)

        candidates = [i for i in range(n)
                      if batch["fetch_status"][i] == "ok" and caption_count(batch["caption_count"][i]) is not None]
        rows, images = [], []
        for i, image in zip(candidates, self._decoder.map(decode_rgb, [batch["image"][i] for i in candidates])):
            if image is None:
                status[i] = "decode_error"
                continue
            rows.append(i)
            images.append(image)
        if rows:
            for i, (found, name) in zip(rows, self.count(images, [_noun_text(nouns[i]) for i in rows])):
                expected = caption_count(batch["caption_count"][i])
                detected[i], counted[i], verified[i] = found, name, found == expected
                status[i] = ("unmapped_noun" if found < 0 else "verified" if found == expected
                             else "no_detections" if found == 0 else "count_mismatch")
        return {**batch, "detected_count": detected, "verified": verified,
                "verify_status": status, "verify_class": counted}


def caption_count(value: Any) -> int | None:
    """The caption's count if it is one the stage verifies (2..10), else None (None, NaN, 0, -1, junk)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or not number.is_integer() or int(number) not in COUNTS:
        return None
    return int(number)


def decode_rgb(data: Any) -> np.ndarray | None:
    """Encoded image bytes -> (H, W, 3) uint8 RGB array; None if they are missing or undecodable."""
    if not isinstance(data, (bytes, bytearray, memoryview, np.bytes_)) or len(data) == 0:
        return None
    try:
        return np.asarray(decode_image(bytes(data)))
    except ImageError:  # the row gets a status, not an error
        return None


def _noun_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
