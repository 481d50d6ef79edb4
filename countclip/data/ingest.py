"""Training ingest: a built dataset streamed into each training rank, decoded and preprocessed ahead
of the step, in memory that depends on the batch and the prefetch depth, not on the dataset.

The plan (which rows a rank reads, in which order) is a pure function of the manifest, the seed, the
rank and the world size:

- pools: with ``counting_fraction`` set, the counting shards and the non-counting shards are two pools,
  streamed apart, so every step's batch holds exactly its counting rows; with null, one pool of all.
- chunks: a pool's parquet row groups (split further when a pool has fewer than one per rank).
- epochs: epoch e permutes the pool's chunks with (seed, pool, e) and deals them round robin to the
  ranks, padded with the permutation's first chunks so every rank gets as many. A rank's stream is its
  chunks of epoch 0, then of epoch 1, ...: endless, so a small dataset repeats, reshuffled each epoch.
- windows: ``window_chunks`` consecutive chunks of a rank's epoch are read by one task and their rows
  permuted with (seed, pool, e, rank, window), so rows mix across shards without a shuffle buffer (whose
  state a resumed run could not rebuild).
- step s takes rows [s * share, (s + 1) * share) of each pool's stream, share = the pool's rows per
  global batch / world size.

A run resumed at step s starts each stream at row s * share: the windows before it are skipped by
arithmetic on the manifest's row-group sizes, the leading rows of the first one inside its task. A
resumed run sees exactly the rows the uninterrupted run would have seen, in the same order.

Execution: one item per window in a Ray Dataset mapped by ``decode_windows`` (a task per window on any
node's CPUs, output order preserved, iterated with prefetch), or, in one process without Ray (the
experiment), the same function on a thread pool ahead of the step. Rows leave as uint8 pixels at the
model's size (``ImagePreprocess.to_pixels``); normalisation happens where the batch is used.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from countclip import storage
from countclip.config import ConfigBase, require
from countclip.data.shards import shard_uris
from countclip.images import ImageError, ImagePreprocess, decode_image

READ_COLUMNS = ["image", "caption", "caption_count", "kind"]
BLOCK_ROWS = 64  # rows per output block of a decode task: small blocks keep the prefetch memory fine-grained


@dataclass
class IngestConfig(ConfigBase):
    """How training reads the built dataset."""

    window_chunks: int = 4
    """Row groups one task reads and whose rows it shuffles together (rows mix across shards within it)."""
    prefetch_batches: int = 4
    """Batches per pool decoded ahead of the step."""
    decode_cpus: float = 1.0
    """CPUs each Ray Data decode task reserves (on any node of the cluster)."""
    threads: int = 2
    """Decode threads when the stream runs in-process (one process without Ray: the experiment)."""
    train_crop_scale: list[float] | None = None
    """open_clip's train transform, RandomResizedCrop with this scale range (e.g. [0.9, 1.0]), drawn
    per (seed, epoch, row); null: the evaluation transform (aspect-preserving resize, centre crop)."""

    def __post_init__(self) -> None:
        require(self.window_chunks >= 1, f"data.window_chunks must be >= 1, got {self.window_chunks}")
        require(self.prefetch_batches >= 1, f"data.prefetch_batches must be >= 1, got {self.prefetch_batches}")
        require(self.decode_cpus > 0, f"data.decode_cpus must be positive, got {self.decode_cpus}")
        require(self.threads >= 1, f"data.threads must be >= 1, got {self.threads}")
        if self.train_crop_scale is not None:
            low, high = (list(self.train_crop_scale) + [None, None])[:2]
            require(len(self.train_crop_scale) == 2 and 0 < low <= high <= 1,
                    f"data.train_crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.train_crop_scale}")


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one row group of one shard; ``first_row_id`` is the dataset-wide id of
    row ``start`` (rows are numbered shard by shard in manifest order)."""

    uri: str
    row_group: int
    start: int
    stop: int
    first_row_id: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def pool_chunks(dataset: str, manifest: dict, kinds: Sequence[str], min_chunks: int = 1) -> list[Chunk]:
    """The row groups of the shards of ``kinds``, split evenly until there are ``min_chunks``."""
    chunks, row_id = [], 0
    for uri, shard in zip(shard_uris(dataset, manifest), manifest["shards"]):
        offset = row_id
        for group, rows in enumerate(shard["row_groups"]):
            if shard["kind"] in kinds:
                chunks.append(Chunk(uri, group, 0, rows, offset))
            offset += rows
        row_id += shard["rows"]
    total = sum(c.rows for c in chunks)
    if chunks and len(chunks) < min_chunks:
        pieces = math.ceil(min_chunks / len(chunks))
        chunks = [Chunk(c.uri, c.row_group, lo, hi, c.first_row_id + lo)
                  for c in chunks for lo, hi in _even_split(c.rows, pieces) if hi > lo]
    assert sum(c.rows for c in chunks) == total
    return chunks


def _even_split(n: int, pieces: int) -> list[tuple[int, int]]:
    edges = [round(i * n / pieces) for i in range(pieces + 1)]
    return list(zip(edges[:-1], edges[1:]))


class RankPlan:
    """One rank's endless stream of one pool, as windows of chunks (see the module doc)."""

    def __init__(self, chunks: list[Chunk], pool: int, seed: int, rank: int, world_size: int, window_chunks: int):
        if not chunks:
            raise ValueError("a pool with no rows cannot be streamed")
        self.chunks, self.pool, self.seed = chunks, pool, seed
        self.rank, self.world_size, self.window_chunks = rank, world_size, window_chunks

    def epoch_windows(self, epoch: int) -> list[dict]:
        order = np.random.default_rng((self.seed, self.pool, epoch)).permutation(len(self.chunks))
        order = np.concatenate([order, order[: (-len(order)) % self.world_size]])
        mine = order[self.rank :: self.world_size]
        windows = []
        for index, start in enumerate(range(0, len(mine), self.window_chunks)):
            chunks = [self.chunks[j] for j in mine[start : start + self.window_chunks]]
            windows.append({
                "chunks": [[c.uri, c.row_group, c.start, c.stop, c.first_row_id] for c in chunks],
                "rows": sum(c.rows for c in chunks),
                "seed": [self.seed, self.pool, epoch, self.rank, index],
            })
        return windows

    def items(self, start_row: int, n_rows: int) -> list[dict]:
        """The windows covering rows [start_row, start_row + n_rows) of the stream, each with the rows
        of it to ``skip`` (at the start) and to ``take``."""
        items, position, epoch = [], 0, 0
        end = start_row + n_rows
        while position < end:
            for window in self.epoch_windows(epoch):
                lo, hi = position, position + window["rows"]
                position = hi
                if hi <= start_row:
                    continue
                skip = max(0, start_row - lo)
                take = min(hi, end) - lo - skip
                items.append(window | {"skip": skip, "take": take})
                if position >= end:
                    break
            epoch += 1
        return items


def read_window(window: dict) -> pa.Table:
    """The window's rows (image, caption, caption_count, kind, row_id, chunk: the index of the chunk it
    came from), permuted with its seed, then
    ``skip``ped and cut to ``take``."""
    parts = []
    for index, (uri, group, start, stop, first_row_id) in enumerate(window["chunks"]):
        filesystem, path = storage.arrow_filesystem(uri)
        try:
            with filesystem.open_input_file(path) as handle:
                table = pq.ParquetFile(handle).read_row_group(group, columns=READ_COLUMNS)
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"shard {uri} (row group {group}) cannot be read: {exc}") from None
        table = table.slice(start, stop - start)
        table = table.append_column("row_id", pa.array(np.arange(first_row_id, first_row_id + table.num_rows)))
        parts.append(table.append_column("chunk", pa.array(np.full(table.num_rows, index, dtype=np.int32))))
    table = pa.concat_tables(parts)
    order = np.random.default_rng(window["seed"]).permutation(table.num_rows)
    return table.take(order[window["skip"] : window["skip"] + window["take"]])


def decode_windows(batch: dict[str, np.ndarray], preprocess: ImagePreprocess,
                   block_rows: int = BLOCK_ROWS) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage: window items (a JSON ``window`` column) -> blocks of decoded, preprocessed rows.

    Out: image (N, H, W, 3) uint8 at the model's size, caption (str), count (the count the caption
    states, 0 for non-counting rows), row_id (int64), stream (the item's ``stream``, 0 if it has none). An undecodable image is an error naming its
    shard: every row was decoded when the dataset was built, so the files changed since.
    """
    for text in batch["window"]:
        window = json.loads(str(text))
        table = read_window(window)
        ids = table.column("row_id").to_numpy()
        counting = np.asarray(table.column("kind").to_pylist()) == "counting"
        counts = np.where(counting, table.column("caption_count").to_numpy(zero_copy_only=False), 0).astype(np.int64)
        captions = table.column("caption").to_pylist()
        images = table.column("image").to_pylist()
        shards = [window["chunks"][c][0] for c in table.column("chunk").to_numpy()]
        epoch = window["seed"][2]
        stream = int(window.get("stream", 0))
        for lo in range(0, table.num_rows, block_rows):
            pixels = [_pixels(images[i], preprocess, (window["seed"][0], epoch, int(ids[i])), shards[i], int(ids[i]))
                      for i in range(lo, min(lo + block_rows, table.num_rows))]
            yield {"image": np.stack(pixels), "caption": np.array(captions[lo : lo + block_rows], dtype=object),
                   "count": counts[lo : lo + block_rows], "row_id": ids[lo : lo + block_rows],
                   "stream": np.full(len(pixels), stream, dtype=np.int32)}


def _pixels(data: bytes | None, preprocess: ImagePreprocess, seed: tuple[int, int, int], shard: str,
            row_id: int) -> np.ndarray:
    try:
        if data is None:
            raise ImageError("empty", "no image bytes")
        image = decode_image(data)
    except ImageError as exc:
        raise ValueError(f"dataset shard {shard} holds an undecodable image (row {row_id}: {exc}); the shard changed "
                         "after the build: rebuild the dataset or restore the shard") from None
    return preprocess.to_pixels(image, seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))


def rebatch(blocks: Iterator[dict[str, np.ndarray]], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive rows of ``blocks`` in batches of exactly ``size`` (the last may be shorter). Each
    batch copies only its own rows: a block larger than a batch is read through views, never re-copied."""
    pending: deque[dict[str, np.ndarray]] = deque()
    held = 0
    for block in blocks:
        pending.append(block)
        held += len(block["row_id"])
        while held >= size:
            yield _take(pending, size)
            held -= size
    if held:
        yield _take(pending, held)


def _take(pending: deque, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` rows of the ``pending`` blocks, which keep the rest."""
    parts = []
    while n:
        head = pending[0]
        rows = len(head["row_id"])
        if rows <= n:
            parts.append(pending.popleft())
            n -= rows
        else:
            parts.append({k: v[:n] for k, v in head.items()})
            pending[0] = {k: v[n:] for k, v in head.items()}
            n = 0
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def local_blocks(items: list[dict], preprocess: ImagePreprocess, threads: int) -> Iterator[dict[str, np.ndarray]]:
    """``decode_windows`` over the items in this process, ``threads`` windows decoded ahead, in order."""
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        ahead: deque = deque()
        todo = iter(items)
        for item in todo:
            ahead.append(pool.submit(_decode_all, item, preprocess))
            if len(ahead) > threads:
                break
        while ahead:
            blocks = ahead.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(pool.submit(_decode_all, nxt, preprocess))
            yield from blocks


def _decode_all(item: dict, preprocess: ImagePreprocess) -> list[dict[str, np.ndarray]]:
    return list(decode_windows({"window": np.array([json.dumps(item)], dtype=object)}, preprocess))


def ray_streams(streams: Sequence[list[dict]], shares: Sequence[int], preprocess: ImagePreprocess,
                cfg: IngestConfig) -> list[Iterator[dict[str, np.ndarray]]]:
    """``decode_windows`` as Ray Data tasks on the cluster for several streams of one rank (its pools):
    one iterator of ``share``-row batches per stream.

    All the streams' windows go through ONE Ray Data execution, ordered by the step that first needs
    them (output order preserved, prefetched), and are handed back to their stream by the ``stream``
    column. One execution per pool would cost twice: Ray Data's autoscaling coordinator splits the CPUs
    evenly between the executions a process runs (so the pool that fills 60 % of each batch got half of
    the decode tasks), and every execution's scheduling loop takes CPU of the consuming process. The
    consumer holds at most about one window of the other streams' rows while it waits for a stream's.
    """
    import ray.data  # Ray only where a stream runs on a cluster (the experiment never imports it)

    order = []  # (first step that needs it, stream, index): the order the steps consume the windows in
    for j, (items, share) in enumerate(zip(streams, shares)):
        before = 0
        for k, item in enumerate(items):
            order.append((before // share, j, k))
            before += item["take"]
    merged = [streams[j][k] | {"stream": j} for _, j, k in sorted(order)]
    ds = ray.data.from_items([{"window": json.dumps(item)} for item in merged], override_num_blocks=len(merged))
    ds = ds.map_batches(decode_windows, fn_kwargs={"preprocess": preprocess}, batch_size=1, batch_format="numpy",
                        num_cpus=cfg.decode_cpus)
    ds.context.execution_options.preserve_order = True  # the plan's order is the batches' order
    ds.context.enable_progress_bars = False
    blocks = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=cfg.prefetch_batches)
    demux = _Demux(iter(blocks), len(streams))
    return [rebatch(demux.blocks(j), share) for j, share in enumerate(shares)]


class _Demux:
    """Blocks of several streams, in one order, handed to each stream in its own order."""

    def __init__(self, blocks: Iterator[dict[str, np.ndarray]], streams: int):
        self._blocks, self._waiting = blocks, [deque() for _ in range(streams)]

    def blocks(self, stream: int) -> Iterator[dict[str, np.ndarray]]:
        waiting = self._waiting[stream]
        while True:
            while not waiting:
                block = next(self._blocks, None)
                if block is None:
                    return
                self._waiting[int(block["stream"][0])].append(block)
            yield waiting.popleft()
