"""CountWorld on disk: the CountBench-format benchmark, the zero-shot tasks in CLIP_benchmark's
webdataset layout, and, for the data pipeline, a noisy source and clean datasets."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from countclip import output_folder, storage
from countclip.data.shards import SHARD_SCHEMA, ShardConfig, check_output, write_dataset
from countclip.numbers import COUNTS, caption_variants
from countclip.world.scenes import (
    ZEROSHOT_TASKS,
    CaptionStyle,
    caption,
    render,
    sample_scene,
    zeroshot_class_word,
    zeroshot_templates,
)
from countclip.world.sets import sample_rows, zeroshot_set


def png_bytes(pixels: np.ndarray) -> bytes:
    return encode(pixels, "png")


def encode(pixels: np.ndarray, image_format: str = "png") -> bytes:
    """(H, W, 3) uint8 -> PNG bytes, or JPEG at quality 90."""
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(pixels).save(buffer, format="PNG")
    elif image_format == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    else:
        raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
    return buffer.getvalue()


def write_benchmark(folder: str | Path, seed: int, per_count: int, image_size: int, same_size: bool = False,
                    grid: int | None = None, overwrite: bool = False) -> Path:
    """A balanced CountBench-format benchmark: ``per_count`` images for each count 2..10.

    Writes ``countworld_bench.json`` (fields image_url, text, number; image_url relative to the file)
    and the PNGs under ``images/``; returns the JSON path. The folder appears whole or not at all; one
    holding files countclip did not write is refused unless ``overwrite`` (they are then kept).
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    with output_folder.atomic_dir(folder, "benchmark", overwrite) as tmp:
        entries = []
        for count in COUNTS:
            for _ in range(per_count):
                scene = sample_scene(rng, count, same_size=same_size, grid=grid)
                name = f"images/{len(entries):05d}.png"
                storage.write_bytes(tmp / name, png_bytes(render(scene, image_size)))
                entries.append({"image_url": name, "text": caption(scene, rng, with_count=True), "number": count})
        storage.write_text(tmp / "countworld_bench.json", json.dumps(entries, indent=1))
    return folder / "countworld_bench.json"


def write_zeroshot_wds(root: str | Path, seed: int, n: int, image_size: int, same_size: bool = False,
                       grid: int | None = None, templates: int = 32, overwrite: bool = False) -> list[str]:
    """CountWorld's zero-shot tasks (shape, colour, background) in CLIP_benchmark's webdataset layout:
    ``root/wds/countworld_<task>/`` holding ``test/0.tar`` (``<key>.png`` + ``<key>.cls``, the class
    index), ``test/nshards.txt``, ``classnames.txt`` and ``zeroshot_classification_templates.txt``
    (``{c}`` templates). The same ``n`` images in every task. Returns the dataset names
    (``wds/countworld_shape``, ...), which ``clip_benchmark eval --dataset NAME --dataset_root 'ROOT/wds/{dataset}'``
    and ``countclip evaluate zeroshot_wds=[ROOT/NAME]`` read. The root appears whole or not at all; one
    holding files countclip did not write is refused unless ``overwrite`` (they are then kept)."""
    images, labels = zeroshot_set(seed, n, image_size, same_size, grid)
    pngs = [png_bytes(image) for image in images]
    root = Path(root)
    names = []
    with output_folder.atomic_dir(root, "zero-shot set", overwrite) as tmp:
        for task, classes in ZEROSHOT_TASKS.items():
            folder = tmp / "wds" / f"countworld_{task}"
            (folder / "test").mkdir(parents=True)
            with tarfile.open(folder / "test" / "0.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
                for i, (png, label) in enumerate(zip(pngs, labels[task])):
                    _add_tar_member(tar, f"{i:06d}.png", png)
                    _add_tar_member(tar, f"{i:06d}.cls", str(int(label)).encode())
            (folder / "test" / "nshards.txt").write_text("1\n")
            (folder / "classnames.txt").write_text("".join(f"{zeroshot_class_word(task, c)}\n" for c in classes))
            (folder / "zeroshot_classification_templates.txt").write_text(
                "".join(f"{t}\n" for t in zeroshot_templates(task, templates)))
            names.append(f"wds/countworld_{task}")
    return names


def _add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same seed gives the same bytes
    tar.addfile(info, io.BytesIO(data))


# What the noisy source holds, as shares of its rows. Counting rows whose caption lies about the
# count, number words that count nothing, unreadable and missing images, and empty captions are
# the kinds of noise LAION holds; the ground truth beside the source says which row is which.
SOURCE_MIX: dict[str, float] = {
    "truthful": 0.34,  # a counting caption stating the true count
    "lie": 0.10,  # a counting caption stating another count
    "non_count": 0.05,  # a number word that counts nothing ("a three-year-old's drawing of ...")
    "plain": 0.43,  # a caption without a count
    "broken": 0.04,  # the image file is corrupt (truncated, empty, or HTML)
    "missing": 0.03,  # the URL points at no file
    "no_caption": 0.01,  # TEXT is null
}
NON_COUNT_PHRASES: tuple[str, ...] = (
    "a three-year-old's drawing of {c}",
    "{c}, a two-way view",
    "{c} at ten o'clock",
    "{c} for five dollars",
    "episode two: {c}",
    "{c} in three days",
    "a two-tone print of {c}",
)


def write_source(folder: str | Path, seed: int, rows: int, image_size: int = 128, same_size: bool = True,
                 distractor_share: float = 0.15, grid: int | None = None, overwrite: bool = False) -> dict[str, Path]:
    """A LAION-style noisy source: ``source.parquet`` (SAMPLE_ID, URL, TEXT, WIDTH, HEIGHT,
    similarity; URLs are file:// paths to ``images/``), and ``truth.parquet`` with the ground truth
    of every row (kind, true count of the named shape, the count the caption states). The folder
    appears whole or not at all (one holding other files is refused unless ``overwrite``: see
    ``output_folder.atomic_dir``); the same seed gives the same files."""
    folder = Path(folder).resolve()
    rng = np.random.default_rng(seed)
    kinds, shares = list(SOURCE_MIX), np.array(list(SOURCE_MIX.values()))
    source, truth = [], []
    with output_folder.atomic_dir(folder, "source", overwrite) as tmp:
        for i in range(rows):
            kind = kinds[rng.choice(len(kinds), p=shares / shares.sum())]
            counting = kind in ("truthful", "lie") or (kind in ("broken", "missing") and rng.random() < 0.5)
            count = int(rng.integers(2, 11) if counting else rng.integers(1, 11))
            distractors = int(rng.integers(1, 4)) if counting and rng.random() < distractor_share else 0
            scene = sample_scene(rng, count, distractors=distractors, same_size=same_size, grid=grid)
            text = caption(scene, rng, with_count=counting)
            stated = count if counting else None
            if kind == "lie":
                stated = int(rng.choice([n for n in COUNTS if n != count]))
                text = caption_variants(text, count)[stated]
            elif kind == "non_count":
                text = NON_COUNT_PHRASES[rng.integers(len(NON_COUNT_PHRASES))].format(c=text)
            sample_id = f"cw{seed}-{i:07d}"
            name = f"images/{sample_id}.png"
            data = png_bytes(render(scene, image_size))
            if kind == "broken":
                data = [b"", data[: len(data) // 2], b"<html><body>404</body></html>"][rng.integers(3)]
            if kind != "missing":
                storage.write_bytes(tmp / name, data)
            source.append({"SAMPLE_ID": sample_id, "URL": (folder / name).as_uri(),
                           "TEXT": None if kind == "no_caption" else text, "WIDTH": image_size,
                           "HEIGHT": image_size, "similarity": float(rng.uniform(0.28, 0.42))})
            truth.append({"sample_id": sample_id, "kind": kind, "true_count": count, "stated_count": stated,
                          "shape": scene.shape, "distractors": distractors})
        pq.write_table(pa.Table.from_pylist(source), tmp / "source.parquet")
        pq.write_table(pa.Table.from_pylist(truth), tmp / "truth.parquet")
    return {"source": folder / "source.parquet", "truth": folder / "truth.parquet"}


def write_clean_dataset(output: str, seed: int, rows: int, image_size: int = 64, counting_share: float = 0.4,
                        rows_per_shard: int = 2000, *, style: CaptionStyle | None = None, same_size: bool = True,
                        grid: int | None = None, image_format: str = "png", miscount_share: float = 0.0,
                        overwrite: bool = False) -> dict:
    """A training dataset straight from CountWorld's ground truth (no fetch, no verification): the
    same shards and manifest the build writes, for the experiment, tests and quick training runs.
    image_format: png (lossless: the pixels rendered) or jpeg (quality 90, as the build's fetch writes).
    miscount_share: that share of the counting captions states another count (drawn apart from the
    rows, so the same seed gives the same scenes with and without it): a naively filtered set."""
    check_output(output, overwrite)  # before the rendering, not after
    records, lies = [], np.random.default_rng((seed, 17))
    for i, row in enumerate(sample_rows(seed, rows, counting_share, style, same_size, grid)):
        text, stated = row.caption, row.count
        if stated and miscount_share and lies.random() < miscount_share:
            stated = int(lies.choice([n for n in COUNTS if n != row.count]))
            text = caption_variants(row.caption, row.count)[stated]
        records.append({
            "sample_id": f"cw{seed}-{i:07d}", "url": "", "caption": text, "caption_count": stated,
            "noun": "", "kind": "counting" if row.count else "non_counting", "detected_count": row.scene.count,
            "image": encode(render(row.scene, image_size), image_format), "image_width": image_size,
            "image_height": image_size,
        })
    table = pa.Table.from_pylist(records, schema=SHARD_SCHEMA)
    manifest = {"rows_in": rows, "rows_rejected": 0, "rejects": {},
                "source": {"countworld_seed": seed, "miscount_share": miscount_share}}
    return write_dataset(output, table, manifest, ShardConfig(rows_per_shard=rows_per_shard), overwrite=overwrite)
