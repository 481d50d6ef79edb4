"""countclip.data.ingest: the per-rank plan over the manifest, the decode stage, local and Ray execution."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from countclip.config import ConfigError
from countclip.data.ingest import (
    IngestConfig,
    RankPlan,
    decode_windows,
    local_blocks,
    pool_chunks,
    ray_streams,
    read_window,
    rebatch,
)
from countclip.data.shards import read_manifest
from countclip.world.files import write_clean_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ingest") / "dataset")
    write_clean_dataset(out, seed=5, rows=700, image_size=48, counting_share=0.4, rows_per_shard=150)
    return out


def _rows_of(items):
    return np.concatenate([read_window(item).column("row_id").to_numpy() for item in items])


def test_chunks_are_the_row_groups_of_a_kind_and_split_for_many_ranks(dataset):
    manifest = read_manifest(dataset)
    counting = pool_chunks(dataset, manifest, ["counting"])
    assert sum(c.rows for c in counting) == manifest["written"]["counting"]
    assert all(c.rows <= 256 for c in counting) and all(s["row_groups"] for s in manifest["shards"])
    ids = np.concatenate([read_window({"chunks": [[c.uri, c.row_group, c.start, c.stop, c.first_row_id]],
                                       "seed": [0], "skip": 0, "take": c.rows}).column("row_id").to_numpy()
                          for c in counting])
    assert len(set(ids)) == len(ids) == manifest["written"]["counting"]
    split = pool_chunks(dataset, manifest, ["counting"], min_chunks=7)
    assert len(split) >= 7 and sum(c.rows for c in split) == manifest["written"]["counting"]


def test_each_epoch_deals_every_chunk_to_one_rank_and_reshuffles(dataset):
    chunks = pool_chunks(dataset, read_manifest(dataset), ["non_counting"], min_chunks=3)
    plans = [RankPlan(chunks, 1, seed=2, rank=r, world_size=3, window_chunks=2) for r in range(3)]
    for epoch in (0, 1):
        dealt = [c for p in plans for w in p.epoch_windows(epoch) for c in w["chunks"]]
        assert {tuple(c) for c in dealt} == {(c.uri, c.row_group, c.start, c.stop, c.first_row_id) for c in chunks}
        assert len(dealt) == len(chunks) + (-len(chunks)) % 3  # padded so every rank gets as many
    assert plans[0].epoch_windows(0) != plans[0].epoch_windows(1)


def test_a_stream_started_late_is_the_tail_of_the_whole_stream(dataset):
    chunks = pool_chunks(dataset, read_manifest(dataset), ["counting"])
    plan = RankPlan(chunks, 0, seed=1, rank=0, world_size=1, window_chunks=2)
    whole = _rows_of(plan.items(0, 900))  # more than the pool: the stream runs into epoch 2
    assert len(whole) == 900
    assert sorted(whole[:len(set(whole[:280]))]) == sorted(set(whole[:280]))  # no row twice within an epoch
    for start in (0, 1, 279, 280, 613):
        assert np.array_equal(_rows_of(plan.items(start, 900 - start)), whole[start:])


def test_decode_stage_gives_uint8_rows_at_the_model_size(dataset, tiny_model):
    preprocess = tiny_model[1]
    chunks = pool_chunks(dataset, read_manifest(dataset), ["counting"])
    item = RankPlan(chunks, 0, 0, 0, 1, 1).items(0, 100)[0]
    import json

    blocks = list(decode_windows({"window": np.array([json.dumps(item)], dtype=object)}, preprocess))
    block = blocks[0]
    assert block["image"].dtype == np.uint8 and block["image"].shape[1:] == (64, 64, 3)  # 48 px upscaled to 64
    assert (block["count"] >= 2).all() and len(block["caption"]) == len(block["row_id"]) == len(block["image"])
    assert sum(len(b["row_id"]) for b in blocks) == item["take"]


def test_an_undecodable_shard_image_is_an_error_naming_the_shard(tmp_path, tiny_model):
    out = tmp_path / "d"
    write_clean_dataset(str(out), seed=1, rows=40, image_size=32, counting_share=0.5)
    shard = next(out.glob("shards/counting-*.parquet"))
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    images[3] = b"\x89PNG\r\n\x1a\n broken"
    buffer = io.BytesIO()
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary())),
                   buffer, row_group_size=256)
    shard.write_bytes(buffer.getvalue())
    chunks = pool_chunks(str(out), read_manifest(str(out)), ["counting"])
    items = RankPlan(chunks, 0, 0, 0, 1, 1).items(0, 40)
    with pytest.raises(ValueError, match=rf"shard .*{shard.name} holds an undecodable image"):
        list(local_blocks(items, tiny_model[1], threads=1))


def test_rebatch_cuts_exact_batches_across_blocks():
    blocks = [{"row_id": np.arange(a, b)} for a, b in [(0, 3), (3, 4), (4, 11)]]
    assert [b["row_id"].tolist() for b in rebatch(iter(blocks), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


def test_ray_tasks_give_the_rows_the_local_threads_give(dataset, tiny_model, ray_local):
    """Both pools of a rank through one Ray Data execution, each stream handed its own rows in order."""
    manifest = read_manifest(dataset)
    plans = [RankPlan(pool_chunks(dataset, manifest, [kind], min_chunks=2), pool, seed=3, rank=1, world_size=2,
                      window_chunks=2) for pool, kind in enumerate(["counting", "non_counting"])]
    shares = [12, 30]
    items = [plan.items(37, 10 * share) for plan, share in zip(plans, shares)]
    assert all(len(i) > 1 for i in items)  # several windows per stream: the merged order interleaves them
    remote = ray_streams(items, shares, tiny_model[1], IngestConfig(decode_cpus=0.5))
    for stream_items, share, stream in zip(items, shares, remote):
        local = list(rebatch(local_blocks(stream_items, tiny_model[1], threads=2), share))
        got = list(stream)
        assert len(local) == len(got) == 10
        for a, b in zip(local, got):
            assert np.array_equal(a["row_id"], b["row_id"]) and np.array_equal(a["image"], b["image"])
            assert a["caption"].tolist() == b["caption"].tolist()


@pytest.mark.parametrize("field, value", [("window_chunks", 0), ("prefetch_batches", 0), ("decode_cpus", 0),
                                          ("train_crop_scale", [0.5]), ("train_crop_scale", [0.9, 0.5])])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=f"data.{field}"):
        IngestConfig.from_dict({field: value})
