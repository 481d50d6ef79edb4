"""The WiSE-FT job: interpolate a fine-tuned model with its base and measure the trade-off.

    countclip wise-ft --base runs/experiment/checkpoints/base.pt \\
                      --finetuned runs/experiment/checkpoints/countclip.pt --alpha 0,0.25,0.5,0.75,1

For each alpha it evaluates counting accuracy (CountBench protocol on a CountWorld benchmark, or any
CountBench-format file) and zero-shot accuracy per CountWorld task, and writes wise_ft.json, wise_ft.md
and wise_ft.png under ``out``. With ``benchmark`` null it rebuilds the held-out sets of
``countclip experiment --seed N`` (same seeds and world settings), so the rows at alpha 0 and 1
reproduce that experiment's base and fine-tuned figures. ``countclip evaluate`` registers a chosen
alpha through its ``wise_ft`` field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from countclip.config import ConfigBase, require
from countclip.evaluate import evaluate_countbench
from countclip.images import normalize
from countclip.model import ModelConfig, create_model, export_checkpoint, image_size, preprocess_config
from countclip.wiseft import check_alpha, format_markdown, wise_ft_curve, write_curve
from countclip.world.files import write_benchmark
from countclip.world.sets import zeroshot_by_task, zeroshot_set


@dataclass
class WiseFTConfig(ConfigBase):
    base: str = ""
    """The original model: a checkpoint (local, s3://) or an open_clip pretrained tag (e.g. openai)."""
    finetuned: str = ""
    """The fine-tuned checkpoint of the same architecture."""
    arch: str = "countclip-tiny"
    """open_clip architecture of both."""
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Interpolation weights of the fine-tuned model, each in [0, 1] (0: base, 1: fine-tuned)."""
    benchmark: str | None = None
    """A CountBench-format JSON (images beside it); null: write the CountWorld benchmark of ``seed``."""
    seed: int = 0
    """The experiment seed whose held-out benchmark and zero-shot set to rebuild (as ``countclip experiment``)."""
    benchmark_per_count: int = 50
    """CountWorld benchmark images per count 2..10 when ``benchmark`` is null."""
    zeroshot_images: int = 800
    """Held-out CountWorld images for zero-shot accuracy per task (shape, colour, background)."""
    same_size: bool = True
    """CountWorld setting of the held-out scenes (the experiment's world.same_size)."""
    grid: int | None = None
    """CountWorld setting of the held-out scenes (the experiment's world.grid)."""
    save_checkpoints: bool = False
    """Also export each interpolated model as <out>/checkpoints/wise_ft_<alpha>.pt."""
    out: str = "runs/wise_ft"
    """Output folder: wise_ft.json, wise_ft.md, wise_ft.png."""
    device: str = "cpu"
    """Where to evaluate: cpu, cuda or cuda:N."""
    threads: int = 2
    """torch CPU threads."""

    def __post_init__(self) -> None:
        require(bool(self.base), "base must name the original model (checkpoint or pretrained tag)")
        require(bool(self.finetuned), "finetuned must name the fine-tuned checkpoint")
        require(bool(self.alphas), "alphas must list at least one value in [0, 1]")
        self.alphas = [check_alpha(a) for a in self.alphas]
        require(self.benchmark_per_count > 0 and self.zeroshot_images > 0,
                "benchmark_per_count and zeroshot_images must be positive")


def run_wise_ft(cfg: WiseFTConfig, echo=print) -> dict:
    """Evaluate every alpha; write and return the table (rows) and where it went."""
    tic = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    base, preprocess, tokenizer = create_model(ModelConfig(arch=cfg.arch, pretrained=cfg.base), cfg.device)
    finetuned, _, _ = create_model(ModelConfig(arch=cfg.arch, pretrained=cfg.finetuned), cfg.device)
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    finetuned_state = finetuned.state_dict()
    del finetuned
    out = Path(cfg.out)
    side = image_size(base)
    bench_file = cfg.benchmark or write_benchmark(out / "benchmark", seed=cfg.seed * 7919 + 3,
                                                  per_count=cfg.benchmark_per_count, image_size=side,
                                                  same_size=cfg.same_size, grid=cfg.grid)
    images, labels = zeroshot_set(cfg.seed * 7919 + 4, cfg.zeroshot_images, side, cfg.same_size, cfg.grid)
    stats = preprocess_config(base)
    inputs = normalize(images, stats["mean"], stats["std"])

    def evaluate(model) -> dict:
        report = evaluate_countbench(model, tokenizer, preprocess, bench_file, device=cfg.device)
        tasks = zeroshot_by_task(model, tokenizer, inputs, labels, cfg.device)
        return {"count_accuracy": report.accuracy, "zeroshot_accuracy": float(np.mean(list(tasks.values()))),
                "zeroshot_by_task": tasks, "scored": report.scored, "missing": report.missing}

    rows = []
    for alpha in cfg.alphas:
        rows += wise_ft_curve(base, base_state, finetuned_state, [alpha], evaluate, echo)
        if cfg.save_checkpoints:
            export_checkpoint(base, out / "checkpoints" / f"wise_ft_{alpha:.2f}.pt")
    title = f"WiSE-FT: {Path(cfg.finetuned).name} over {Path(cfg.base).name}"
    paths = write_curve(rows, out, title, {"base": cfg.base, "finetuned": cfg.finetuned, "arch": cfg.arch,
                                           "benchmark": str(bench_file), "seed": cfg.seed})
    echo(format_markdown(rows))
    echo(f"[wise-ft] {len(rows)} alphas in {time.perf_counter() - tic:.0f}s; table {paths['md']}, plot {paths['png']}")
    return {"rows": rows, **paths}
