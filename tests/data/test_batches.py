"""countclip.data.batches: the paper's batch mix per step and rank, resumable streams, Batch tensors."""

import numpy as np
import pytest
import torch

from countclip.data.batches import BatchBuilder, StepRows, TrainingStream, batch_mix, count_only_negatives
from countclip.numbers import count_from_caption
from countclip.world.files import write_clean_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("batches") / "dataset")
    write_clean_dataset(out, seed=6, rows=400, image_size=64, counting_share=0.4, rows_per_shard=120)
    return out


def test_every_batch_holds_its_counting_rows_first_on_every_rank(dataset, tiny_model):
    preprocess = tiny_model[1]
    ranks = [list(TrainingStream(dataset, 20, 0.4, 1, preprocess, rank=r, world_size=2).steps(0, 12)) for r in (0, 1)]
    for step in range(12):
        a, b = ranks[0][step], ranks[1][step]
        for rows in (a, b):
            assert len(rows.captions) == 10 and (rows.counts[:4] >= 2).all() and (rows.counts[4:] == 0).all()
            assert all(count_from_caption(c) == n for c, n in zip(rows.captions[:4], rows.counts[:4]))
        assert not set(a.row_ids) & set(b.row_ids)  # a row is in one rank's share only
    together = list(TrainingStream(dataset, 20, 0.4, 1, preprocess, ranks=[0, 1], world_size=2).steps(0, 12))
    for step in range(12):
        assert sorted(together[step].row_ids) == sorted(np.r_[ranks[0][step].row_ids, ranks[1][step].row_ids])


def test_resume_small_datasets_repeat_reshuffled(dataset, tiny_model):
    stream = TrainingStream(dataset, 32, 0.25, 4, tiny_model[1])
    steps = list(stream.steps(0, 40))  # 40 x 8 counting rows: about two epochs of the counting pool
    tail = list(TrainingStream(dataset, 32, 0.25, 4, tiny_model[1]).steps(23, 40))
    assert all(np.array_equal(a.row_ids, b.row_ids) and np.array_equal(a.images, b.images) for a, b in zip(steps[23:], tail))
    counting = np.concatenate([s.row_ids[:8] for s in steps])
    n = stream.manifest["written"]["counting"]
    assert len(set(counting[:n])) == n  # the first epoch sees every counting row once
    assert not np.array_equal(counting[:n], counting[n : 2 * n])  # the second in another order


def test_plain_pool_for_pretraining(dataset, tiny_model):
    rows = next(TrainingStream(dataset, 16, None, 0, tiny_model[1]).steps(0, 1))
    assert len(rows.captions) == 16 and (rows.counts == 0).all()


def test_mixes_the_data_cannot_serve_are_refused(dataset, tiny_model):
    with pytest.raises(ValueError, match="holds 1.. counting rows but each batch needs 300"):
        TrainingStream(dataset, 600, 0.5, 0, tiny_model[1])
    with pytest.raises(ValueError, match="3 counting rows, which do not split over 2 ranks"):
        batch_mix(10, 0.3, 2)
    assert batch_mix(10, 0.0, 1) == [(("non_counting",), 10)]


def test_builder_draws_fresh_counterfactuals(tiny_model):
    _, preprocess, tokenizer = tiny_model
    rows = StepRows(np.zeros((2, 64, 64, 3), dtype=np.uint8), ["three red circles on a plain grey background",
                    "some blue stars"], np.array([3, 0]), np.array([10, 11]))
    builder = BatchBuilder(tokenizer, preprocess, counterfactuals=1, seed=0)
    seen = set()
    for step in range(40):
        batch = builder(rows, step)
        assert batch.cf_tokens.shape == (1, 1, batch.tokens.shape[1])
        assert batch.is_counting.tolist() == [True, False]
        seen.add(tuple(batch.cf_tokens[0, 0].tolist()))
        assert not np.array_equal(batch.cf_tokens[0, 0], batch.tokens[0])
    assert len(seen) == 8  # every other count is drawn, step after step
    again = BatchBuilder(tokenizer, preprocess, 1, seed=0)(rows, 5)
    assert torch.equal(again.cf_tokens, builder(rows, 5).cf_tokens)  # same (seed, step, row) -> same draw
    assert BatchBuilder(tokenizer, preprocess, counterfactuals=8)(rows, 0).cf_tokens.shape[:2] == (1, 8)
    assert torch.equal(batch.images, preprocess.normalize(rows.images))
    with pytest.raises(ValueError, match="counting rows must come first"):
        builder(StepRows(rows.images, rows.captions[::-1], np.array([0, 3]), rows.row_ids), 0)


def test_count_only_negatives():
    captions = ["two red circles", "three red circles", "four red circles", "two blue stars", "some dogs"]
    counts = np.array([count_from_caption(c) or 0 for c in captions])
    # The three "red circles" rows each have two count-only negatives; the stars none.
    assert count_only_negatives(captions, counts) == pytest.approx((2 + 2 + 2 + 0) / 4)
    assert count_only_negatives(["two dogs", "three cats"], np.array([2, 3])) == 0.0
