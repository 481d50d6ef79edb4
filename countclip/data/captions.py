"""Caption stage of the dataset build: which rows are counting candidates, which are sampled as
non-counting rows, and why every other row is dropped.

Works on a pyarrow Table (Ray Data's ``batch_format="pyarrow"``); the number-word parse is
``counted_rows`` below (RE2 prefilter, per-row Python only on the few rows holding a number word;
``parse_captions`` is its row-aligned table form). Rows leave with ``status`` "ok" or a reason.
Rejected rows are not carried on: each batch folds them into one summary row per reason, whose
``n_rows`` says how many input rows it stands for, so the final reconciliation (rows in = rows
written + rows rejected, by reason) needs no second pass over the source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from countclip.config import ConfigBase, require
from countclip.numbers import NUMBER_WORD_RE2, CaptionCount, parse_caption

# Columns every later stage can rely on, besides the source's own.
STAGE_COLUMNS = {
    "sample_id": pa.string(),
    "url": pa.string(),
    "caption": pa.string(),
    "caption_count": pa.int16(),  # 2..10 for counting rows, 0 for non-counting rows
    "noun": pa.string(),
    "kind": pa.string(),  # "counting" | "non_counting"
    "status": pa.string(),  # "ok" or why the row was dropped
    "n_rows": pa.int64(),  # source rows this row stands for (1, or a reject summary's count)
}


@dataclass
class CaptionConfig(ConfigBase):
    url_column: str = "URL"
    """Source column with the image URL (LAION-400M: URL)."""
    text_column: str = "TEXT"
    """Source column with the caption (LAION-400M: TEXT)."""
    id_column: str | None = None
    """Source column with a stable row id; null derives one from the URL (LAION: SAMPLE_ID). Ids must
    be unique: a row whose id is null or empty is rejected (missing_id), and of rows sharing an id
    only one is written (the rest: duplicate_id at the balance step)."""
    non_counting_rate: float = 0.05
    """Share of rows without a count that are kept as non-counting training rows."""
    seed: int = 0
    """Seeds the non-counting sample (a hash of the row id, so reruns pick the same rows)."""

    def __post_init__(self) -> None:
        require(0 <= self.non_counting_rate <= 1, f"captions.non_counting_rate must be in [0, 1], got {self.non_counting_rate}")
        require(bool(self.url_column and self.text_column), "captions.url_column and captions.text_column must be set")

    def required_columns(self) -> list[str]:
        return [c for c in (self.url_column, self.text_column, self.id_column) if c]


def check_columns(cfg: CaptionConfig, columns: list[str] | dict[str, pa.DataType]) -> None:
    """Fail fast, before any work, when the source lacks a configured column, or (given the
    columns' types) holds one of a type no row of it could be read as."""
    missing = [c for c in cfg.required_columns() if c not in columns]
    if missing:
        raise ValueError(
            f"the source has no column(s) {missing}; it has {list(columns)}. "
            "Set captions.url_column / captions.text_column / captions.id_column to the source's names."
        )
    if not isinstance(columns, dict):
        return
    roles = [("url_column", cfg.url_column, is_text_type), ("text_column", cfg.text_column, is_text_type)]
    roles += [("id_column", cfg.id_column, lambda t: is_text_type(t) or pa.types.is_integer(t))] if cfg.id_column else []
    for role, name, accepted in roles:
        if not accepted(columns[name]):
            raise ValueError(f"the source column {name!r} (captions.{role}) has type {columns[name]}; expected "
                             f"text (string or binary){' or integers' if role == 'id_column' else ''}")


def is_text_type(kind: pa.DataType) -> bool:
    """Whether a column of ``kind`` holds text the caption stage reads (string or binary, any width, or null)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind) or pa.types.is_string_view(kind)
            or pa.types.is_binary_view(kind))


def sample_fraction(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per id, fixed by (id, seed): a reproducible random sample.

    Computed on the ids' UTF-8 bytes with numpy, no Python object per row: a polynomial hash
    (sum of (byte + 1) * P**position, modulo 2**64) of each id, mixed with its length and the seed,
    then through the SplitMix64 finaliser; the top 53 bits make the fraction. Null ids read as "".
    """
    return (hash_ids(ids, seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def hash_ids(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """(N,) uint64 seeded hash of each id's UTF-8 bytes (see `sample_fraction`)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    ids = pc.fill_null(pc.cast(ids, pa.large_binary()), b"")  # int64 offsets
    n = len(ids)
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64)[ids.offset:ids.offset + n + 1]
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8) if n and offsets[-1] > offsets[0] else np.zeros(0, np.uint8)
    data = data[offsets[0]:offsets[-1]].astype(np.uint64) + np.uint64(1)
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    position = np.arange(len(data)) - np.repeat(starts, lengths)  # byte index within its id
    longest = int(lengths.max(initial=0))
    powers = np.cumprod(np.r_[np.uint64(1), np.full(max(longest - 1, 0), _HASH_PRIME)], dtype=np.uint64)  # P**k
    summed = np.concatenate([[np.uint64(0)], np.cumsum(data * powers[position], dtype=np.uint64)])
    with np.errstate(over="ignore"):  # modulo 2**64 is the point
        z = summed[starts + lengths] - summed[starts]
        z ^= (lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
              + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + np.uint64(0x2545F4914F6CDD1D))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


_HASH_PRIME = np.uint64(0x100000001B3)  # FNV's 64-bit prime: odd, so every power is odd too


def parse_captions(captions) -> pa.Table:
    """Vectorised `parse_caption`: a pyarrow Array/ChunkedArray, pandas Series or list of str/None
    in, a row-aligned table out with columns count (int8), noun, noun_phrase (string),
    span_start, span_end (int32, the first counted occurrence); null where there is no count.
    Row i of the table is row i of the input (a Series' index is not used).

    An RE2 kernel finds the few rows holding any number word; only those go through
    `parse_caption`, the very function the scalar form uses, so the two cannot disagree.
    """
    strings = _as_string_array(captions)
    chunks = strings.chunks if isinstance(strings, pa.ChunkedArray) else [strings]
    return pa.Table.from_batches([_parse_chunk(chunk) for chunk in chunks], schema=_SCHEMA)


_SCHEMA = pa.schema([
    ("count", pa.int8()), ("noun", pa.string()), ("noun_phrase", pa.string()),
    ("span_start", pa.int32()), ("span_end", pa.int32()),
])


def counted_rows(strings: pa.Array) -> tuple[np.ndarray, list[CaptionCount]]:
    """(the indices of the rows of ``strings`` that state a count, ascending; their parses): the RE2
    kernel finds the few rows holding any number word, only those reach `parse_caption`."""
    has_number = pc.fill_null(pc.match_substring_regex(strings, NUMBER_WORD_RE2, ignore_case=True), False)
    parsed = [parse_caption(caption) for caption in pc.filter(strings, has_number).to_pylist()]
    candidates = np.flatnonzero(np.asarray(has_number))
    return candidates[[i for i, p in enumerate(parsed) if p]], [p for p in parsed if p]


def _parse_index(n: int, rows: np.ndarray, found: list) -> np.ndarray:
    """(n,) int32: row i's position in ``found``; every other row points at len(found), a trailing null."""
    index = np.full(n, len(found), dtype=np.int32)
    index[rows] = np.arange(len(found), dtype=np.int32)
    return index


def _parse_chunk(strings: pa.Array) -> pa.RecordBatch:
    rows, found = counted_rows(strings)
    index = _parse_index(len(strings), rows, found)
    values = {
        "count": [p.count for p in found], "noun": [p.noun for p in found],
        "noun_phrase": [p.noun_phrase for p in found],
        "span_start": [p.spans[0][0] for p in found], "span_end": [p.spans[0][1] for p in found],
    }
    index = pa.array(index)
    columns = [pa.array(values[field.name] + [None], field.type).take(index) for field in _SCHEMA]
    return pa.RecordBatch.from_arrays(columns, schema=_SCHEMA)


def _as_string_array(captions) -> pa.Array | pa.ChunkedArray:
    """Any accepted input as Arrow strings; nulls stay null, invalid UTF-8 becomes null."""
    if not isinstance(captions, (pa.Array, pa.ChunkedArray)):
        try:  # lists and pandas Series; from_pandas turns NaN and pandas NA into nulls
            captions = pa.array(captions, type=pa.string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            captions = pa.array([_item_as_str(item) for item in captions], type=pa.string())
    kind = captions.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return captions
    if pa.types.is_null(kind) or pa.types.is_string_view(kind):
        return captions.cast(pa.string())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        try:
            return captions.cast(pa.string())
        except pa.ArrowInvalid:  # some rows are not UTF-8: a per-row path, for corrupt input only
            items = captions.to_pylist()
            return pa.array([_item_as_str(item) for item in items], type=pa.string())
    raise TypeError(f"captions must hold strings, got an Arrow array of {kind}")


def _item_as_str(item) -> str | None:
    if isinstance(item, str) or item is None:
        return item
    if isinstance(item, (bytes, bytearray)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if (isinstance(item, float) and math.isnan(item)) or type(item).__name__ == "NAType":
        return None
    raise TypeError(f"captions must be str or None, got {type(item).__name__}: {item!r:.80}")



_STATUSES = pa.array(["ok", "no_caption", "not_sampled", "missing_url", "undecodable_caption", "undecodable_url",
                      "missing_id"])


class CaptionFilter:
    """pyarrow Table -> counting candidates, sampled non-counting rows, and reject summaries."""

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        check_columns(self.cfg, batch.column_names)
        # A row whose caption or URL is not UTF-8 is counted and dropped, never the batch's end.
        text, bad_text = decoded_text(batch.column(self.cfg.text_column))
        url, bad_url = decoded_text(batch.column(self.cfg.url_column))
        id_column = self._id_column(batch)

        def ids(where: np.ndarray) -> pa.Array:  # the stable ids of these rows
            return pc.binary_join_element_wise("u:", url.take(where), "") if id_column is None else id_column.take(where)

        rows, found = counted_rows(text)  # only these rows' parses are kept, not a row-aligned table
        count = np.zeros(len(batch), dtype=np.int16)
        count[rows] = [p.count for p in found]
        counting = count >= 2
        # Some text: not null, not empty, not only (Unicode) spaces; counted on offsets, no copies.
        has_text = np.asarray(pc.fill_null(pc.and_(pc.greater(pc.binary_length(text), 0),
                                                   pc.invert(pc.utf8_is_space(text))), False))
        missing_url = np.asarray(pc.fill_null(pc.equal(pc.binary_length(url), 0), True))
        candidates = has_text & ~counting  # rows without a count: kept at non_counting_rate
        sampled = np.zeros(len(batch), dtype=bool)
        if self.cfg.non_counting_rate >= 1.0:
            sampled = candidates
        elif self.cfg.non_counting_rate > 0.0:  # hash only the candidates' ids
            where = np.flatnonzero(candidates)
            sampled[where] = sample_fraction(ids(where), self.cfg.seed) < self.cfg.non_counting_rate

        status = np.zeros(len(batch), dtype=np.int8)  # codes into _STATUSES; 0 is ok
        status[candidates & ~sampled] = 2  # not_sampled
        status[missing_url & (status == 0) & has_text] = 3  # missing_url
        status[(status == 3) & bad_url] = 5  # undecodable_url
        status[~has_text] = 1  # no_caption
        status[bad_text] = 4  # undecodable_caption
        if id_column is not None:  # an id is what makes a row one row: none, and it cannot be kept
            no_id = np.asarray(pc.fill_null(pc.equal(pc.binary_length(id_column), 0), True))
            status[(status == 0) & no_id] = 6  # missing_id
        # Only the kept rows are gathered; the rejected ones are only counted (by status and kind).
        ok = np.flatnonzero(status == 0)
        parse_of = _parse_index(len(batch), rows, found)[ok]
        kept = pa.table({
            "sample_id": ids(ok),
            "url": url.take(ok),
            "caption": pc.cast(text.take(ok), pa.string()),
            "caption_count": pa.array(count[ok]),
            "noun": pa.array([p.noun for p in found] + [None], pa.string()).take(pa.array(parse_of)),
            "kind": pc.if_else(pa.array(counting[ok]), "counting", "non_counting"),
            "status": pa.repeat("ok", len(ok)),
            "n_rows": pa.array(np.ones(len(ok), dtype=np.int64)),
        }, schema=_ROW_SCHEMA)
        return pa.concat_tables([kept, _reject_summary(status, counting)])

    def _id_column(self, batch: pa.Table) -> pa.Array | None:
        """The id column as strings (null where missing or not UTF-8); None without one (ids are then
        "u:" + URL, made only for the rows that need one)."""
        if not self.cfg.id_column:
            return None
        column = batch.column(self.cfg.id_column)
        if pa.types.is_integer(column.type):
            return pc.cast(column, pa.string()).combine_chunks()
        return decoded_text(column)[0]


_ROW_SCHEMA = pa.schema(list(STAGE_COLUMNS.items()))


def _reject_summary(status: np.ndarray, counting: np.ndarray) -> pa.Table:
    """One row per (status, kind) of the rejected rows, whose n_rows says how many it stands for."""
    code = status.astype(np.int64) * 2 + counting  # (status, kind) in one small integer
    n_rows = np.bincount(code[status != 0], minlength=2 * len(_STATUSES))
    groups = np.flatnonzero(n_rows)
    n = len(groups)
    return pa.table({
        "sample_id": pa.nulls(n, pa.string()),
        "url": pa.nulls(n, pa.string()),
        "caption": pa.nulls(n, pa.string()),
        "caption_count": pa.array(np.zeros(n, dtype=np.int16)),
        "noun": pa.nulls(n, pa.string()),
        "kind": pa.array(np.where(groups % 2 == 1, "counting", "non_counting").tolist(), pa.string()),
        "status": _STATUSES.take(pa.array(groups // 2)),
        "n_rows": pa.array(n_rows[groups], pa.int64()),
    }, schema=_ROW_SCHEMA)


def decoded_text(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(a text column as valid UTF-8 strings, (N,) bool of the rows that were not valid UTF-8 and
    are null in it). String columns are validated too: a parquet writer may store invalid UTF-8."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind, bad = column.type, np.zeros(len(column), dtype=bool)
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.string()), bad
    if not is_text_type(kind):
        raise ValueError(f"a text column has type {kind}; expected text (string or binary)")
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        column = column.cast(pa.large_binary())
    try:
        column.validate(full=True)  # binary columns: always valid, checked by the cast below
        return column.cast(pa.string()), bad
    except pa.ArrowInvalid:  # some rows are not UTF-8: a per-row pass, for corrupt input only
        values = []
        for i, item in enumerate(column.cast(pa.large_binary()).to_pylist()):
            try:
                values.append(item.decode("utf-8") if item is not None else None)
            except UnicodeDecodeError:
                values.append(None)
                bad[i] = True
        return pa.array(values, pa.string()), bad
