"""Ray Train wiring: the training job as a TorchTrainer around ``countclip.train.train``.

The driver checks everything that can be checked before a worker starts (dataset and its batch mix,
architecture, benchmark, storage, MLflow, room on the cluster for the ingest), opens the MLflow run,
and starts ``worker_main`` on N workers. Each worker builds the model, shards it
(``distributed.shard_model``), opens its stream of the dataset (``data.batches.TrainingStream``: Ray
Data decode tasks on the cluster's CPUs feeding this rank; its own rows, memory bounded by the
prefetch) and runs the one training loop.

Why each worker builds its own Ray Dataset rather than receiving a ``streaming_split`` shard through
``TorchTrainer(datasets=...)``: streaming_split hands blocks to whichever worker asks first, and a
DataIterator cannot resume mid-epoch, so neither the rows a rank sees nor what a restarted group sees
would be reproducible. A per-rank plan over the manifest makes both a function of (seed, rank, world
size, step). Checkpoints are DCP folders reported to Ray Train (every rank reports its shards; Ray
merges them in ``storage_path``); after a worker dies, Ray restarts the group and the loop resumes
from the newest checkpoint. Metrics reach MLflow only together with a checkpoint, so a resumed run
logs every step exactly once.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig
from ray.train import ScalingConfig as RayScaling
from ray.train.torch import TorchConfig, TorchTrainer

from countclip import checkpoint, storage, tracking
from countclip.config import ConfigBase, ConfigError, require
from countclip.data.batches import TrainingStream, check_mix
from countclip.data.shards import read_manifest
from countclip.distributed import gather_objects, shard_model
from countclip.environment import configure_environment, ray_init_args
from countclip.evaluate import evaluate_countbench, load_countbench
from countclip.export import model_config, write_open_clip_folder
from countclip.images import ImagePreprocess
from countclip.lora import attention_targets
from countclip.model import (
    ModelConfig,
    check_architecture,
    check_for_training,
    create_model,
    export_checkpoint,
    is_open_clip_folder,
    open_clip_name,
    resolve_pretrained,
    skeleton,
)
from countclip.progress import Progress
from countclip.tracking import TrackingConfig
from countclip.train import TrainConfig, train


@dataclass
class ScalingConfig(ConfigBase):
    num_workers: int = 2
    """Training workers (processes), across all nodes."""
    use_gpu: bool = False
    """One GPU per worker, NCCL; otherwise CPU workers on gloo."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (also its torch thread count on CPU)."""
    strategy: Literal["fsdp", "ddp", "none"] = "fsdp"
    """fsdp: FSDP2 per residual block; ddp: full replicas; none: a single worker only."""
    mixed_precision: bool = True
    """bf16 compute with fp32 reduction under FSDP on GPU (ignored on CPU)."""
    activation_checkpointing: bool = False
    """Recompute block activations in backward (open_clip grad checkpointing) to save memory."""

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, f"scaling.num_workers must be >= 1, got {self.num_workers}")
        require(self.cpus_per_worker > 0, "scaling.cpus_per_worker must be positive")
        require(self.strategy != "none" or self.num_workers == 1, "scaling.strategy none needs num_workers: 1")


@dataclass
class TrainJobConfig(ConfigBase):
    name: str = "countclip"
    """Run name (Ray Train run folder and MLflow run name)."""
    dataset: str = "runs/countworld/dataset"
    """A built dataset (folder or s3:// prefix holding manifest.json)."""
    benchmark: str | None = None
    """A CountBench-format file evaluated at every checkpoint and at the end (images beside it)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(checkpoint_every=100))
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    storage_path: str = "runs/ray"
    """Ray Train storage for checkpoints: a shared folder or s3:// prefix every node can reach."""
    max_failures: int = 1
    """Worker-group restarts allowed (resuming from the newest checkpoint) before the job fails."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: str | None = None
    """Where the final open_clip checkpoint goes (default: <storage_path>/<name>/model.pt); the model
    is also written beside it as an open_clip folder, <export without suffix>-open_clip/ (local-dir:)."""

    def __post_init__(self) -> None:
        require(self.max_failures >= 0, "max_failures must be >= 0")
        require(self.train.batch_size % self.scaling.num_workers == 0,
                f"train.batch_size {self.train.batch_size} must divide by scaling.num_workers {self.scaling.num_workers}")

    def export_uri(self) -> str:
        return self.export or f"{self.storage_path.rstrip('/')}/{self.name}/model.pt"

    def export_folder_uri(self) -> str:
        uri = self.export_uri()
        stem = uri.rsplit("/", 1)[-1]
        return uri[: len(uri) - len(stem)] + stem.rsplit(".", 1)[0] + "-open_clip"


def preflight(cfg: TrainJobConfig) -> dict:
    """Everything knowable before a worker starts; returns the dataset manifest."""
    manifest = read_manifest(cfg.dataset)
    if manifest["rows_written"] == 0 or not manifest["shards"]:
        raise ValueError(f"dataset {cfg.dataset} is empty: its manifest lists no rows")
    check_mix(manifest, cfg.dataset, cfg.train.batch_size, cfg.train.counting_fraction, cfg.scaling.num_workers)
    check_architecture(cfg.model.arch)
    resolve_pretrained(cfg.model.arch, cfg.model.pretrained)
    check_for_training(cfg.model, cfg.train.loss.contrastive)
    _check_lora_strategy(cfg)
    if cfg.train.loss.preserve_lambda > 0 and cfg.scaling.strategy == "fsdp":
        raise ConfigError("train.loss.preserve_lambda keeps a frozen copy of the image tower, which an FSDP2-sharded "
                          "model cannot make: use scaling.strategy=ddp (or none), or train.loss.preserve_lambda=0")
    if cfg.benchmark:
        load_countbench(cfg.benchmark)
    _check_writable(cfg.storage_path)
    tracking.check_reachable(cfg.tracking)
    return manifest


def _check_lora_strategy(cfg: TrainJobConfig) -> None:
    """LoRA on the MLP Linears (c_fc, c_proj) trains under FSDP2, DDP and one worker alike; peft's
    MultiheadAttention layer (target attn) trains under DDP and one worker, but FSDP2's fully_shard
    rejects it ("Some parameters are not in the module tree"), so refuse that here."""
    if cfg.model.lora is None or cfg.scaling.strategy != "fsdp":
        return
    attention = attention_targets(skeleton(cfg.model.arch), cfg.model.lora)
    if attention:
        raise ConfigError(f"model.lora.targets adapt nn.MultiheadAttention ({attention[0]}, ...), which FSDP2 cannot "
                          "shard through peft; use scaling.strategy=ddp, or targets on Linear modules such as [c_fc, c_proj]")


def _check_writable(uri: str) -> None:
    probe = f"{uri.rstrip('/')}/.countclip-write-probe-{uuid.uuid4().hex}"
    try:
        storage.write_bytes(probe, b"ok")
    except Exception as exc:  # any failure to write means the job could never checkpoint
        raise PermissionError(f"storage_path {uri} is not writable: {exc}") from None
    storage.delete(probe)


def check_capacity(cfg: TrainJobConfig, cluster_cpus: float) -> None:
    """The workers hold their CPUs for the whole job and the ingest's decode tasks need theirs: a
    cluster left without room for one decode task would wait forever, so refuse it up front."""
    reserved = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    if cluster_cpus - reserved < cfg.train.data.decode_cpus - 1e-9:
        raise ValueError(
            f"the {cfg.scaling.num_workers} training workers reserve {reserved:g} of the cluster's {cluster_cpus:g} CPUs, "
            f"leaving less than the {cfg.train.data.decode_cpus:g} CPU one ingest decode task needs; lower "
            "scaling.cpus_per_worker or train.data.decode_cpus, or add CPUs")


def run_training(cfg: TrainJobConfig, echo=print) -> dict:
    """Preflight, train on Ray, export the final model; return a summary."""
    tracking.quiet_mlflow()
    manifest = preflight(cfg)
    run_id = tracking.start_run(cfg.tracking, cfg.name, cfg.to_dict(),
                                {"config.yaml": cfg.to_yaml(), "dataset_manifest.json": _manifest_summary(manifest)})
    if not ray.is_initialized():
        ray.init(**ray_init_args(None, None))
    check_capacity(cfg, ray.cluster_resources().get("CPU", 0.0))
    storage_path = cfg.storage_path if storage.is_s3(cfg.storage_path) else str(Path(cfg.storage_path).resolve())
    filesystem = storage.arrow_filesystem(storage_path)[0] if storage.is_s3(storage_path) else None
    trainer = TorchTrainer(
        worker_main,
        train_loop_config={"job": cfg.to_dict(), "run_id": run_id},
        scaling_config=RayScaling(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                  resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.name, storage_path=storage_path if not filesystem else storage_path.removeprefix("s3://"),
            storage_filesystem=filesystem, failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    tic = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception:
        tracking.end_run(cfg.tracking, run_id, "FAILED")
        raise
    summary = {"run_id": run_id, "seconds": round(time.perf_counter() - tic, 1), "metrics": dict(result.metrics or {})}
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            summary |= export_final(cfg, Path(folder), run_id)
    tracking.end_run(cfg.tracking, run_id)
    echo(f"[train] done in {summary['seconds']:.0f}s; model {summary.get('export')}; MLflow run {run_id}")
    return summary


def _manifest_summary(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("config", "shards")} | {"shards": len(manifest["shards"])}


def export_final(cfg: TrainJobConfig, folder: Path, run_id: str | None) -> dict:
    """Load the last training checkpoint into a plain model and write the open_clip checkpoint and,
    beside it, the open_clip folder (with the final count accuracy in its model card when known)."""
    # A folder holds its own architecture, so the plain model is built from it (its weights are replaced next).
    base = cfg.model if is_open_clip_folder(cfg.model.pretrained) else cfg.model.replace(pretrained=None)
    model, preprocess, tokenizer = create_model(base)
    marker = checkpoint.load_model_weights(folder, model)
    export_checkpoint(model, cfg.export_uri())
    out = {"export": cfg.export_uri(), "export_folder": cfg.export_folder_uri(), "step": marker["step"]}
    metrics = {}
    if cfg.benchmark:
        report = evaluate_countbench(model, tokenizer, preprocess, cfg.benchmark)
        out["count_accuracy"] = metrics["count_accuracy"] = report.accuracy
        tracking.log_metric_rows(cfg.tracking, run_id, [{"step": marker["step"], "final_count_accuracy": report.accuracy}])
    write_open_clip_folder(model, cfg.export_folder_uri(), model_config(open_clip_name(cfg.model)), cfg.model.arch,
                           metrics, source=f"{cfg.name} (Ray Train, step {marker['step']})")
    return out


def worker_main(config: dict) -> None:
    """One Ray Train worker: model -> shard -> data -> the training loop, reporting checkpoints."""
    cfg = TrainJobConfig.from_dict(config["job"])
    run_id = config["run_id"]
    configure_environment()
    tracking.quiet_mlflow()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if pid_dir := os.environ.get("COUNTCLIP_PID_DIR"):  # lets operators (and the fault test) find workers
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(pid_dir) / f"rank{rank}.pid").write_text(str(os.getpid()))
    device = ray.train.torch.get_device()
    nodes = gather_objects(ray.get_runtime_context().get_node_id())  # every rank joins the gather
    if rank == 0:  # rank 0 records where the workers ran
        tracking.set_tags(cfg.tracking, run_id, {"worker_nodes": ",".join(nodes)})
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)  # every rank builds the same initial model
    model, preprocess, tokenizer = create_model(cfg.model, device)
    model = shard_model(model, cfg.scaling.strategy, device, mixed_precision=cfg.scaling.mixed_precision,
                        activation_checkpointing=cfg.scaling.activation_checkpointing)
    scale = cfg.train.data.train_crop_scale
    # This rank's stream of the dataset: decode tasks on the cluster's CPUs, the plan a function of
    # (seed, rank, world size), so a restarted group continues with exactly the rows it would have seen.
    train_preprocess = ImagePreprocess(preprocess.config, tuple(scale) if scale else None)
    data = TrainingStream.for_training(cfg.dataset, cfg.train, train_preprocess, rank=rank,
                                       world_size=context.get_world_size(), backend="ray")

    # Rows are published with their checkpoint. A worker can die after rank 0 published but before
    # the checkpoint was registered; the group then trains those steps again (with the same results,
    # from the same state), so rank 0 publishes only the steps past what the run already holds.
    published = tracking.last_logged_step(cfg.tracking, run_id) if rank == 0 else 0

    def on_checkpoint(folder: Path, step: int, rows: list[dict[str, float]]) -> None:
        nonlocal published
        metrics = dict(rows[-1]) if rows else {"step": step}
        if cfg.benchmark:
            metrics["count_accuracy"] = evaluate_countbench(model, tokenizer, preprocess, cfg.benchmark, device=device).accuracy
            model.train()
            rows = [*rows, {"step": step, "count_accuracy": metrics["count_accuracy"]}]
        if rank == 0:
            tracking.log_metric_rows(cfg.tracking, run_id, [row for row in rows if row["step"] > published])
            published = max(published, step)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))

    progress = Progress("[train]", cfg.train.steps, "steps", lambda line: print(line, flush=True))

    def log(step: int, row: dict[str, float]) -> None:
        if rank == 0:
            terms = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("loss"))
            progress.update(step, f"{terms}, {row['samples_per_s']:.0f} samples/s")

    resume = ray.train.get_checkpoint()
    local_root = Path(tempfile.mkdtemp(prefix=f"countclip-{cfg.name}-rank{rank}-"))
    if resume is None:
        train(cfg.train, model, tokenizer, data, log=log, on_checkpoint=on_checkpoint, device=device,
              checkpoint_root=local_root)
        return
    with resume.as_directory() as folder:
        train(cfg.train, model, tokenizer, data, log=log, on_checkpoint=on_checkpoint, device=device,
              checkpoint_root=local_root, resume_from=folder)
