import numpy as np
import pyarrow as pa
import pytest

from countclip.data.captions import CaptionConfig, CaptionFilter, check_columns, sample_fraction


def source(**columns):
    return pa.table(columns)


def test_counting_rows_kept_and_rejects_folded_with_counts():
    batch = source(
        URL=["u1", "u2", "u3", "u4", "u5", None, "u7"],
        TEXT=["three dogs on a sofa", "a dog", None, "   ", "a three-year-old boy", "two cats", "five red stars"],
    )
    out = CaptionFilter(CaptionConfig(non_counting_rate=0.0))(batch).to_pandas()
    kept = out[out.status == "ok"]
    assert kept.caption.tolist() == ["three dogs on a sofa", "five red stars"]
    assert kept.caption_count.tolist() == [3, 5] and kept.noun.tolist() == ["dogs", "stars"]
    assert (kept.kind == "counting").all() and (kept.n_rows == 1).all()
    rejected = out[out.status != "ok"].set_index("status").n_rows.to_dict()
    assert rejected == {"not_sampled": 2, "no_caption": 2, "missing_url": 1}
    assert out.n_rows.sum() == batch.num_rows  # every source row is accounted for


def test_non_counting_sample_is_reproducible_and_near_its_rate():
    ids = pa.array([f"id{i}" for i in range(20000)])
    frac = sample_fraction(ids, seed=3)
    assert np.array_equal(frac, sample_fraction(ids, seed=3))
    assert not np.array_equal(frac, sample_fraction(ids, seed=4))
    assert 0.09 < (frac < 0.1).mean() < 0.11
    batch = source(SAMPLE_ID=ids, URL=ids, TEXT=pa.array(["a red circle"] * 20000))
    cfg = CaptionConfig(id_column="SAMPLE_ID", non_counting_rate=0.1, seed=3)
    out = CaptionFilter(cfg)(batch).to_pandas()
    kept = out[out.status == "ok"]
    assert (kept.kind == "non_counting").all() and 1800 < len(kept) < 2200
    assert sorted(kept.sample_id) == sorted(np.asarray(ids.to_pylist())[frac < 0.1])


def test_binary_captions_with_bad_utf8_count_as_missing():
    batch = source(URL=["a", "b"], TEXT=pa.array([b"\xff\xfe three dogs", b"two cats"], pa.binary()))
    out = CaptionFilter(CaptionConfig(non_counting_rate=0.0))(batch).to_pandas()
    assert out[out.status == "ok"].caption.tolist() == ["two cats"]
    assert out[out.status == "no_caption"].n_rows.sum() == 1


def test_missing_column_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no column\(s\) \['TEXT'\].*captions.text_column"):
        CaptionFilter(CaptionConfig())(source(URL=["a"], caption=["two dogs"]))
    check_columns(CaptionConfig(text_column="caption"), ["URL", "caption"])


def test_blank_captions_of_any_whitespace_and_empty_urls_are_rejected_by_reason():
    batch = source(
        URL=["u1", "u2", "", "u4"],
        TEXT=["\u00a0\u2003 ", "", "two dogs", "two dogs\u3000"],
    )
    out = CaptionFilter(CaptionConfig(non_counting_rate=1.0))(batch).to_pandas()
    assert out[out.status == "ok"].url.tolist() == ["u4"]
    rejected = out[out.status != "ok"].set_index("status").n_rows.to_dict()
    assert rejected == {"no_caption": 2, "missing_url": 1}
    assert out.n_rows.sum() == batch.num_rows
