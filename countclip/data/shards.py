"""Balance the verified rows and write the training shards with their manifest.

Shards are parquet files holding the encoded image bytes beside the text columns, one kind of row per
shard (``shards/counting-NNNNN.parquet``, ``shards/non_counting-NNNNN.parquet``) in row groups of
``row_group_rows``: the training ingest (``countclip.data.ingest``) streams each kind on its own and
reads one row group per task. Parquet rather than
WebDataset tar: Ray Data and pyarrow read it natively on local disks and s3://, a reader can project
the few columns it needs (captions and counts without the image bytes for balancing or statistics),
row groups split work across readers, and the schema is typed and checked.

A dataset is complete only when its ``manifest.json`` exists: it is written last and lists every shard
with its row count and sha256. Locally the whole dataset folder is swapped in atomically; on S3 the
old manifest is deleted first, so a crash mid-write leaves no manifest rather than a stale one.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from countclip import output_folder, storage
from countclip.config import ConfigBase, require
from countclip.data.captions import sample_fraction
from countclip.losses import count_weights
from countclip.numbers import COUNTS

MANIFEST = "manifest.json"
FORMAT = "countclip-shards/2"
KINDS = ("counting", "non_counting")
SHARD_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("caption_count", pa.int16()),
    ("noun", pa.string()), ("kind", pa.string()), ("detected_count", pa.int64()), ("image", pa.binary()),
    ("image_width", pa.int64()), ("image_height", pa.int64()),
])
SHARD_COLUMNS = SHARD_SCHEMA.names


@dataclass
class ShardConfig(ConfigBase):
    rows_per_shard: int = 2000
    """Rows per parquet shard."""
    row_group_rows: int = 256
    """Rows per parquet row group: the unit one training-ingest task reads and decodes."""
    max_per_count: int | None = None
    """Keep at most this many verified rows per count 2..10 (null: no cap)."""
    balance_to_min: float | None = None
    """Cap each count at this multiple of the rarest count's rows (1.0: fully balanced; null: off)."""
    non_counting_ratio: float = 2.0
    """Non-counting rows written per counting row written (at most; fewer if fewer were fetched)."""
    seed: int = 0
    """Seeds which rows a cap keeps (a hash of the row id: reruns keep the same rows)."""

    def __post_init__(self) -> None:
        require(self.rows_per_shard > 0, f"shards.rows_per_shard must be positive, got {self.rows_per_shard}")
        require(self.row_group_rows > 0, f"shards.row_group_rows must be positive, got {self.row_group_rows}")
        require(self.max_per_count is None or self.max_per_count > 0, "shards.max_per_count must be positive or null")
        require(self.balance_to_min is None or self.balance_to_min >= 1, "shards.balance_to_min must be >= 1 or null")
        require(self.non_counting_ratio >= 0, f"shards.non_counting_ratio must be >= 0, got {self.non_counting_ratio}")


def select_rows(candidates: pa.Table, cfg: ShardConfig) -> tuple[np.ndarray, dict[str, int]]:
    """Which staged rows to write: (boolean mask, rejects by reason).

    candidates: sample_id, kind, caption_count for every row that passed verification. Within each
    count (and among non-counting rows) the rows with the lowest seeded hash of their id are kept.
    """
    ids = candidates.column("sample_id")
    rank = sample_fraction(pc.fill_null(ids, ""), cfg.seed)
    counts = candidates.column("caption_count").to_numpy(zero_copy_only=False).astype(int)
    counting = np.asarray(pc.equal(candidates.column("kind"), "counting"))
    histogram = {c: int(((counts == c) & counting).sum()) for c in COUNTS}
    caps = {c: n for c, n in histogram.items()}
    present = [n for n in histogram.values() if n > 0]
    if cfg.balance_to_min is not None and present:
        caps = {c: min(n, int(cfg.balance_to_min * min(present))) for c, n in caps.items()}
    if cfg.max_per_count is not None:
        caps = {c: min(n, cfg.max_per_count) for c, n in caps.items()}
    keep = np.zeros(len(counts), dtype=bool)
    for c, cap in caps.items():
        rows = np.flatnonzero(counting & (counts == c))
        keep[rows[np.argsort(rank[rows], kind="stable")[:cap]]] = True
    n_counting = int(keep.sum())
    non_counting = np.flatnonzero(~counting)
    n_non = min(len(non_counting), int(round(cfg.non_counting_ratio * n_counting)))
    keep[non_counting[np.argsort(rank[non_counting], kind="stable")[:n_non]]] = True
    rejects = {
        "over_count_cap": int(counting.sum()) - n_counting,
        "over_non_counting_ratio": len(non_counting) - n_non,
    }
    return keep, {k: v for k, v in rejects.items() if v}


def write_dataset(output: str, rows: pa.Table, manifest: dict, cfg: ShardConfig, summary=None,
                  overwrite: bool = False) -> dict:
    """Write ``rows`` (sorted by sample_id) as shards, ``summary.txt`` (``summary(manifest)``) and
    the manifest, last; return the manifest. An output holding files countclip did not write as a
    dataset is refused unless ``overwrite`` (they are then kept: ``output_folder.atomic_dir``)."""
    rows = rows.select(SHARD_COLUMNS).cast(SHARD_SCHEMA).sort_by("sample_id")
    if storage.is_s3(output):
        return _write_s3(output.rstrip("/"), rows, manifest, cfg, summary, overwrite)
    with output_folder.atomic_dir(storage.local_path(output), "dataset", overwrite) as tmp:
        result = _write_shards(str(tmp), rows, manifest, cfg, summary)
    return result


def check_output(output: str, overwrite: bool = False) -> None:
    """Before any work: the output may hold only a countclip dataset (or nothing), unless overwrite."""
    if not storage.is_s3(output):
        output_folder.check_output_folder(storage.local_path(output), "dataset", overwrite)
        return
    prefix = output.rstrip("/")
    foreign = sorted(set(storage.list_objects(prefix)) - _dataset_objects(prefix))
    if foreign and not overwrite:
        raise output_folder.OutputFolderError(
            f"output {prefix} already holds {len(foreign)} object(s) that are not a countclip dataset's (e.g. "
            f"{foreign[0]}); nothing was written. Choose a new prefix, or overwrite=true to write beside them (kept)")


def _dataset_objects(prefix: str) -> set[str]:
    """The objects of the countclip dataset under an s3:// prefix: its manifest, summary and shards."""
    staging = set(storage.list_objects(f"{prefix}/.staging"))  # a build's own scratch space
    try:
        old = read_manifest(prefix)
    except (FileNotFoundError, ValueError):
        return staging
    return {f"{prefix}/{s['path']}" for s in old["shards"]} | {f"{prefix}/{MANIFEST}", f"{prefix}/summary.txt"} | staging


def _write_s3(prefix: str, rows: pa.Table, manifest: dict, cfg: ShardConfig, summary, overwrite: bool) -> dict:
    check_output(prefix, overwrite)
    previous = _dataset_objects(prefix)
    storage.delete(f"{prefix}/{MANIFEST}")  # incomplete until rewritten last
    result = _write_shards(prefix, rows, manifest, cfg, summary)
    listed = {f"{prefix}/{s['path']}" for s in result["shards"]} | {f"{prefix}/{MANIFEST}", f"{prefix}/summary.txt"}
    for stale in sorted(previous - listed):  # only shards the previous manifest listed: countclip's own
        if "/.staging/" not in stale:
            storage.delete(stale)
    return result


def _write_shards(root: str, rows: pa.Table, manifest: dict, cfg: ShardConfig, summary) -> dict:
    shards = []
    for kind in KINDS:
        of_kind = rows.filter(pc.equal(rows.column("kind"), kind))
        for index, start in enumerate(range(0, of_kind.num_rows, cfg.rows_per_shard)):
            part = of_kind.slice(start, cfg.rows_per_shard)
            buffer = io.BytesIO()
            pq.write_table(part, buffer, compression="zstd", row_group_size=cfg.row_group_rows)
            data = buffer.getvalue()
            path = f"shards/{kind}-{index:05d}.parquet"
            storage.write_bytes(f"{root}/{path}", data)
            groups = [min(cfg.row_group_rows, part.num_rows - g) for g in range(0, part.num_rows, cfg.row_group_rows)]
            shards.append({"path": path, "kind": kind, "rows": part.num_rows, "row_groups": groups,
                           "sha256": hashlib.sha256(data).hexdigest()})
    counts = rows.column("caption_count").to_numpy(zero_copy_only=False)
    counting = np.asarray(pc.equal(rows.column("kind"), "counting"))
    per_count = {str(c): int(((counts == c) & counting).sum()) for c in COUNTS}
    histogram = {c: per_count[str(c)] for c in COUNTS}
    result = {
        "format": FORMAT,
        **manifest,
        "rows_written": rows.num_rows,
        "written": {"counting": int(counting.sum()), "non_counting": int((~counting).sum())},
        "per_count_written": per_count,
        "lambda_weights": ({scheme: {str(c): round(w, 6) for c, w in count_weights(histogram, scheme).items()}
                            for scheme in ("constant", "norm", "modal", "log")} if any(histogram.values()) else {}),
        "shards": shards,
    }
    if summary:
        storage.write_text(f"{root}/summary.txt", summary(result) + "\n")
    storage.write_text(f"{root}/{MANIFEST}", json.dumps(result, indent=1, sort_keys=True))
    return result


def read_manifest(dataset: str) -> dict:
    """The manifest of a complete dataset; a clear error for a missing or incomplete one."""
    uri = f"{str(dataset).rstrip('/')}/{MANIFEST}"
    try:
        manifest = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{dataset} is not a complete countclip dataset: {MANIFEST} is missing "
            "(the build never finished, or the path is wrong)") from None
    if manifest.get("format") == "countclip-shards/1":
        raise ValueError(f"{dataset} was written by an older countclip (countclip-shards/1: kinds mixed in one "
                         "shard); rebuild it with `countclip build-dataset` to stream it into training")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{uri} is not a {FORMAT} manifest (format={manifest.get('format')!r})")
    return manifest


def shard_uris(dataset: str, manifest: dict) -> list[str]:
    root = str(dataset).rstrip("/")
    return [f"{root}/{s['path']}" if storage.is_s3(root) else str(Path(root) / s["path"]) for s in manifest["shards"]]
