"""The dataset build on Ray Data: source parquet -> captions -> fetch -> verify -> staged rows,
then balance -> shards + manifest.

    rows = read_parquet(source)                      # local paths or s3://, projected columns
      .map_batches(CaptionFilter)                    # vectorised number-word parse; rejects folded
      .map_batches(FetchStage, actor pool)           # many fetches in flight per actor (I/O bound)
      .map_batches(VerifyStage, actor pool, GPUs)    # Ultralytics YOLO, loaded once per actor
      .map_batches(StageWriter)                      # ok rows -> staging parquet; returns tallies

The tallies come back to the driver (small), which balances the staged rows and writes the final
shards and manifest (``countclip.data.shards``). Every source row ends in exactly one place: a
written row, or a reject counted under its stage and reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from countclip import output_folder, storage
from countclip.config import ConfigBase, require
from countclip.data.captions import CaptionConfig, CaptionFilter, check_columns, is_text_type
from countclip.data.fetch import FetchConfig
from countclip.data.shards import ShardConfig, check_output, select_rows, write_dataset
from countclip.data.stages import (
    FetchStage,
    StageWriter,
    VerifyStage,
    skip_verification,
    tally_report,
    verifier_scores,
)
from countclip.data.verify import VerifyConfig
from countclip.environment import ray_init_args
from countclip.progress import Progress


@dataclass
class ClusterConfig(ConfigBase):
    address: str | None = None
    """Ray cluster address; null starts (or joins, under `ray job submit`) the local/default one."""
    local_cpus: int | None = None
    """CPUs of a Ray instance started here (null: all)."""
    fetch_actors: int = 2
    """Fetch actors (each runs fetch.threads downloads at once)."""
    fetch_cpus: float = 0.25
    """CPUs reserved per fetch actor (fractional: fetching waits on the network)."""
    verify_actors: int = 1
    """YOLO actors; each loads the model once."""
    verify_cpus: float = 0.5
    """CPUs reserved per YOLO actor (fractional, so read and fetch tasks still schedule on small nodes)."""
    verify_gpus: float = 0.0
    """GPUs per YOLO actor (e.g. 0.25 packs four actors on one GPU); 0 runs on CPU."""
    batch_rows: int = 256
    """Rows per batch between stages."""
    fetch_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each fetch actor needs (e.g. {fetch_slot: 1} places one actor on each node
    that offers a slot: `ray start --resources='{"fetch_slot": 1}'`, or rayStartParams in KubeRay)."""
    verify_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each YOLO actor needs (e.g. to pin them to one worker group)."""

    def __post_init__(self) -> None:
        for name in ("fetch_actors", "verify_actors", "batch_rows"):
            require(getattr(self, name) > 0, f"cluster.{name} must be positive")
        for name in ("fetch_cpus", "verify_cpus", "verify_gpus"):
            require(getattr(self, name) >= 0, f"cluster.{name} must be >= 0")


@dataclass
class BuildConfig(ConfigBase):
    source: list[str] = field(default_factory=list)
    """Parquet files or folders/prefixes of them (local paths or s3://)."""
    output: str = "runs/dataset"
    """Where the dataset (shards/ + manifest.json) goes: a local folder or an s3:// prefix."""
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    ground_truth: str | None = None
    """CountWorld truth.parquet: score the verifier's keep/reject decisions against it."""
    overwrite: bool = False
    """Write into an output folder that holds files countclip did not write there (they are kept,
    never deleted); off, such a folder is refused before any work."""

    def __post_init__(self) -> None:
        require(bool(self.source), "source must list at least one parquet file or folder")
        require(bool(self.output), "output must name a folder or s3:// prefix")

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]


def inspect_source(source: list[str]) -> tuple[list[str], dict[str, pa.DataType], dict]:
    """(parquet files, their common columns and types, fingerprint) from files and folders/prefixes,
    reading only footers; clear errors for a missing path, a folder without parquet, a file that is
    not parquet or not a regular file, and files that disagree on a column's type."""
    files = []
    for item in source:
        if storage.is_s3(item):
            listed = [u for u in storage.list_objects(item) if u.endswith(".parquet")]
            listed = listed or ([item] if item.endswith(".parquet") else [])
        else:
            path = storage.local_path(item)
            if not path.exists():
                raise FileNotFoundError(f"source {item} does not exist")
            listed = sorted(str(p) for p in path.rglob("*.parquet") if p.is_file()) if path.is_dir() else [str(path)]
            if not path.is_dir() and not path.is_file():  # a FIFO would block the footer read for ever
                raise ValueError(f"source {item} is not a regular file")
        if not listed:
            raise FileNotFoundError(f"source {item} holds no .parquet files")
        files += listed
    described, columns = [], None
    for uri in files:
        schema, rows, row_groups = _parquet_footer(uri, "source file")
        types = dict(zip(schema.names, schema.types))
        if columns is None:
            columns = types
        # Text may be string in one file and binary in another: the caption stage decodes row by row.
        for name in [c for c in columns if c in types and types[c] != columns[c]
                     and not (is_text_type(types[c]) and is_text_type(columns[c]))]:
            raise ValueError(f"source file {uri} has column {name!r} of type {types[name]}, the others {columns[name]}")
        columns = {c: t for c, t in columns.items() if c in types}
        described.append({"uri": uri, "rows": rows, "row_groups": row_groups})
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return files, columns or {}, {"files": described, "sha256": digest}


def _parquet_footer(uri: str, what: str) -> tuple[pa.Schema, int, int]:
    """(arrow schema, rows, row groups) of a parquet file from its footer; one-line errors."""
    if not storage.is_s3(uri) and not storage.local_path(uri).is_file():
        raise FileNotFoundError(f"{what} {uri} does not exist or is not a regular file")
    filesystem, path = storage.arrow_filesystem(uri)
    try:
        with filesystem.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle).metadata
            return meta.schema.to_arrow_schema(), meta.num_rows, meta.num_row_groups
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {uri} does not exist") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ValueError(f"{what} {uri} is not a readable parquet file: {exc}") from None


TRUTH_COLUMNS = ("sample_id", "stated_count", "true_count")


def check_ground_truth(uri: str | None) -> None:
    """Before any work: the ground truth is a parquet file with the columns the scores need."""
    if uri is None:
        return
    schema, _, _ = _parquet_footer(uri, "ground_truth")
    missing = [c for c in TRUTH_COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"ground_truth {uri} has no column(s) {missing}; a CountWorld truth.parquet has "
                         f"{list(TRUTH_COLUMNS)}")


def check_output_apart(cfg: BuildConfig, files: list[str]) -> None:
    """The output may not hold the build's own inputs: writing the dataset would replace them."""
    inputs = [*files, *([cfg.ground_truth] if cfg.ground_truth else [])]
    if storage.is_s3(cfg.output):
        prefix = cfg.output.rstrip("/") + "/"
        inside = [u for u in inputs if storage.is_s3(u) and (u + "/").startswith(prefix)]
    else:
        out = storage.local_path(cfg.output).resolve()
        inside = [u for u in inputs if not storage.is_s3(u)
                  and (out == (p := storage.local_path(u).resolve()) or out in p.parents)]
    if inside:
        raise ValueError(f"output {cfg.output} holds the build's own input {inside[0]}; writing the dataset there "
                         "would replace it. Choose another output folder")


def check_capacity(c: ClusterConfig, cluster: dict[str, float], nodes: list[dict[str, float]] | None = None,
                   verify: bool = True) -> None:
    """Refuse, up front, actor pools the cluster can never hold: Ray would wait for ever ("pending:
    1 GPU"). The pools hold their resources for the whole job, and Ray Data's file listing and read
    tasks each need one whole CPU besides. ``cluster``: the cluster's resource totals; ``nodes``: each
    alive node's, when known (one actor's needs must fit on one node); ``verify``: whether the YOLO
    pool runs at all (verify.enabled)."""
    pools = {"fetch": (c.fetch_actors, {"CPU": c.fetch_cpus, **c.fetch_resources})}
    if verify:
        pools["verify"] = (c.verify_actors, {"CPU": c.verify_cpus, "GPU": c.verify_gpus, **c.verify_resources})
    reserved: dict[str, float] = {}
    for actors, need in pools.values():
        for name, amount in need.items():
            reserved[name] = reserved.get(name, 0.0) + actors * amount
    cpus = cluster.get("CPU", 0.0)
    if cpus - reserved["CPU"] < 1:
        raise ValueError(
            f"the actor pools reserve {reserved['CPU']:g} of the cluster's {cpus:g} CPUs, leaving less than the one "
            "CPU that Ray Data's read tasks need; lower cluster.fetch_actors/fetch_cpus/verify_actors/verify_cpus "
            "or add CPUs")
    for name, amount in reserved.items():
        if name != "CPU" and amount > cluster.get(name, 0.0) + 1e-9:
            hint = ("set cluster.verify_gpus=0 to verify on CPU, or run on a cluster with GPUs" if name == "GPU"
                    else f"start nodes offering it (ray start --resources='{{\"{name}\": N}}') or drop it")
            raise ValueError(f"the actor pools need {amount:g} {name} but the cluster has "
                             f"{cluster.get(name, 0.0):g}; {hint}")
    for pool, (_, need) in pools.items():
        need = {k: v for k, v in need.items() if v > 0}
        if nodes is not None and not any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
            raise ValueError(f"no node of the cluster can hold one {pool} actor (it needs "
                             + ", ".join(f"{v:g} {k}" for k, v in need.items()) + "); lower cluster."
                             + f"{pool}_cpus/{pool}_resources" + ("/verify_gpus" if pool == "verify" else ""))


def build_dataset(cfg: BuildConfig, echo=print) -> dict:
    """Run the whole build; return the manifest (also written beside the shards)."""
    tic = time.perf_counter()
    files, columns, fingerprint = inspect_source(cfg.source)
    check_columns(cfg.captions, columns)  # a schema error stops the job before any work
    check_ground_truth(cfg.ground_truth)
    check_output_apart(cfg, files)
    check_output(cfg.output, cfg.overwrite)
    if cfg.verify.enabled:
        storage.local_copy(cfg.verify.resolved_weights())  # a missing or unreadable model too
    source_rows = sum(f["rows"] for f in fingerprint["files"])
    echo(f"[build] {len(files)} source file(s), {source_rows} rows")
    if not ray.is_initialized():  # Ray's own INFO lines (instance started, token saved) stay in its logs
        ray.init(**ray_init_args(cfg.cluster.address, cfg.cluster.local_cpus), log_to_driver=False,
                 logging_level=logging.WARNING)
    check_capacity(cfg.cluster, ray.cluster_resources(), [n["Resources"] for n in ray.nodes() if n.get("Alive")],
                   cfg.verify.enabled)
    with _staging_area(cfg.output) as staging:
        tallies = _run_pipeline(cfg, files, columns, staging, Progress("[build]", source_rows, "rows", echo))
        manifest = _balance_and_write(cfg, tallies, staging, fingerprint, echo)
    manifest["seconds"] = round(time.perf_counter() - tic, 1)
    echo(format_summary(manifest))
    return manifest


@contextlib.contextmanager
def _staging_area(output: str):
    """Where the stage writers put the kept rows, removed afterwards; locally a locked folder beside
    the output, so the next build to that output removes one a killed build left."""
    if storage.is_s3(output):
        prefix = f"{output.rstrip('/')}/.staging/{uuid.uuid4().hex}"
        try:
            yield prefix
        finally:
            storage.delete_prefix(prefix)
        return
    with output_folder.scratch_dir(storage.local_path(output).absolute(), "staging") as folder:
        yield str(folder)


def _run_pipeline(cfg: BuildConfig, files: list[str], columns: dict, staging: str, progress: Progress) -> pa.Table:
    filesystem, _ = storage.arrow_filesystem(files[0])
    paths = [storage.arrow_filesystem(f)[1] for f in files]
    # Ray Data spreads tasks and actors over the nodes by default (DataContext.scheduling_strategy).
    c = cfg.cluster
    # Only the configured columns are read: Ray Data pushes select_columns down into the parquet read.
    rows = ray.data.read_parquet(paths, filesystem=filesystem).select_columns(cfg.captions.required_columns())
    # The filter is vectorised over whole blocks. Its output (a few % of the rows) is then cut, in
    # streaming, into blocks of batch_rows: a read task's one big block would otherwise go to a
    # single fetch actor while the others idle.
    rows = rows.map_batches(CaptionFilter(cfg.captions), batch_format="pyarrow", batch_size=None)
    rows = rows.repartition(target_num_rows_per_block=c.batch_rows)
    rows = rows.map_batches(FetchStage, fn_constructor_args=(cfg.fetch,), batch_format="numpy",
                            batch_size=c.batch_rows, compute=ActorPoolStrategy(size=c.fetch_actors),
                            num_cpus=c.fetch_cpus, resources=c.fetch_resources or None)
    if cfg.verify.enabled:
        rows = rows.map_batches(VerifyStage, fn_constructor_args=(cfg.verify,), batch_format="numpy",
                                batch_size=c.batch_rows, compute=ActorPoolStrategy(size=c.verify_actors),
                                num_cpus=c.verify_cpus, num_gpus=c.verify_gpus or None,
                                resources=c.verify_resources or None)
    else:
        rows = rows.map_batches(skip_verification, batch_format="numpy", batch_size=c.batch_rows)
    rows = rows.map_batches(StageWriter(staging), batch_format="pyarrow", batch_size=c.batch_rows)
    tallies, staged = [], 0
    for batch in rows.iter_batches(batch_format="pyarrow", batch_size=None):  # streams the tallies in
        tallies.append(batch)
        staged += pc.sum(pc.equal(batch.column("stage"), "written")).as_py() or 0
        progress.update(progress.done + (pc.sum(batch.column("n_rows")).as_py() or 0), f"{staged} kept")
    progress.close(f"{staged} kept")
    return pa.concat_tables(tallies) if tallies else StageWriter.TALLY.empty_table()


def _balance_and_write(cfg: BuildConfig, tallies: pa.Table, staging: str, fingerprint: dict, echo) -> dict:
    staged = [u for u in storage.list_objects(staging) if u.endswith(".parquet")]
    filesystem, _ = storage.arrow_filesystem(staging)
    paths = [storage.arrow_filesystem(u)[1] for u in staged]
    if not paths:
        report = tally_report(tallies, {})
        reasons = ", ".join(f"{stage} {reason} {n}" for stage, by_reason in report["rejects"].items()
                            for reason, n in sorted(by_reason.items(), key=lambda item: -item[1]))
        raise ValueError(f"no source row survived the build: all {report['rows_in']} rejected ({reasons}); "
                         "nothing was written")
    rows = pq.read_table(paths, filesystem=filesystem)
    unique = first_of_each_id(rows)
    candidates = rows.filter(pa.array(unique)).select(["sample_id", "kind", "caption_count"])
    keep, balance_rejects = select_rows(candidates, cfg.shards)
    selected = np.zeros(rows.num_rows, dtype=bool)
    selected[np.flatnonzero(unique)[keep]] = True
    rows = rows.filter(pa.array(selected))
    if duplicates := int((~unique).sum()):
        balance_rejects = {"duplicate_id": duplicates, **balance_rejects}
    report = tally_report(tallies, balance_rejects)
    source_rows = sum(f["rows"] for f in fingerprint["files"])
    if report["rows_in"] != source_rows:
        raise RuntimeError(f"tallies account for {report['rows_in']} rows but the source has {source_rows}")
    manifest = {"config_sha256": cfg.fingerprint(), "config": cfg.to_dict(), "source": fingerprint, **report}
    if cfg.ground_truth:
        manifest["verifier_vs_truth"] = verifier_scores(tallies, cfg.ground_truth)
    echo(f"[build] writing {rows.num_rows} rows to {cfg.output}")
    return write_dataset(cfg.output, rows, manifest, cfg.shards, summary=format_summary, overwrite=cfg.overwrite)


def first_of_each_id(rows: pa.Table) -> np.ndarray:
    """(N,) bool: one row per sample_id, the same whatever order the stages staged them in (the
    first by id, URL, caption). Ids must be unique in a dataset; LAION holds repeated ids and URLs."""
    order = pc.sort_indices(rows, sort_keys=[("sample_id", "ascending"), ("url", "ascending"),
                                             ("caption", "ascending")]).to_numpy()
    ids = np.asarray(rows.column("sample_id").take(pa.array(order)).to_pylist(), dtype=object)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    unique = np.zeros(len(ids), dtype=bool)
    unique[order[first]] = True
    return unique


def format_summary(manifest: dict) -> str:
    lines = [f"rows in {manifest['rows_in']} = written {manifest['rows_written']} + rejected {manifest['rows_rejected']}"]
    for stage, reasons in manifest["rejects"].items():
        lines += [f"  rejected at {stage:<9} {reason:<24} {n:>8}" for reason, n in sorted(reasons.items())]
    lines.append("verified per count  " + " ".join(f"{c}:{n}" for c, n in manifest["per_count_verified"].items()))
    lines.append("written per count   " + " ".join(f"{c}:{n}" for c, n in manifest["per_count_written"].items())
                 + f"  non-counting: {manifest['written']['non_counting']}")
    if "verifier_vs_truth" in manifest:
        v = manifest["verifier_vs_truth"]
        lines.append(f"verifier vs ground truth: precision {v['precision']:.3f} recall {v['recall']:.3f} "
                     f"({v['rows_scored']} counting rows scored)")
    lines.append(f"{len(manifest['shards'])} shard(s); config {manifest['config_sha256']}; "
                 f"source {manifest['source']['sha256']}")
    if "seconds" in manifest:
        lines.append(f"built in {manifest['seconds']:.0f}s")
    return "\n".join(lines)
