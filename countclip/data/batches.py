"""Training batches: the ingest's pools merged per step, and each step's Batch (images normalised on the
device, captions tokenised, counterfactuals drawn fresh).

``TrainingStream`` gives, per step, this rank's rows: its share of the counting pool first, then its
share of the non-counting pool, so every global batch holds exactly round(batch * counting_fraction)
counting rows and every rank the same share of them. ``BatchBuilder`` turns those rows into tensors;
its counterfactual draws are seeded by (seed, step, row id), so they do not depend on how a batch is
split over ranks, and a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from countclip.data.ingest import IngestConfig, RankPlan, local_blocks, pool_chunks, ray_streams, rebatch
from countclip.data.shards import read_manifest
from countclip.images import ImagePreprocess
from countclip.numbers import COUNTS, caption_variants, counterfactual_caption, parse_caption


def batch_mix(batch_size: int, counting_fraction: float | None, world_size: int) -> list[tuple[tuple[str, ...], int]]:
    """(kinds of the pool, its rows per global batch) for each pool; the split must divide by the ranks."""
    if counting_fraction is None:
        pools = [(("counting", "non_counting"), batch_size)]
    else:
        k = round(batch_size * counting_fraction)
        pools = [(("counting",), k), (("non_counting",), batch_size - k)]
    for kinds, rows in pools:
        if rows % world_size:
            raise ValueError(f"each batch holds {rows} {'/'.join(kinds)} rows, which do not split over {world_size} "
                             "ranks; choose train.batch_size and train.counting_fraction so that they do")
    return [(kinds, rows) for kinds, rows in pools if rows]


def check_mix(manifest: dict, dataset: str, batch_size: int, counting_fraction: float | None, world_size: int) -> None:
    """Refuse up front a dataset that cannot serve the batch mix (a batch would repeat rows)."""
    written = manifest["written"]
    for kinds, rows in batch_mix(batch_size, counting_fraction, world_size):
        held = sum(written[kind] for kind in kinds)
        if held < rows:
            what = "rows" if len(kinds) > 1 else f"{kinds[0].replace('_', '-')} rows"
            raise ValueError(f"dataset {dataset} holds {held} {what} but each batch needs {rows} "
                             f"(train.batch_size {batch_size}, train.counting_fraction {counting_fraction}); "
                             "lower the batch size or the counting fraction, or build a bigger dataset")


@dataclass
class StepRows:
    """One step's rows on one rank, counting rows first."""

    images: np.ndarray  # (B, H, W, 3) uint8 at the model's input size
    captions: list[str]
    counts: np.ndarray  # (B,) int64: the count the caption states, 0 for non-counting rows
    row_ids: np.ndarray  # (B,) int64, dataset-wide


class TrainingStream:
    """A built dataset as per-step rows for the given ranks (one rank in training; several ranks'
    rows concatenated, counting rows first, give the global batch as one process sees it)."""

    def __init__(self, dataset: str, batch_size: int, counting_fraction: float | None, seed: int,
                 preprocess: ImagePreprocess, cfg: IngestConfig | None = None, *, rank: int = 0, world_size: int = 1,
                 ranks: Sequence[int] | None = None, backend: str = "local"):
        if backend not in ("local", "ray"):
            raise ValueError(f"backend must be local or ray, got {backend!r}")
        self.dataset, self.manifest = dataset, read_manifest(dataset)
        if not self.manifest["rows_written"]:
            raise ValueError(f"dataset {dataset} is empty: its manifest lists no rows")
        check_mix(self.manifest, dataset, batch_size, counting_fraction, world_size)
        self.cfg, self.preprocess, self.backend = cfg or IngestConfig(), preprocess, backend
        self.ranks = list(ranks) if ranks is not None else [rank]
        self.world_size = world_size
        self.batch_size, self.counting_fraction, self.seed = batch_size, counting_fraction, seed
        self.plain = counting_fraction is None  # one pool, every row plain (pretraining: no L_count)
        self.pools = []  # (per-rank plans, rows per rank per step)
        for pool, (kinds, rows) in enumerate(batch_mix(batch_size, counting_fraction, world_size)):
            chunks = pool_chunks(dataset, self.manifest, kinds, min_chunks=world_size)
            plans = [RankPlan(chunks, pool, seed, r, world_size, self.cfg.window_chunks) for r in self.ranks]
            self.pools.append((plans, rows // world_size))

    @classmethod
    def for_training(cls, dataset: str, train_cfg, preprocess: ImagePreprocess, **kwargs) -> TrainingStream:
        """The stream a ``TrainConfig`` asks for (its batch size, counting fraction, seed and data settings)."""
        return cls(dataset, train_cfg.batch_size, train_cfg.counting_fraction, train_cfg.seed, preprocess,
                   train_cfg.data, **kwargs)

    def histogram(self) -> dict[int, int]:
        """Counting rows per count 2..10 in the dataset (for the per-count lambda weights)."""
        return {c: int(self.manifest["per_count_written"].get(str(c), 0)) for c in COUNTS}

    def steps(self, start: int, stop: int) -> Iterator[StepRows]:
        """Rows of steps start..stop-1, decoded ahead of use."""
        plans = [(plan, share) for plans, share in self.pools for plan in plans]  # pool by pool, rank by rank
        items = [plan.items(start * share, (stop - start) * share) for plan, share in plans]
        shares = [share for _, share in plans]
        if self.backend == "ray":
            streams = ray_streams(items, shares, self.preprocess, self.cfg)
        else:
            streams = [rebatch(local_blocks(i, self.preprocess, self.cfg.threads), share) for i, share in zip(items, shares)]
        for _ in range(start, stop):
            parts = [next(stream) for stream in streams]
            counts = np.concatenate([p["count"] for p in parts]).astype(np.int64)
            yield StepRows(np.concatenate([p["image"] for p in parts]),
                           [str(c) for p in parts for c in p["caption"]],
                           np.zeros_like(counts) if self.plain else counts,
                           np.concatenate([p["row_id"] for p in parts]).astype(np.int64))


@dataclass
class Batch:
    images: Tensor  # (B, 3, H, W) float, normalised
    tokens: Tensor  # (B, L) true captions
    cf_tokens: Tensor  # (K, M, L): M counterfactual captions for each of the K counting rows
    is_counting: Tensor  # (B,) bool; the counting rows are the first K
    counts: Tensor  # (B,) long


class BatchBuilder:
    """StepRows -> Batch on ``device``: normalise images there, tokenise captions, draw counterfactuals.

    counterfactuals=1 draws one fresh random swap per counting row each step (the paper); 8 uses all
    eight other counts (CountPlus); in between, that many distinct other counts drawn fresh.
    """

    def __init__(self, tokenizer, preprocess: ImagePreprocess, counterfactuals: int = 1, seed: int = 0):
        if not 1 <= counterfactuals <= 8:
            raise ValueError(f"counterfactuals must be 1 (the paper) .. 8 (CountPlus), got {counterfactuals}")
        self.tokenizer, self.preprocess, self.counterfactuals, self.seed = tokenizer, preprocess, counterfactuals, seed

    def __call__(self, rows: StepRows, step: int, device: torch.device | str = "cpu") -> Batch:
        counts = np.asarray(rows.counts, dtype=np.int64)
        counting = counts >= 2
        if counting.any() and not counting[: counting.sum()].all():
            raise ValueError("counting rows must come first in a batch")
        device = torch.device(device)
        pixels = torch.from_numpy(np.ascontiguousarray(rows.images))
        if device.type == "cuda":  # pinned host memory: the copy overlaps with compute
            pixels = pixels.pin_memory()
        images = self.preprocess.normalize(pixels.to(device, non_blocking=True))  # (B, 3, H, W)
        cf_captions = [self._counterfactuals(rows.captions[i], int(counts[i]), (self.seed, step, int(rows.row_ids[i])))
                       for i in np.flatnonzero(counting)]
        tokens = self.tokenizer(list(rows.captions))
        length = tokens.shape[-1]
        cf_flat = [c for group in cf_captions for c in group]
        cf_tokens = self.tokenizer(cf_flat) if cf_flat else torch.zeros(0, length, dtype=tokens.dtype)
        return Batch(
            images=images,
            tokens=tokens.to(device, non_blocking=True),
            cf_tokens=cf_tokens.view(len(cf_captions), self.counterfactuals, length).to(device, non_blocking=True),
            is_counting=torch.from_numpy(counting).to(device),
            counts=torch.from_numpy(counts).to(device),
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
