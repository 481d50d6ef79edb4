"""countclip.data.stages: every row's fate and the reconciliation of rows in = written + rejected."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from countclip.data.stages import StageWriter, final_status, tally_report


def _rows():
    return pa.table({
        "sample_id": ["a", "b", "c", "d", None], "kind": ["counting", "counting", "non_counting", "counting", "counting"],
        "caption_count": pa.array([3, 4, 0, 2, 0], pa.int16()), "detected_count": [3, 5, -1, 2, -1],
        "status": ["ok", "ok", "ok", "ok", "no_caption"], "n_rows": [1, 1, 1, 1, 7],
        "fetch_status": ["ok", "ok", "ok", "http_404", "skipped"],
        "verify_status": ["verified", "count_mismatch", "skipped", "skipped", "skipped"],
        "fetch_node": ["n1"] * 5, "verify_node": ["n2"] * 5, "image": [b"x", b"y", b"z", None, None],
    })


def test_first_failing_stage_decides_a_rows_fate():
    stage, reason = final_status(_rows())
    assert list(stage) == ["written", "verify", "written", "fetch", "captions"]
    assert list(reason) == ["ok", "count_mismatch", "ok", "http_404", "no_caption"]


def test_writer_stages_kept_rows_and_tallies_reconcile(tmp_path):
    tallies = StageWriter(str(tmp_path / "staging"))(_rows())
    staged = list((tmp_path / "staging").glob("*.parquet"))
    assert len(staged) == 1 and pq.read_table(staged[0]).column("sample_id").to_pylist() == ["a", "c"]
    report = tally_report(tallies, {"over_count_cap": 1})
    assert report["rows_in"] == 11  # the reject summary row stands for 7 source rows
    assert report["rejects"] == {"captions": {"no_caption": 7}, "fetch": {"http_404": 1}, "verify": {"count_mismatch": 1},
                                 "balance": {"over_count_cap": 1}}
    assert report["rows_rejected"] == 10 and report["per_count_verified"]["3"] == 1


def test_without_verification_every_fetched_counting_row_is_written():
    from countclip.data.stages import skip_verification

    rows = _rows().to_pydict()
    batch = {k: np.array(v, dtype=object) for k, v in rows.items()
             if k not in ("detected_count", "verify_status", "verify_node")}
    out = skip_verification(batch)
    assert set(out["verify_status"]) == {"unverified"} and (out["detected_count"] == -1).all()
    table = pa.table({**{k: v.tolist() for k, v in out.items() if k not in ("image",)}, "image": rows["image"]})
    stage, reason = final_status(table)
    assert list(stage) == ["written", "written", "written", "fetch", "captions"]  # b's miscount is kept
