import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from countclip import storage
from countclip.data.shards import ShardConfig, read_manifest, select_rows, shard_uris, write_dataset


def staged_rows(per_count: dict[int, int], non_counting: int) -> pa.Table:
    rows = []
    for count, n in per_count.items():
        rows += [{"sample_id": f"c{count}-{i:04d}", "kind": "counting", "caption_count": count} for i in range(n)]
    rows += [{"sample_id": f"n-{i:04d}", "kind": "non_counting", "caption_count": 0} for i in range(non_counting)]
    table = pa.Table.from_pylist(rows)
    n = table.num_rows
    return table.append_column("url", pa.array([f"u{i}" for i in range(n)])).append_column(
        "caption", pa.array(["x"] * n)).append_column("noun", pa.array(["dogs"] * n)).append_column(
        "detected_count", pa.array(table.column("caption_count").to_pylist())).append_column(
        "image", pa.array([bytes([i % 256]) * 10 for i in range(n)], pa.binary())).append_column(
        "image_width", pa.array([8] * n)).append_column("image_height", pa.array([8] * n))


def test_caps_balance_and_ratio():
    rows = staged_rows({2: 40, 3: 10, 5: 25}, non_counting=300)
    keep, rejects = select_rows(rows, ShardConfig(balance_to_min=2.0, non_counting_ratio=3.0))
    kept = rows.filter(pa.array(keep)).to_pandas()
    per = kept[kept.kind == "counting"].caption_count.value_counts().to_dict()
    assert per == {2: 20, 3: 10, 5: 20}
    assert (kept.kind == "non_counting").sum() == 150
    assert rejects == {"over_count_cap": 25, "over_non_counting_ratio": 150}
    keep_cap, _ = select_rows(rows, ShardConfig(max_per_count=12, non_counting_ratio=0))
    assert rows.filter(pa.array(keep_cap)).to_pandas().caption_count.value_counts().to_dict() == {2: 12, 3: 10, 5: 12}
    again, _ = select_rows(rows, ShardConfig(balance_to_min=2.0, non_counting_ratio=3.0))
    assert np.array_equal(keep, again)  # the same rows every run
    other, _ = select_rows(rows, ShardConfig(balance_to_min=2.0, non_counting_ratio=3.0, seed=1))
    assert not np.array_equal(keep, other)


def test_written_dataset_is_complete_deterministic_and_atomic(tmp_path):
    rows = staged_rows({2: 5, 4: 7}, non_counting=9)
    cfg = ShardConfig(rows_per_shard=8, row_group_rows=3)
    manifest = write_dataset(str(tmp_path / "ds"), rows, {"rows_in": 30}, cfg, summary=lambda m: "table")
    # One kind per shard, in row groups of 3 (the unit a training-ingest task reads).
    assert [(s["path"], s["kind"], s["rows"], s["row_groups"]) for s in manifest["shards"]] == [
        ("shards/counting-00000.parquet", "counting", 8, [3, 3, 2]),
        ("shards/counting-00001.parquet", "counting", 4, [3, 1]),
        ("shards/non_counting-00000.parquet", "non_counting", 8, [3, 3, 2]),
        ("shards/non_counting-00001.parquet", "non_counting", 1, [1])]
    for shard in manifest["shards"]:
        meta = pq.ParquetFile(tmp_path / "ds" / shard["path"]).metadata
        assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == shard["row_groups"]
    assert manifest["per_count_written"]["4"] == 7 and manifest["written"] == {"counting": 12, "non_counting": 9}
    assert set(manifest["lambda_weights"]) == {"constant", "norm", "modal", "log"}
    on_disk = read_manifest(str(tmp_path / "ds"))
    assert on_disk == json.loads(json.dumps(manifest))
    table = pq.read_table(shard_uris(str(tmp_path / "ds"), on_disk))
    assert sorted(table.column("sample_id").to_pylist()) == sorted(rows.column("sample_id").to_pylist())
    assert (tmp_path / "ds" / "summary.txt").read_text() == "table\n"
    second = write_dataset(str(tmp_path / "ds2"), rows.take(np.random.default_rng(0).permutation(21)),
                           {"rows_in": 30}, cfg)
    assert [s["sha256"] for s in second["shards"]] == [s["sha256"] for s in manifest["shards"]]

    def boom(_):
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash"):
        write_dataset(str(tmp_path / "ds"), staged_rows({3: 2}, 0), {"rows_in": 2}, cfg, summary=boom)
    assert read_manifest(str(tmp_path / "ds"))["rows_written"] == 21  # the old dataset is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ds2"]  # no half-written folder left


def test_incomplete_dataset_is_refused(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete countclip dataset"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a countclip-shards/2 manifest"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"format": "countclip-shards/1"}')
    with pytest.raises(ValueError, match="older countclip .* rebuild it"):
        read_manifest(str(tmp_path))


def test_s3_output_writes_manifest_last_and_drops_stale_shards(s3):
    prefix = f"s3://{s3}/datasets/cw"
    cfg = ShardConfig(rows_per_shard=4)
    write_dataset(prefix, staged_rows({2: 6, 3: 6}, 0), {"rows_in": 12}, cfg)
    assert len(read_manifest(prefix)["shards"]) == 3
    manifest = write_dataset(prefix, staged_rows({2: 3}, 0), {"rows_in": 3}, cfg)
    assert [s["path"] for s in manifest["shards"]] == ["shards/counting-00000.parquet"]
    assert storage.list_objects(f"{prefix}/shards") == [f"{prefix}/shards/counting-00000.parquet"]
    assert read_manifest(prefix)["rows_written"] == 3
