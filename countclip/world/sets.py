"""CountWorld rows for training and evaluation: seeded streams of (scene, caption, count), and the
held-out zero-shot set with its per-task classifier accuracy.

Every CountWorld training row (the experiment's datasets, the clean datasets of
``world.files.write_clean_dataset``) comes from ``sample_rows``, so the same seed gives the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from countclip.evaluate import zeroshot_accuracy
from countclip.world.scenes import ZEROSHOT_TASKS, CaptionStyle, Scene, caption, render, sample_scene, zeroshot_prompts


@dataclass(frozen=True)
class WorldRow:
    scene: Scene
    caption: str
    count: int  # the count the caption states (2..10), 0 for a count-free caption


def sample_rows(seed: int, n: int, counting_share: float, style: CaptionStyle | None = None,
                same_size: bool = False, grid: int | None = None) -> Iterator[WorldRow]:
    """``n`` rows; a ``counting_share`` of them with counting captions (2..10 objects), the rest
    count-free captions of 1..10 objects."""
    rng = np.random.default_rng(seed)
    style = style or CaptionStyle()
    for _ in range(n):
        counting = rng.random() < counting_share
        scene = sample_scene(rng, int(rng.integers(2, 11) if counting else rng.integers(1, 11)),
                             same_size=same_size, grid=grid)
        yield WorldRow(scene, caption(scene, rng, with_count=counting, style=style), scene.count if counting else 0)


def zeroshot_set(seed: int, n: int, image_size: int, same_size: bool = False,
                 grid: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Held-out images (N, H, W, 3) uint8 and their class index for each zero-shot task (shape,
    colour, background)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, int(rng.integers(1, 11)), same_size=same_size, grid=grid) for _ in range(n)]
    images = np.stack([render(scene, image_size) for scene in scenes])
    labels = {task: np.array([classes.index(getattr(s, task)) for s in scenes]) for task, classes in ZEROSHOT_TASKS.items()}
    return images, labels


def zeroshot_by_task(model, tokenizer, images: torch.Tensor, labels: dict[str, np.ndarray], device) -> dict[str, float]:
    """Zero-shot accuracy per task, each class's classifier the mean of its world-phrased prompts."""
    return {
        task: zeroshot_accuracy(model, tokenizer, images, labels[task],
                                [zeroshot_prompts(task, value) for value in classes], device=device)
        for task, classes in ZEROSHOT_TASKS.items()
    }
