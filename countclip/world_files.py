"""CountWorld on disk: the CountBench-format benchmark (and, for the data pipeline, a noisy source)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from countclip import storage
from countclip.numbers import COUNTS
from countclip.world import caption, render, sample_scene


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_benchmark(folder: str | Path, seed: int, per_count: int, image_size: int, same_size: bool = False) -> Path:
    """A balanced CountBench-format benchmark: ``per_count`` images for each count 2..10.

    Writes ``countworld_bench.json`` (fields image_url, text, number; image_url relative to the file)
    and the PNGs under ``images/``; returns the JSON path. The folder appears whole or not at all.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    with storage.atomic_dir(folder) as tmp:
        entries = []
        for count in COUNTS:
            for _ in range(per_count):
                scene = sample_scene(rng, count, same_size=same_size)
                name = f"images/{len(entries):05d}.png"
                storage.write_bytes(tmp / name, png_bytes(render(scene, image_size)))
                entries.append({"image_url": name, "text": caption(scene, rng, with_count=True), "number": count})
        storage.write_text(tmp / "countworld_bench.json", json.dumps(entries, indent=1))
    return folder / "countworld_bench.json"
