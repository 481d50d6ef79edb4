"""The counting experiment: what L_count buys over the same fine-tuning without it.

1. the base, the stand-in for a pretrained CLIP (which saw few counts): the shipped CountWorld base
   (``base: countworld``), a checkpoint, or with ``base: scratch`` a small CLIP pretrained here with
   L_clip on captions that never state a count;
2. fine-tune two copies from it on the same data, steps and seed: the control with L_clip alone, and
   CountCLIP with L_clip + lambda * L_count, batches mixed like the paper's (counting rows a minority);
3. evaluate base, control and CountCLIP on a held-out CountBench-format benchmark and on zero-shot
   shape classification, and write report.json, confusion matrices and the checkpoints.

The fine-tunes are independent and run at once, each in a worker process (``workers``; a small
model's step gains little from a second torch thread, two fine-tunes side by side nearly twice the
throughput); each evaluates its own model there.

Options, off by default: ``lora`` adds a CountCLIP row fine-tuned through LoRA adapters from the same
base (and ``lora_control`` its own L_clip-only control); ``wise_ft_alphas`` evaluates WiSE-FT
interpolations between base and CountCLIP and writes the trade-off table and plot. A SigLIP run is
``model.arch=countclip-tiny-sigmoid pretrain.loss.contrastive=siglip finetune.loss.contrastive=siglip``.
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
from countclip.data.batches import TrainingStream
from countclip.data.shards import read_manifest
from countclip.evaluate import evaluate_countbench, save_confusion_png
from countclip.images import ImagePreprocess
from countclip.lora import LoraConfig, trainable_parameters
from countclip.model import ModelConfig, check_for_training, create_model, export_checkpoint
from countclip.parallel import in_worker, run_parallel
from countclip.progress import Progress
from countclip.train import LossConfig, OptimConfig, TrainConfig, train
from countclip.wiseft import check_alpha, wise_ft_curve, write_curve
from countclip.world.files import write_benchmark, write_clean_dataset
from countclip.world.scenes import CaptionStyle
from countclip.world.sets import zeroshot_by_task, zeroshot_set

VARIANTS = ("base", "control", "countclip")
NAIVE_VARIANT = "naive"  # present only with ExperimentConfig.naive
LORA_VARIANTS = ("control_lora", "countclip_lora")  # present only with ExperimentConfig.lora


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
    naive_dataset: str | None = None
    """With naive: a dataset built from the same source without the YOLO verification
    (``verify.enabled=false``); null: the generated fine-tuning rows with miscount_share of their
    counting captions stating a wrong count."""
    miscount_share: float = 0.23
    """Share of counting captions that state a wrong count in the generated naive set (CountWorld's noisy
    source holds 10 lying rows per 44 counting ones: the share a caption filter alone keeps)."""

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
        require(0 <= self.miscount_share < 1, f"world.miscount_share must be in [0, 1), got {self.miscount_share}")


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
    """Architecture of the small CLIP (its pretrained field is set from base)."""
    base: str = "countworld"
    """The pretrained model both copies are fine-tuned from: countworld (the stand-in shipped in
    countclip/weights, which knows the world's objects and not their counts), a checkpoint path, or
    scratch (pretrain one here with the pretrain stage: L_clip on count-free captions)."""
    naive: bool = False
    """Also fine-tune CountCLIP on the naive set (counting captions kept by the caption filter alone,
    without YOLO verification: the paper's naive-filtering ablation)."""
    world: ExperimentWorldConfig = field(default_factory=ExperimentWorldConfig)
    pretrain: TrainConfig = field(default_factory=_pretrain_default)
    """Base-model pretraining with base: scratch (L_clip only, count-free captions; loss.count_lambda 0)."""
    finetune: TrainConfig = field(default_factory=_finetune_default)
    """Fine-tuning of both copies; the control runs it with loss.count_lambda = 0."""
    lora: LoraConfig | None = None
    """Add a countclip_lora row: CountCLIP fine-tuned from the same base with these LoRA adapters
    ({rank, alpha, targets}) instead of all weights; null: no LoRA row."""
    lora_lr: float | None = None
    """Peak learning rate of the LoRA fine-tunes (adapters usually want a larger one); null: finetune.optim.lr."""
    lora_control: bool = False
    """With lora: also fine-tune a LoRA control (L_clip only), the LoRA row's own baseline."""
    workers: int = 0
    """Fine-tunes run at once, each in its own process with max(1, threads // workers) torch threads
    (a small model's step barely speeds up with a second thread; two fine-tunes side by side nearly
    double the throughput); 0: all of them at once on CPU, one at a time on CUDA; 1: one at a time
    in this process."""
    wise_ft_alphas: list[float] = field(default_factory=list)
    """WiSE-FT: evaluate interpolations of base and CountCLIP at these alphas (e.g. [0, 0.25, 0.5, 0.75, 1])
    and write wise_ft.json/.md/.png; empty: skip."""

    def __post_init__(self) -> None:
        require(bool(self.base), "base must be countworld, a checkpoint path or scratch")
        require(self.model.pretrained is None, "model.pretrained is set from base (countworld, a checkpoint or "
                "scratch); leave it null")
        require(self.model.lora is None, "model.lora would train the base model's pretraining through adapters "
                "on random weights; set lora (the experiment's LoRA row) instead")
        require(self.workers >= 0, f"workers must be >= 0 (0: as many as fine-tunes on CPU), got {self.workers}")
        require(self.threads >= 1, f"threads must be >= 1, got {self.threads}")
        require(self.lora_lr is None or self.lora_lr > 0, f"lora_lr must be positive, got {self.lora_lr}")
        require(self.lora is not None or not self.lora_control, "lora_control needs lora (the adapters) set")
        self.wise_ft_alphas = [check_alpha(a) for a in self.wise_ft_alphas]
        require(self.pretrain.loss.count_lambda == 0, "pretrain.loss.count_lambda must be 0: the base model sees no counts")
        require(self.finetune.loss.count_lambda > 0, "finetune.loss.count_lambda must be > 0, else CountCLIP equals the control")
        require(self.finetune.counting_fraction is not None, "finetune.counting_fraction must be set (e.g. 0.25)")
        require(self.device == "cpu" or self.device.startswith("cuda"), f"device must be cpu or cuda[:N], got {self.device!r}")


def run_experiment(cfg: ExperimentConfig, echo=print) -> dict:
    """Run the whole experiment; return the report (also written to ``cfg.out``/report.json)."""
    for stage in (cfg.pretrain, cfg.finetune):  # a loss that does not fit the model fails here, not mid-run
        check_for_training(cfg.model, stage.loss.contrastive)
    if cfg.lora is not None:
        check_for_training(cfg.model.replace(lora=cfg.lora), cfg.finetune.loss.contrastive)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    w = cfg.world
    scratch = cfg.base == "scratch"
    echo(f"[world] seed {cfg.seed}: base {cfg.base}" + (f", {w.pretrain_images} pretraining images" if scratch else "")
         + (f", {w.finetune_images} fine-tuning images" if not w.finetune_dataset else ""))
    # The generated rows go through the same shards and stream as a built dataset does.
    if w.finetune_dataset:
        finetune_data = w.finetune_dataset
        written = read_manifest(finetune_data)["written"]
        echo(f"[world] fine-tuning on {sum(written.values())} rows of {finetune_data} ({written['counting']} counting)")
    else:
        finetune_data = str(out / "data" / "finetune")
        write_clean_dataset(finetune_data, cfg.seed * 7919 + 2, w.finetune_images, w.image_size, w.counting_share,
                            style=w.style("finetune"), same_size=w.same_size, grid=w.grid)
    naive_data = None
    if cfg.naive:
        naive_data = w.naive_dataset or str(out / "data" / "naive")
        if not w.naive_dataset:  # the same rows, a share of the counting captions miscounted
            write_clean_dataset(naive_data, cfg.seed * 7919 + 2, w.finetune_images, w.image_size, w.counting_share,
                                style=w.style("finetune"), same_size=w.same_size, grid=w.grid,
                                miscount_share=w.miscount_share)
    bench_file = write_benchmark(out / "benchmark", seed=cfg.seed * 7919 + 3, per_count=w.benchmark_per_count,
                                 image_size=w.image_size, same_size=w.same_size, grid=w.grid)
    zs_images, zs_labels = zeroshot_set(cfg.seed * 7919 + 4, w.zeroshot_images, w.image_size, w.same_size, w.grid)
    echo(f"[world] ready in {time.perf_counter() - t0:.0f}s; benchmark {bench_file}")

    torch.manual_seed(cfg.seed)
    device = cfg.device
    model, preprocess, tokenizer = create_model(cfg.model.replace(pretrained=None if scratch else cfg.base), device)
    if scratch:
        pretrain_data = str(out / "data" / "pretrain")
        write_clean_dataset(pretrain_data, cfg.seed * 7919 + 1, w.pretrain_images, w.image_size, 0.0,
                            style=w.style("pretrain"), same_size=w.same_size, grid=w.grid)
        _train_stage("pretrain", cfg.pretrain.replace(seed=cfg.seed), model, tokenizer, preprocess, pretrain_data,
                     echo, device)
    base_path = out / "checkpoints" / "base.pt"
    export_checkpoint(model, base_path)

    evaluate = _Evaluation(cfg, out, bench_file, preprocess.normalize(zs_images), zs_labels)
    results: dict[str, dict] = {"base": evaluate(model, tokenizer, preprocess, "base")}
    _echo_eval("base", results["base"], echo)
    names = [n for n in VARIANTS if n != "base"] + ([NAIVE_VARIANT] if cfg.naive else [])
    names += [v for v in LORA_VARIANTS if cfg.lora_control or v == "countclip_lora"] if cfg.lora else []
    data = {name: naive_data if name == NAIVE_VARIANT else finetune_data for name in names}
    workers = cfg.workers or (len(names) if device == "cpu" else 1)
    workers = min(workers, len(names))
    threads = max(1, cfg.threads // workers)
    if workers > 1:
        echo(f"[experiment] {len(names)} fine-tunes, {workers} at once in worker processes "
             f"({threads} torch thread{'s' * (threads > 1)} each)")
    calls = [(cfg, name, str(base_path), data[name], evaluate, threads) for name in names]
    for name, result in zip(names, run_parallel(_fine_tune, calls, workers, echo)):
        results[name] = result
        _echo_eval(name, result, echo)
    if cfg.wise_ft_alphas:
        finetuned, _, _ = create_model(cfg.model.replace(pretrained=str(out / "checkpoints" / "countclip.pt")), device)
        results["wise_ft"] = _wise_ft(cfg, out, finetuned, base_path, device,
                                      lambda m: evaluate(m, tokenizer, preprocess, ""), echo)

    report = {"seed": cfg.seed, "seconds": round(time.perf_counter() - t0, 1), **results,
              "gain_over_control": results["countclip"]["count_accuracy"] - results["control"]["count_accuracy"],
              "config": cfg.to_dict()}
    if NAIVE_VARIANT in results:  # what the verify stage buys
        report["verification_gain"] = results["countclip"]["count_accuracy"] - results[NAIVE_VARIANT]["count_accuracy"]
    if "countclip_lora" in results:
        report["lora_gain_over_control"] = results["countclip_lora"]["count_accuracy"] - results["control"]["count_accuracy"]
    if "control_lora" in results:
        report["lora_gain_over_lora_control"] = (results["countclip_lora"]["count_accuracy"]
                                                 - results["control_lora"]["count_accuracy"])
    storage.write_text(out / "report.json", json.dumps(report, indent=2))
    storage.write_text(out / "config.yaml", cfg.to_yaml())
    echo(format_table(report))
    return report


class _Evaluation:
    """CountBench protocol and zero-shot by task on the experiment's held-out sets (picklable: the
    fine-tunes evaluate their own model in their worker process)."""

    def __init__(self, cfg: ExperimentConfig, out: Path, bench_file, zs_inputs, zs_labels):
        self.out, self.bench_file, self.device = out, bench_file, cfg.device
        self.zs_inputs, self.zs_labels = zs_inputs.numpy(), zs_labels  # numpy: pickled as plain bytes

    def __call__(self, model, tokenizer, preprocess: ImagePreprocess, name: str) -> dict:
        report = evaluate_countbench(model, tokenizer, preprocess, self.bench_file, device=self.device)
        zs_tasks = zeroshot_by_task(model, tokenizer, torch.from_numpy(self.zs_inputs), self.zs_labels, self.device)
        if name:
            save_confusion_png(report.confusion, self.out / f"confusion_{name}.png",
                               f"{name}: count accuracy {report.accuracy:.1%}")
        return {"count_accuracy": report.accuracy, "zeroshot_accuracy": float(np.mean(list(zs_tasks.values()))),
                "zeroshot_by_task": zs_tasks, "per_count_accuracy": {str(k): v for k, v in report.per_count_accuracy.items()},
                "macro_f1": report.macro_f1, "scored": report.scored, "missing": report.missing}


def _fine_tune(cfg: ExperimentConfig, name: str, base_path: str, data: str, evaluate: _Evaluation, threads: int,
               echo=print) -> dict:
    """Fine-tune one variant from the base, export its checkpoint and evaluate it (in this process or
    in a worker process of `run_parallel`)."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)  # LoRA's initialisation, the same whichever process runs it
    lora = cfg.lora if name.endswith("_lora") else None
    model, preprocess, tokenizer = create_model(cfg.model.replace(pretrained=base_path, lora=lora), cfg.device)
    ft = cfg.finetune.replace(seed=cfg.seed)
    if name.startswith("control"):
        ft = ft.replace(loss=ft.loss.replace(count_lambda=0.0))
    if lora is not None and cfg.lora_lr is not None:
        ft = ft.replace(optim=ft.optim.replace(lr=cfg.lora_lr))
    trainable, total = trainable_parameters(model)
    result = _train_stage(name, ft, model, tokenizer, preprocess, data, echo, cfg.device)
    export_checkpoint(model, Path(cfg.out) / "checkpoints" / f"{name}.pt")
    row = evaluate(model, tokenizer, preprocess, name) | {"trainable_parameters": trainable, "parameters": total}
    if name == "control":
        row["count_only_negatives_per_image"] = result.count_only_negatives
    return row


def _echo_eval(name: str, r: dict, echo) -> None:
    by_task = ", ".join(f"{task} {acc:.1%}" for task, acc in r["zeroshot_by_task"].items())
    echo(f"[eval] {name}: count accuracy {r['count_accuracy']:.1%}, zero-shot {r['zeroshot_accuracy']:.1%} ({by_task})")


def _wise_ft(cfg: ExperimentConfig, out: Path, finetuned, base_path: Path, device, evaluate, echo) -> dict:
    """The WiSE-FT curve between base and CountCLIP on the experiment's own held-out sets."""
    model, _, _ = create_model(cfg.model.replace(pretrained=str(base_path)), device)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows = wise_ft_curve(model, base_state, finetuned.state_dict(), cfg.wise_ft_alphas, evaluate, echo)
    paths = write_curve(rows, out, f"WiSE-FT, CountCLIP over base (seed {cfg.seed})", {"seed": cfg.seed})
    return {"rows": rows, **paths}


def _train_stage(name: str, cfg: TrainConfig, model, tokenizer, preprocess: ImagePreprocess, dataset: str, echo,
                 device="cpu"):
    progress = Progress(f"[{name}]", cfg.steps, "steps", echo, interactive=False if in_worker() else None)

    def log(step: int, row: dict[str, float]) -> None:
        terms = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("_loss"))
        progress.update(step, f"{terms}, {row['samples_per_s']:.0f} samples/s")

    scale = cfg.data.train_crop_scale
    data = TrainingStream.for_training(dataset, cfg, ImagePreprocess(preprocess.config, tuple(scale) if scale else None))
    result = train(cfg, model, tokenizer, data, log=log, device=device)
    progress.close()
    return result


def format_table(report: dict) -> str:
    lines = [f"{'model':<14} {'count acc':>9} {'zero-shot':>9}   per-count accuracy 2..10"]
    for name in (n for n in (*VARIANTS, NAIVE_VARIANT, *LORA_VARIANTS) if n in report):
        r = report[name]
        per = " ".join(f"{r['per_count_accuracy'].get(str(c), 0):.2f}" for c in range(2, 11))
        lines.append(f"{name:<14} {r['count_accuracy']:>9.1%} {r['zeroshot_accuracy']:>9.1%}   {per}")
    lines.append(f"CountCLIP - control: {report['gain_over_control'] * 100:+.1f} points of counting accuracy "
                 f"({report['seconds']:.0f}s)")
    if "verification_gain" in report:
        lines.append(f"CountCLIP - naive (no count verification): {report['verification_gain'] * 100:+.1f} points")
    if "lora_gain_over_control" in report:
        trainable = report["countclip_lora"]["trainable_parameters"] / report["countclip"]["trainable_parameters"]
        lines.append(f"CountCLIP (LoRA, {trainable:.2%} of the parameters trained) - control: "
                     f"{report['lora_gain_over_control'] * 100:+.1f} points")
    if "lora_gain_over_lora_control" in report:
        lines.append(f"CountCLIP (LoRA) - LoRA control: {report['lora_gain_over_lora_control'] * 100:+.1f} points")
    return "\n".join(lines)
