"""The counting experiment: what L_count buys over the same fine-tuning without it.

1. pretrain a small CLIP on CountWorld with L_clip and captions that never state a count (the stand-in
   for a pretrained CLIP, which saw few counts);
2. fine-tune two copies from it on the same data, steps and seed: the control with L_clip alone, and
   CountCLIP with L_clip + lambda * L_count, batches mixed like the paper's (counting rows a minority);
3. evaluate base, control and CountCLIP on a held-out CountBench-format benchmark and on zero-shot
   shape classification, and write report.json, confusion matrices and the checkpoints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from countclip import storage
from countclip.config import ConfigBase, require
from countclip.data.loader import TrainingSet, load_training_set
from countclip.evaluate import evaluate_countbench, save_confusion_png
from countclip.images import normalize
from countclip.model import ModelConfig, create_model, export_checkpoint, preprocess_config
from countclip.progress import Progress
from countclip.train import LossConfig, OptimConfig, TrainConfig, train
from countclip.world.files import write_benchmark
from countclip.world.scenes import CaptionStyle
from countclip.world.sets import training_set, zeroshot_by_task, zeroshot_set

VARIANTS = ("base", "control", "countclip")


@dataclass
class ExperimentWorldConfig(ConfigBase):
    image_size: int = 64
    """Side of CountWorld images in pixels (the model's input size)."""
    pretrain_images: int = 20000
    """Images with count-free captions for pretraining the base model."""
    finetune_images: int = 16000
    """Images for fine-tuning; counting_share of them have counting captions."""
    counting_share: float = 0.3
    """Share of fine-tuning images whose caption states their count (2..10)."""
    benchmark_per_count: int = 50
    """Held-out benchmark images per count 2..10."""
    zeroshot_images: int = 800
    """Held-out images for zero-shot classification of shape, object colour and background."""
    numerosity_words: Literal["none", "pretrain", "all"] = "pretrain"
    """Where count-free captions use vague numerosity words matching the scene ("a few", "many"):
    nowhere, in the pretraining captions only, or in pretraining and fine-tuning captions."""
    sparse_captions: bool = True
    """Count-free captions drop colour/backdrop/size words at web-like rates (CaptionStyle)."""
    same_size: bool = True
    """All objects of a scene share one radius (else each object draws its own)."""
    grid: int | None = None
    """Place objects one per cell of a grid x grid lattice (8 = the tiny ViT's patch grid); null: anywhere."""
    finetune_dataset: str | None = None
    """A built dataset (``countclip build-dataset``) to fine-tune on instead of generating fine-tuning
    images here; its rows must come from a source written with the same world settings."""

    def style(self, stage: Literal["pretrain", "finetune"]) -> CaptionStyle:
        numerosity = self.numerosity_words == "all" or (self.numerosity_words == "pretrain" and stage == "pretrain")
        if self.sparse_captions:
            return CaptionStyle(numerosity=numerosity)
        return CaptionStyle(numerosity=numerosity, keep_colour=1.0, keep_backdrop=1.0, keep_size=0.5)

    def __post_init__(self) -> None:
        require(self.image_size >= 32, f"world.image_size must be >= 32, got {self.image_size}")
        require(0 < self.counting_share < 1, f"world.counting_share must be in (0, 1), got {self.counting_share}")
        for name in ("pretrain_images", "finetune_images", "benchmark_per_count", "zeroshot_images"):
            require(getattr(self, name) > 0, f"world.{name} must be positive")


def _pretrain_default() -> TrainConfig:
    return TrainConfig(steps=300, batch_size=128, counting_fraction=None,
                       optim=OptimConfig(lr=1e-3, warmup_steps=30), loss=LossConfig(count_lambda=0.0))


def _finetune_default() -> TrainConfig:
    return TrainConfig(steps=1000, batch_size=64, counting_fraction=0.4,
                       optim=OptimConfig(lr=1e-3, warmup_steps=50), loss=LossConfig(count_lambda=3.0, counterfactuals=3))


@dataclass
class ExperimentConfig(ConfigBase):
    seed: int = 0
    """Master seed: the world, the batch order and the initialisation all derive from it."""
    out: str = "runs/experiment"
    """Output folder: report.json, confusion PNGs, benchmark, checkpoints."""
    threads: int = 2
    """torch CPU threads."""
    device: str = "cpu"
    """Where to train and evaluate: cpu, cuda or cuda:N."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture of the small CLIP (random init; pretrained here)."""
    world: ExperimentWorldConfig = field(default_factory=ExperimentWorldConfig)
    pretrain: TrainConfig = field(default_factory=_pretrain_default)
    """Base-model pretraining (L_clip only, count-free captions; its loss.count_lambda must be 0)."""
    finetune: TrainConfig = field(default_factory=_finetune_default)
    """Fine-tuning of both copies; the control runs it with loss.count_lambda = 0."""

    def __post_init__(self) -> None:
        require(self.pretrain.loss.count_lambda == 0, "pretrain.loss.count_lambda must be 0: the base model sees no counts")
        require(self.finetune.loss.count_lambda > 0, "finetune.loss.count_lambda must be > 0, else CountCLIP equals the control")
        require(self.finetune.counting_fraction is not None, "finetune.counting_fraction must be set (e.g. 0.25)")
        require(self.device == "cpu" or self.device.startswith("cuda"), f"device must be cpu or cuda[:N], got {self.device!r}")


def run_experiment(cfg: ExperimentConfig, echo=print) -> dict:
    """Run the whole experiment; return the report (also written to ``cfg.out``/report.json)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    w = cfg.world
    echo(f"[world] seed {cfg.seed}: {w.pretrain_images} pretraining, {w.finetune_images} fine-tuning images")
    pretrain_data = training_set(cfg.seed * 7919 + 1, w.pretrain_images, w.image_size, 0.0, w.style("pretrain"), w.same_size,
                                       w.grid)
    if w.finetune_dataset:
        finetune_data = load_training_set(w.finetune_dataset, w.image_size)
        echo(f"[world] fine-tuning on {len(finetune_data)} rows of {w.finetune_dataset} "
             f"({int(finetune_data.is_counting.sum())} counting)")
    else:
        finetune_data = training_set(cfg.seed * 7919 + 2, w.finetune_images, w.image_size, w.counting_share,
                                           w.style("finetune"), w.same_size, w.grid)
    bench_file = write_benchmark(out / "benchmark", seed=cfg.seed * 7919 + 3, per_count=w.benchmark_per_count,
                                 image_size=w.image_size, same_size=w.same_size, grid=w.grid)
    zs_images, zs_labels = zeroshot_set(cfg.seed * 7919 + 4, w.zeroshot_images, w.image_size, w.same_size, w.grid)
    echo(f"[world] ready in {time.perf_counter() - t0:.0f}s; benchmark {bench_file}")

    torch.manual_seed(cfg.seed)
    device = cfg.device
    model, preprocess, tokenizer = create_model(cfg.model, device)
    stats = preprocess_config(model)
    zs_inputs = normalize(zs_images, stats["mean"], stats["std"])
    _train_stage("pretrain", cfg.pretrain.replace(seed=cfg.seed), model, tokenizer, pretrain_data, echo, device)
    base_path = out / "checkpoints" / "base.pt"
    export_checkpoint(model, base_path)

    results: dict[str, dict] = {}
    for name in VARIANTS:
        if name != "base":
            model, preprocess, tokenizer = create_model(cfg.model.replace(pretrained=str(base_path)), device)
            ft = cfg.finetune.replace(seed=cfg.seed)
            if name == "control":
                ft = ft.replace(loss=ft.loss.replace(count_lambda=0.0))
            result = _train_stage(name, ft, model, tokenizer, finetune_data, echo, device)
            export_checkpoint(model, out / "checkpoints" / f"{name}.pt")
        report = evaluate_countbench(model, tokenizer, preprocess, bench_file, device=device)
        zs_tasks = zeroshot_by_task(model, tokenizer, zs_inputs, zs_labels, device)
        zs = float(np.mean(list(zs_tasks.values())))
        save_confusion_png(report.confusion, out / f"confusion_{name}.png",
                           f"{name}: count accuracy {report.accuracy:.1%}")
        results[name] = {"count_accuracy": report.accuracy, "zeroshot_accuracy": zs, "zeroshot_by_task": zs_tasks,
                         "per_count_accuracy": {str(k): v for k, v in report.per_count_accuracy.items()},
                         "macro_f1": report.macro_f1, "scored": report.scored, "missing": report.missing}
        if name == "control":
            results[name]["count_only_negatives_per_image"] = result.count_only_negatives
        by_task = ", ".join(f"{task} {acc:.1%}" for task, acc in zs_tasks.items())
        echo(f"[eval] {name}: count accuracy {report.accuracy:.1%}, zero-shot {zs:.1%} ({by_task})")

    report = {"seed": cfg.seed, "seconds": round(time.perf_counter() - t0, 1), **results,
              "gain_over_control": results["countclip"]["count_accuracy"] - results["control"]["count_accuracy"],
              "config": cfg.to_dict()}
    storage.write_text(out / "report.json", json.dumps(report, indent=2))
    storage.write_text(out / "config.yaml", cfg.to_yaml())
    echo(format_table(report))
    return report


def _train_stage(name: str, cfg: TrainConfig, model, tokenizer, data: TrainingSet, echo, device="cpu"):
    progress = Progress(f"[{name}]", cfg.steps, "steps", echo)

    def log(step: int, row: dict[str, float]) -> None:
        terms = " ".join(f"{k}={row[k]:.3f}" for k in ("clip_loss", "count_loss") if k in row)
        progress.update(step, f"{terms}, {row['samples_per_s']:.0f} samples/s")

    result = train(cfg, model, tokenizer, data, log=log, device=device)
    progress.close()
    return result


def format_table(report: dict) -> str:
    lines = [f"{'model':<10} {'count acc':>9} {'zero-shot':>9}   per-count accuracy 2..10"]
    for name in VARIANTS:
        r = report[name]
        per = " ".join(f"{r['per_count_accuracy'].get(str(c), 0):.2f}" for c in range(2, 11))
        lines.append(f"{name:<10} {r['count_accuracy']:>9.1%} {r['zeroshot_accuracy']:>9.1%}   {per}")
    lines.append(f"CountCLIP - control: {report['gain_over_control'] * 100:+.1f} points of counting accuracy "
                 f"({report['seconds']:.0f}s)")
    return "\n".join(lines)
