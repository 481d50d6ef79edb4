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

import hashlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from countclip import storage
from countclip.config import ConfigBase, require
from countclip.data.captions import CaptionConfig, CaptionFilter, check_columns
from countclip.data.fetch import FetchConfig
from countclip.data.shards import ShardConfig, select_rows, write_dataset
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

    def __post_init__(self) -> None:
        require(bool(self.source), "source must list at least one parquet file or folder")
        require(bool(self.output), "output must name a folder or s3:// prefix")

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]


def inspect_source(source: list[str]) -> tuple[list[str], list[str], dict]:
    """(parquet files, their columns, fingerprint) from files and folders/prefixes, reading only
    footers; clear errors for a missing path, a folder without parquet, or a file that is not parquet."""
    files = []
    for item in source:
        if storage.is_s3(item):
            listed = [u for u in storage.list_objects(item) if u.endswith(".parquet")]
            listed = listed or ([item] if item.endswith(".parquet") else [])
        else:
            path = storage.local_path(item)
            if not path.exists():
                raise FileNotFoundError(f"source {item} does not exist")
            listed = sorted(str(p) for p in path.rglob("*.parquet")) if path.is_dir() else [str(path)]
        if not listed:
            raise FileNotFoundError(f"source {item} holds no .parquet files")
        files += listed
    described, columns = [], None
    for uri in files:
        filesystem, path = storage.arrow_filesystem(uri)
        try:
            with filesystem.open_input_file(path) as handle:
                meta = pq.ParquetFile(handle).metadata
        except FileNotFoundError:
            raise FileNotFoundError(f"source file {uri} does not exist") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"source file {uri} is not a readable parquet file: {exc}") from None
        names = meta.schema.to_arrow_schema().names
        columns = names if columns is None else [c for c in columns if c in names]
        described.append({"uri": uri, "rows": meta.num_rows, "row_groups": meta.num_row_groups})
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return files, columns or [], {"files": described, "sha256": digest}


def check_capacity(c: ClusterConfig, cluster_cpus: float) -> None:
    """The actor pools hold their CPUs for the whole job, and Ray Data's file listing and read tasks
    each need one whole CPU: a cluster left without one would wait forever, so refuse it up front."""
    reserved = c.fetch_actors * c.fetch_cpus + c.verify_actors * c.verify_cpus
    if cluster_cpus - reserved < 1:
        raise ValueError(
            f"the actor pools reserve {reserved:g} of the cluster's {cluster_cpus:g} CPUs, leaving less than the one "
            "CPU that Ray Data's read tasks need; lower cluster.fetch_actors/fetch_cpus/verify_actors/verify_cpus "
            "or add CPUs")


def build_dataset(cfg: BuildConfig, echo=print) -> dict:
    """Run the whole build; return the manifest (also written beside the shards)."""
    tic = time.perf_counter()
    files, columns, fingerprint = inspect_source(cfg.source)
    check_columns(cfg.captions, columns)  # a schema error stops the job before any work
    if cfg.verify.enabled:
        storage.local_copy(cfg.verify.resolved_weights())  # a missing or unreadable model too
    source_rows = sum(f["rows"] for f in fingerprint["files"])
    echo(f"[build] {len(files)} source file(s), {source_rows} rows")
    if not ray.is_initialized():  # Ray's own INFO lines (instance started, token saved) stay in its logs
        ray.init(**ray_init_args(cfg.cluster.address, cfg.cluster.local_cpus), log_to_driver=False,
                 logging_level=logging.WARNING)
    check_capacity(cfg.cluster, ray.cluster_resources().get("CPU", 0.0))
    staging, cleanup = _staging_area(cfg.output)
    try:
        tallies = _run_pipeline(cfg, files, columns, staging, Progress("[build]", source_rows, "rows", echo))
        manifest = _balance_and_write(cfg, tallies, staging, fingerprint, echo)
    finally:
        cleanup()
    manifest["seconds"] = round(time.perf_counter() - tic, 1)
    echo(format_summary(manifest))
    return manifest


def _staging_area(output: str):
    if storage.is_s3(output):
        prefix = f"{output.rstrip('/')}/.staging/{uuid.uuid4().hex}"

        return prefix, lambda: storage.delete_prefix(prefix)
    parent = storage.local_path(output).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    return folder, lambda: shutil.rmtree(folder, ignore_errors=True)


def _run_pipeline(cfg: BuildConfig, files: list[str], columns: list[str], staging: str, progress: Progress) -> pa.Table:
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
    staged = storage.list_objects(staging)
    columns = ["sample_id", "kind", "caption_count"]
    filesystem, _ = storage.arrow_filesystem(staging)
    paths = [storage.arrow_filesystem(u)[1] for u in staged]
    if not paths:
        raise ValueError("no source row survived the build (see the rejects by reason); nothing was written")
    candidates = pq.read_table(paths, filesystem=filesystem, columns=columns)
    keep, balance_rejects = select_rows(candidates, cfg.shards)
    selected = candidates.column("sample_id").filter(pa.array(keep))
    rows = pq.read_table(paths, filesystem=filesystem)
    rows = rows.filter(pc.is_in(rows.column("sample_id"), value_set=pa.array(selected.to_pylist(), pa.string())))
    report = tally_report(tallies, balance_rejects)
    source_rows = sum(f["rows"] for f in fingerprint["files"])
    if report["rows_in"] != source_rows:
        raise RuntimeError(f"tallies account for {report['rows_in']} rows but the source has {source_rows}")
    manifest = {"config_sha256": cfg.fingerprint(), "config": cfg.to_dict(), "source": fingerprint, **report}
    if cfg.ground_truth:
        manifest["verifier_vs_truth"] = verifier_scores(tallies, cfg.ground_truth)
    echo(f"[build] writing {rows.num_rows} rows to {cfg.output}")
    return write_dataset(cfg.output, rows, manifest, cfg.shards, summary=format_summary)


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
