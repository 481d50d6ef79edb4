import numpy as np
import pytest

from countclip.data.loader import BatchBuilder, MixedBatchSampler, TrainingSet, count_only_negatives
from countclip.numbers import count_from_caption


def counts_fixture(n=100, counting=30):
    counts = np.zeros(n, dtype=int)
    counts[:counting] = np.arange(counting) % 9 + 2
    return np.random.default_rng(0).permutation(counts)


def test_each_batch_keeps_the_counting_ratio_and_order():
    counts = counts_fixture()
    sampler = MixedBatchSampler(counts, batch_size=16, counting_fraction=0.25, seed=1)
    for step in range(20):
        rows = sampler.indices(step)
        assert len(rows) == 16
        assert (counts[rows[:4]] >= 2).all() and (counts[rows[4:]] < 2).all()


def test_batches_depend_only_on_seed_and_step():
    counts = counts_fixture()
    a = MixedBatchSampler(counts, 16, 0.25, seed=1)
    b = MixedBatchSampler(counts, 16, 0.25, seed=1)
    assert all(np.array_equal(a.indices(s), b.indices(s)) for s in (0, 7, 123))
    assert not np.array_equal(a.indices(3), MixedBatchSampler(counts, 16, 0.25, seed=2).indices(3))


def test_one_epoch_visits_each_counting_row_once():
    counts = counts_fixture(counting=32)
    sampler = MixedBatchSampler(counts, 16, 0.25, seed=3)
    seen = np.concatenate([sampler.indices(s)[:4] for s in range(8)])
    assert sorted(seen) == sorted(np.flatnonzero(counts >= 2))


def test_ranks_split_the_global_batch():
    counts = counts_fixture()
    sampler = MixedBatchSampler(counts, 16, 0.25, seed=4)
    whole = sampler.indices(5)
    parts = [sampler.indices(5, rank=r, world_size=2) for r in range(2)]
    assert sorted(np.concatenate(parts)) == sorted(whole)
    assert all((counts[p[:2]] >= 2).all() and (counts[p[2:]] < 2).all() for p in parts)
    with pytest.raises(ValueError, match="do not split over 3 ranks"):
        sampler.indices(0, rank=0, world_size=3)


def test_missing_counting_rows_are_a_clear_error():
    with pytest.raises(ValueError, match="needs 4 counting rows but the dataset holds none"):
        MixedBatchSampler(np.zeros(10, dtype=int), 16, 0.25, seed=0)


def test_builder_draws_fresh_counterfactuals(tiny_model):
    _, _, tokenizer = tiny_model
    captions = ["three red circles on a plain grey background", "some blue stars"]
    images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    builder = BatchBuilder(tokenizer, counterfactuals=1, seed=0)
    seen = set()
    for step in range(40):
        batch = builder(images, captions, np.array([3, 0]), np.array([10, 11]), step)
        assert batch.cf_tokens.shape == (1, 1, batch.tokens.shape[1])
        assert batch.is_counting.tolist() == [True, False]
        seen.add(tuple(batch.cf_tokens[0, 0].tolist()))
        assert not np.array_equal(batch.cf_tokens[0, 0], batch.tokens[0])
    assert len(seen) == 8  # every other count is drawn, step after step
    again = builder(images, captions, np.array([3, 0]), np.array([10, 11]), 5)
    first = BatchBuilder(tokenizer, 1, seed=0)(images, captions, np.array([3, 0]), np.array([10, 11]), 5)
    assert np.array_equal(again.cf_tokens, first.cf_tokens)  # same (seed, step, row) -> same draw
    plus = BatchBuilder(tokenizer, counterfactuals=8)(images, captions, np.array([3, 0]), np.array([10, 11]), 0)
    assert plus.cf_tokens.shape[:2] == (1, 8)
    assert float(batch.images.abs().mean()) > 0  # normalised, not raw zeros


def test_builder_and_set_reject_bad_shapes(tiny_model):
    _, _, tokenizer = tiny_model
    with pytest.raises(ValueError, match="differ in length"):
        TrainingSet(np.zeros((2, 8, 8, 3), np.uint8), ["a"], np.zeros(2))
    with pytest.raises(ValueError, match="counting rows must come first"):
        BatchBuilder(tokenizer)(np.zeros((2, 8, 8, 3), np.uint8), ["x", "two dogs"], np.array([0, 2]),
                                np.array([0, 1]), 0)


def test_count_only_negatives():
    captions = ["two red circles", "three red circles", "four red circles", "two blue stars", "some dogs"]
    counts = np.array([count_from_caption(c) or 0 for c in captions])
    # The three "red circles" rows each have two count-only negatives; the stars none.
    assert count_only_negatives(captions, counts) == pytest.approx((2 + 2 + 2 + 0) / 4)
    assert count_only_negatives(["two dogs", "three cats"], np.array([2, 3])) == 0.0
