"""countclip.data.captions: the caption stage, the vectorised parse (agreeing with the scalar one) and the id hash."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from countclip.data import captions as captions_module
from countclip.data.captions import (
    CaptionConfig,
    CaptionFilter,
    check_columns,
    hash_ids,
    parse_captions,
    sample_fraction,
)
from countclip.numbers import parse_caption

from ..conftest import LAION_CAPTIONS
from ..test_numbers import TRICKY, _countbench, _mixtures, laion_labels


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


def test_binary_captions_with_bad_utf8_are_counted_by_their_own_reason():
    batch = source(URL=["a", "b"], TEXT=pa.array([b"\xff\xfe three dogs", b"two cats"], pa.binary()))
    out = CaptionFilter(CaptionConfig(non_counting_rate=0.0))(batch).to_pandas()
    assert out[out.status == "ok"].caption.tolist() == ["two cats"]
    assert out[out.status == "undecodable_caption"].n_rows.sum() == 1


def _invalid_utf8_strings(items: list[bytes]) -> pa.Array:
    """A string array holding invalid UTF-8, as a parquet writer that does not validate may store it."""
    binary = pa.array(items, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(binary), binary.buffers())


def test_undecodable_urls_captions_and_ids_are_counted_per_row_not_fatal():
    batch = source(
        SAMPLE_ID=pa.array([b"a", b"b", b"\xff", None, b"", b"f"], pa.binary()),
        URL=pa.array([b"u1", b"\xc3(", b"u3", b"u4", b"u5", b"u6"], pa.binary()),
        TEXT=_invalid_utf8_strings([b"two cats", b"three dogs", b"four hens", b"five owls", b"six pigs", b"\xe2\x28 x"]),
    )
    out = CaptionFilter(CaptionConfig(id_column="SAMPLE_ID", non_counting_rate=0.0))(batch).to_pandas()
    assert out[out.status == "ok"].sample_id.tolist() == ["a"]
    rejected = out[out.status != "ok"].set_index("status").n_rows.to_dict()
    assert rejected == {"undecodable_url": 1, "missing_id": 3, "undecodable_caption": 1}
    assert out.n_rows.sum() == batch.num_rows


def test_column_types_are_checked_before_any_row_is_read():
    cfg = CaptionConfig(id_column="SAMPLE_ID")
    check_columns(cfg, {"URL": pa.binary(), "TEXT": pa.large_string(), "SAMPLE_ID": pa.int64()})
    with pytest.raises(ValueError, match=r"'TEXT' \(captions.text_column\) has type int64; expected text"):
        check_columns(cfg, {"URL": pa.string(), "TEXT": pa.int64(), "SAMPLE_ID": pa.string()})
    with pytest.raises(ValueError, match=r"'SAMPLE_ID' \(captions.id_column\) has type double"):
        check_columns(cfg, {"URL": pa.string(), "TEXT": pa.string(), "SAMPLE_ID": pa.float64()})


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


def _reference_hash(text: str, seed: int) -> int:
    """hash_ids written out for one id, in Python integers."""
    mask, prime = (1 << 64) - 1, 0x100000001B3
    data = text.encode()
    z = sum((byte + 1) * pow(prime, k, 1 << 64) for k, byte in enumerate(data)) & mask
    z ^= (len(data) * 0x9E3779B97F4A7C15 + seed * 0xD1B54A32D192ED03 + 0x2545F4914F6CDD1D) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_id_hash_is_the_written_out_hash_on_any_layout():
    ids = ["", "a", "u:https://example.com/" + "x" * 2000, "héllo wörld", "id7", "日本語のキャプション"]
    array = pa.array(["pad", *ids])
    for seed in (0, 5):
        expected = np.array([_reference_hash(text, seed) for text in ids], dtype=np.uint64)
        assert np.array_equal(hash_ids(array.slice(1), seed), expected)  # a slice with an offset
        chunked = pa.chunked_array([pa.array(ids[:2]), pa.array(ids[2:])])
        assert np.array_equal(hash_ids(chunked, seed), expected)
    assert np.array_equal(hash_ids(pa.array([None, "a"]), 1), hash_ids(pa.array(["", "a"]), 1))  # null reads as ""
    assert len(hash_ids(pa.array([], pa.string()), 0)) == 0


def test_sample_fraction_is_uniform_and_spreads_similar_ids():
    frac = sample_fraction(pa.array([f"u:https://x/{i}.jpg" for i in range(50000)]), seed=0)
    histogram, _ = np.histogram(frac, bins=10, range=(0, 1))
    assert histogram.min() > 4500 and histogram.max() < 5500  # 5000 expected per bin
    assert len(np.unique(frac)) == len(frac)


def _scalar_table(captions) -> list[tuple]:
    rows = []
    for caption in captions:
        p = parse_caption(caption)
        rows.append((p.count, p.noun, p.noun_phrase, *p.spans[0]) if p else (None,) * 5)
    return rows


def _rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(table.column(name).to_pylist() for name in table.column_names)))


def test_vectorised_agrees_with_scalar_on_tricky_and_random_captions():
    captions = TRICKY + _mixtures(3000) + [None, ""]
    table = parse_captions(captions)
    assert table.schema.types == [pa.int8(), pa.string(), pa.string(), pa.int32(), pa.int32()]
    assert _rows(table) == _scalar_table(captions)


def _counts(captions) -> list:
    return parse_captions(captions).column("count").to_pylist()


def test_vectorised_parses_only_rows_with_a_number_word(monkeypatch):
    calls = []
    monkeypatch.setattr(captions_module, "parse_caption", lambda c: calls.append(c) or parse_caption(c))
    captions = ["a dog on a lawn"] * 990 + ["two dogs", "often", "ten-speed"] + [None] * 7
    assert _counts(captions) == [None] * 990 + [2] + [None] * 9
    assert calls == ["two dogs", "ten-speed"]  # "often" never matches the RE2 prefilter


def test_vectorised_keeps_rows_aligned_across_chunks():
    chunked = pa.chunked_array([["two dogs", None], [], ["no number", "Three Cats"]], pa.string())
    table = parse_captions(chunked)
    assert table.column("count").to_pylist() == [2, None, None, 3]
    assert table.column("span_start").to_pylist() == [0, None, None, 0]


def test_vectorised_nulls_become_null_counts():
    captions = ["two dogs", None, float("nan"), pd.NA, "", b"three cats", b"\xfftwo dogs"]
    expected = [2, None, None, None, None, 3, None]  # invalid UTF-8 is no caption, not a crash
    assert _counts(captions) == expected
    series = pd.Series(["two dogs", None, np.nan, "five cats"], index=[10, 3, 7, 1])
    assert _counts(series) == [2, None, None, 5]


def test_vectorised_binary_input_with_invalid_utf8():
    binary = pa.array([b"two dogs", b"\xff\xfe", None, b"ten eggs"], pa.binary())
    assert _counts(binary) == [2, None, None, 10]
    assert _counts(pa.array([b"six cats"], pa.large_binary())) == [6]


def test_vectorised_other_inputs():
    assert parse_captions([]).num_rows == 0
    assert _counts(pa.array(["two dogs"], pa.large_string())) == [2]
    assert _counts(pa.nulls(2)) == [None, None]
    with pytest.raises(TypeError, match="int"):
        parse_captions(["two dogs", 3])
    with pytest.raises(TypeError, match="int64"):
        parse_captions(pa.array([1, 2]))


def test_countbench_vectorised_agrees_with_scalar():
    texts = [e["text"] for e in _countbench()]
    assert _rows(parse_captions(texts)) == _scalar_table(texts)




def _laion_captions() -> list[str]:
    if not LAION_CAPTIONS.is_file():
        pytest.skip(f"the shared LAION captions are not at {LAION_CAPTIONS}")
    return [json.loads(line)["caption"] for line in LAION_CAPTIONS.read_text(encoding="utf-8").splitlines()]


def test_vectorised_agrees_with_scalar_on_real_captions():
    labelled = [r["caption"] for r in laion_labels()]
    assert _rows(parse_captions(labelled)) == _scalar_table(labelled)
    shared = _laion_captions()  # all 11,057, one chunk of them sliced with an offset
    table = parse_captions(pa.array(["pad", *shared]).slice(1))
    assert _rows(table) == _scalar_table(shared)
    assert 700 < table.column("count").null_count and table.num_rows - table.column("count").null_count > 700


def test_bad_captions_in_the_stage_are_rows_with_a_reason_never_a_crash():
    huge = "three dogs on a sofa " * 4900  # ~100 KB
    batch = source(URL=[f"u{i}" for i in range(6)],
                   TEXT=pa.array([None, b"", b"\xff\xfe two dogs", huge.encode(), b"a dog", b"two cats"],
                                 pa.binary()))
    out = CaptionFilter(CaptionConfig(non_counting_rate=0.0))(batch).to_pandas()
    kept = out[out.status == "ok"]
    assert kept.caption_count.tolist() == [3, 2] and kept.caption.str.len().tolist() == [len(huge), 8]
    assert out[out.status != "ok"].set_index("status").n_rows.to_dict() == {"no_caption": 2, "undecodable_caption": 1,
                                                                        "not_sampled": 1}
    with pytest.raises(TypeError, match="int"):
        parse_captions(["two dogs", 7])  # not text at all: a clear error
