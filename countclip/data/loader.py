"""Training examples -> training batches: images, captions, fresh counterfactuals, is_counting mask.

A batch holds a fixed number of counting rows (caption states a count 2..10) among non-counting
ones, as in the paper's mix. ``MixedBatchSampler`` picks the rows of step ``s`` from ``(seed, s)``
alone, so a resumed run sees exactly the batches it would have seen, and every rank takes its slice
of the same global batch with the counting ratio kept per rank.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from countclip.numbers import COUNTS, caption_variants, counterfactual_caption

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TrainingSet:
    """Decoded training rows held in memory."""

    images: np.ndarray  # (N, H, W, 3) uint8, already at the model's input size
    captions: list[str]
    counts: np.ndarray  # (N,) int: the count the caption states, 0 for non-counting rows

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.captions) == len(self.counts):
            raise ValueError(
                f"training set columns differ in length: {len(self.images)} images, "
                f"{len(self.captions)} captions, {len(self.counts)} counts"
            )
        self.counts = np.asarray(self.counts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def is_counting(self) -> np.ndarray:
        return self.counts >= 2

    def histogram(self) -> dict[int, int]:
        found = Counter(int(c) for c in self.counts[self.is_counting])
        return {c: found.get(c, 0) for c in COUNTS}


@dataclass
class Batch:
    images: Tensor  # (B, 3, H, W) float, normalised
    tokens: Tensor  # (B, L) true captions
    cf_tokens: Tensor  # (K, M, L): M counterfactual captions for each of the K counting rows
    is_counting: Tensor  # (B,) bool; the counting rows are the first K
    counts: Tensor  # (B,) long

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.images, self.tokens, self.cf_tokens,
                                                                   self.is_counting, self.counts)))


class MixedBatchSampler:
    """Row indices of each step's batch: ``counting_per_batch`` counting rows first, then the rest.

    Each pool is walked through seeded per-epoch permutations, so every row is seen once per epoch
    of its pool. ``counting_fraction=None`` samples all rows as one pool (pretraining).
    """

    def __init__(self, counts: np.ndarray, batch_size: int, counting_fraction: float | None, seed: int):
        counts = np.asarray(counts)
        self.batch_size, self.seed = batch_size, seed
        if counting_fraction is None:
            self.pools = [np.arange(len(counts))]
            self.sizes = [batch_size]
        else:
            k = round(batch_size * counting_fraction)
            self.pools = [np.flatnonzero(counts >= 2), np.flatnonzero(counts < 2)]
            self.sizes = [k, batch_size - k]
        for pool, size in zip(self.pools, self.sizes):
            if size and not len(pool):
                kind = "counting" if pool is self.pools[0] and len(self.pools) == 2 else "training"
                raise ValueError(f"a batch needs {size} {kind} rows but the dataset holds none")

    @property
    def counting_per_batch(self) -> int:
        return self.sizes[0] if len(self.pools) == 2 else 0

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's rows of the global batch of ``step``: its share of each pool, pools in order."""
        parts = []
        for p, (pool, size) in enumerate(zip(self.pools, self.sizes)):
            if size % world_size:
                raise ValueError(f"{size} rows of a pool per batch do not split over {world_size} ranks")
            rows = _take(pool, step * size, size, (self.seed, p))
            share = size // world_size
            parts.append(rows[rank * share : (rank + 1) * share])
        return np.concatenate(parts)


def _take(pool: np.ndarray, start: int, n: int, seed: tuple[int, int]) -> np.ndarray:
    """Items start..start+n of the endless sequence of seeded permutations of ``pool``."""
    out = []
    while n > 0:
        epoch, offset = divmod(start, len(pool))
        order = np.random.default_rng((*seed, epoch)).permutation(pool)
        chunk = order[offset : offset + n]
        out.append(chunk)
        start, n = start + len(chunk), n - len(chunk)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


class BatchBuilder:
    """Rows -> Batch: normalise images, tokenise captions, draw counterfactuals.

    counterfactuals=1 draws one fresh random swap per counting row each step (the paper); 8 uses all
    eight other counts (CountPlus); in between, that many distinct other counts drawn fresh. The draw is seeded by (seed, step, row id), independent of how
    the batch is split over ranks.
    """

    def __init__(self, tokenizer, counterfactuals: int = 1, seed: int = 0,
                 mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD):
        if not 1 <= counterfactuals <= 8:
            raise ValueError(f"counterfactuals must be 1 (the paper) .. 8 (CountPlus), got {counterfactuals}")
        self.tokenizer, self.counterfactuals, self.seed = tokenizer, counterfactuals, seed
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def __call__(self, images: np.ndarray, captions: list[str], counts: np.ndarray,
                 row_ids: np.ndarray, step: int) -> Batch:
        counts = np.asarray(counts, dtype=np.int64)
        counting = counts >= 2
        if counting.any() and not counting[: counting.sum()].all():
            raise ValueError("counting rows must come first in a batch")
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        pixels = (pixels - self.mean) / self.std  # (B, 3, H, W)
        cf_captions = [
            self._counterfactuals(captions[i], int(counts[i]), (self.seed, step, int(row_ids[i])))
            for i in np.flatnonzero(counting)
        ]
        tokens = self.tokenizer(list(captions))
        length = tokens.shape[-1]
        cf_flat = [c for group in cf_captions for c in group]
        cf_tokens = self.tokenizer(cf_flat) if cf_flat else torch.zeros(0, length, dtype=tokens.dtype)
        return Batch(
            images=pixels,
            tokens=tokens,
            cf_tokens=cf_tokens.view(len(cf_captions), self.counterfactuals, length),
            is_counting=torch.from_numpy(counting),
            counts=torch.from_numpy(counts),
        )

    def _counterfactuals(self, caption: str, count: int, seed: tuple[int, int, int]) -> list[str]:
        if self.counterfactuals == 1:
            return [counterfactual_caption(caption, count, np.random.default_rng(seed))]
        others = [text for n, text in caption_variants(caption, count).items() if n != count]
        if self.counterfactuals == 8:
            return others
        picks = np.random.default_rng(seed).choice(len(others), size=self.counterfactuals, replace=False)
        return [others[i] for i in sorted(picks)]


def count_only_negatives(captions: list[str], counts: np.ndarray) -> float:
    """Mean, over counting rows, of other rows in the batch whose caption differs only in the count.

    Such rows act as counting hard negatives even for plain L_clip; real LAION batches almost never
    hold them, so a faithful experiment keeps this number near zero.
    """
    from countclip.numbers import parse_caption

    keys = []
    for text, count in zip(captions, counts):
        parsed = parse_caption(text) if count >= 2 else None
        if parsed is None:
            keys.append(None)
            continue
        start, end = parsed.spans[0]
        keys.append(text[:start].lower() + "#" + text[end:].lower())
    by_key = Counter((k, int(c)) for k, c in zip(keys, counts) if k is not None)
    per_key = Counter(k for k in keys if k is not None)
    rows = [per_key[k] - by_key[(k, int(c))] for k, c in zip(keys, counts) if k is not None]
    return float(np.mean(rows)) if rows else 0.0


def load_training_set(dataset: str, image_size: int, limit: int | None = None) -> TrainingSet:
    """Decode a built dataset's shards into memory, images resized (bicubic) to ``image_size``.

    Every row of a shard was fetched and verified, so an undecodable image here means the files
    were changed after the build: that is an error, not a skip.
    """
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from countclip import storage
    from countclip.data.shards import read_manifest, shard_uris

    manifest = read_manifest(dataset)
    uris = shard_uris(dataset, manifest)
    if not manifest["shards"] or manifest["rows_written"] == 0:
        raise ValueError(f"dataset {dataset} has no rows")
    images, captions, counts = [], [], []
    for uri in uris:
        if limit and len(captions) >= limit:
            break
        filesystem, path = storage.arrow_filesystem(uri)
        table = pq.read_table(path, filesystem=filesystem, columns=["image", "caption", "caption_count", "kind"])
        for data, text, count, kind in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            try:
                with Image.open(io.BytesIO(data)) as image:
                    pixels = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
            except (OSError, ValueError) as exc:
                raise ValueError(f"shard {uri} holds an undecodable image: {exc}") from None
            images.append(np.asarray(pixels))
            captions.append(text)
            counts.append(int(count) if kind == "counting" else 0)
            if limit and len(captions) >= limit:
                break
    return TrainingSet(np.stack(images), captions, np.array(counts))
