"""The stand-in for a pretrained CLIP: a countclip-tiny that knows CountWorld's objects, not their counts.

A real CLIP knows dogs and not how many; this base knows CountWorld's shapes, object colours and
backgrounds (zero-shot) and counts at chance. It is trained once (``countclip world pretrain-base``)
and shipped in ``countclip/weights`` like the CountWorld YOLO; ``model.pretrained: countworld`` loads it.

The recipe is staged, LiT-style (Zhai et al., 2022: a supervised image tower, then a text tower aligned
to it contrastively), on freshly rendered count-free scenes, a new batch every step:

  A. the image tower alone: linear heads on its embedding predict the scene's shape, object colour and
     background (cross-entropy). No count label anywhere.
  B. L_clip on count-free captions with the image tower locked: the text tower learns to name what the
     image tower already tells apart.
  C. L_clip with every weight free, plus ``aux`` x the heads' loss so the shape features are kept, at a
     lower learning rate.

Why not L_clip alone from random weights: on this world a 2-layer ViT stayed at 16-31 % zero-shot shape
accuracy (chance 12.5 %) after 300-1200 steps in every variant tried (docs/experiment.md): colour and
background explain most of a batch, and the shape signal is too weak to be picked up within a CPU
budget. The heads are dropped at the end; the export is a stock open_clip checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_safetensors
from torch.nn import functional as F

from countclip import storage
from countclip.config import ConfigBase, require
from countclip.data.batches import BatchBuilder, StepRows
from countclip.evaluate import evaluate_countbench
from countclip.losses import clip_loss
from countclip.model import SHIPPED, ModelConfig, create_model, export_state_dict
from countclip.train import OptimConfig, build_optimizer, build_scheduler, clamp_logit_scale
from countclip.world.files import write_benchmark
from countclip.world.scenes import ZEROSHOT_TASKS, CaptionStyle, caption, render, sample_scene
from countclip.world.sets import zeroshot_by_task, zeroshot_set

SHIPPED_ARCH, SHIPPED_BASE = SHIPPED["countworld"]
SHIPPED_NAME = SHIPPED_BASE.name
# The held-out sets of the card (seeds apart from any experiment's).
EVAL_SEEDS = {"benchmark": 3, "zeroshot": 4}


@dataclass
class BaseRecipe(ConfigBase):
    """How ``pretrain_base`` trains the stand-in (defaults: the shipped base)."""

    arch: str = SHIPPED_ARCH
    """open_clip architecture of the base."""
    image_size: int = 64
    """Side of the rendered scenes (the model's input size)."""
    batch: int = 128
    """Scenes per step (rendered fresh every step)."""
    sup_steps: int = 3000
    """Stage A: supervised image-tower steps."""
    sup_lr: float = 1e-3
    """Stage A: AdamW learning rate (cosine after 50 warmup steps)."""
    lit_steps: int = 300
    """Stage B: L_clip steps with the image tower locked."""
    lit_lr: float = 1e-3
    """Stage B: learning rate."""
    clip_steps: int = 500
    """Stage C: L_clip steps with everything free."""
    clip_lr: float = 5e-4
    """Stage C: learning rate."""
    aux: float = 0.5
    """Stage C: weight of the heads' cross-entropy beside L_clip."""
    numerosity_words: bool = True
    """Stage B and C captions use vague numerosity words matching the scene ("a few", "many"), as web
    captions do (the shipped base); false: quantity words that say nothing of the count ("some")."""
    seed: int = 0
    """Seeds the initial weights and the scenes."""
    threads: int = 2
    """torch CPU threads."""
    device: str = "cpu"
    """Where to train: cpu, cuda or cuda:N (the card's accuracies are measured on CPU, on the written file)."""

    def __post_init__(self) -> None:
        require(self.device == "cpu" or self.device.startswith("cuda"), f"device must be cpu or cuda[:N], got {self.device!r}")
        for name in ("batch", "sup_steps", "image_size", "threads"):
            require(getattr(self, name) > 0, f"{name} must be positive")
        for name in ("lit_steps", "clip_steps", "aux"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0")
        for name in ("sup_lr", "lit_lr", "clip_lr"):
            require(getattr(self, name) > 0, f"{name} must be positive")


def evaluate_base(model, tokenizer, preprocess, folder: Path, image_size: int) -> dict[str, float]:
    """Zero-shot accuracy per task (800 held-out scenes) and CountBench-protocol counting accuracy
    (450 scenes) of a base, on the world the shipped base was trained for."""
    bench = folder / "benchmark" / "countworld_bench.json"
    if not bench.is_file():
        write_benchmark(folder / "benchmark", seed=EVAL_SEEDS["benchmark"], per_count=50, image_size=image_size,
                        same_size=True)
    images, labels = zeroshot_set(EVAL_SEEDS["zeroshot"], 800, image_size, same_size=True)
    zeroshot = zeroshot_by_task(model, tokenizer, preprocess.normalize(images), labels, "cpu")
    count = evaluate_countbench(model, tokenizer, preprocess, bench).accuracy
    model.train()
    return {**{task: round(v, 4) for task, v in zeroshot.items()}, "count": round(count, 4)}


class _Scenes:
    """A fresh batch of count-free scenes per call: StepRows and the three label tensors."""

    def __init__(self, rng: np.random.Generator, size: int, style: CaptionStyle):
        self.rng, self.size, self.style = rng, size, style

    def __call__(self, n: int) -> tuple[StepRows, dict[str, torch.Tensor]]:
        scenes = [sample_scene(self.rng, int(self.rng.integers(1, 11)), same_size=True) for _ in range(n)]
        images = np.stack([render(s, self.size) for s in scenes])
        captions = [caption(s, self.rng, with_count=False, style=self.style) for s in scenes]
        labels = {t: torch.tensor([c.index(getattr(s, t)) for s in scenes]) for t, c in ZEROSHOT_TASKS.items()}
        return StepRows(images, captions, np.zeros(n, np.int64), np.arange(n)), labels


def pretrain_base(out_dir: str | Path, recipe: BaseRecipe | None = None, echo: Callable[[str], None] = print) -> Path:
    """Train the base (stages A, B, C), write ``<out_dir>/<SHIPPED_NAME>`` (fp16 safetensors) and its
    card ``.json`` (recipe, command, seconds, measured accuracies of the written file, sha256)."""
    out_dir, recipe = Path(out_dir), recipe or BaseRecipe()
    torch.set_num_threads(recipe.threads)
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    device = torch.device(recipe.device)
    model, preprocess, tokenizer = create_model(ModelConfig(arch=recipe.arch), device)
    width = model.text_projection.shape[1]
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(width, len(c)) for t, c in ZEROSHOT_TASKS.items()}).to(device)
    builder = BatchBuilder(tokenizer, preprocess, 1, recipe.seed)
    scenes = _Scenes(np.random.default_rng((recipe.seed, 1)), recipe.image_size,
                     CaptionStyle(numerosity=recipe.numerosity_words))

    def heads_loss(raw: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(F.cross_entropy(heads[t](raw), y.to(device)) for t, y in labels.items()) / len(labels)

    seconds = {}
    # A: the image tower learns the world's attributes from labels (no counts).
    sup = OptimConfig(lr=recipe.sup_lr, warmup_steps=50)
    optimizer = torch.optim.AdamW([*model.visual.parameters(), *heads.parameters()], lr=recipe.sup_lr, weight_decay=0.1)
    scheduler = build_scheduler(optimizer, sup, recipe.sup_steps)
    model.train()
    tic = time.perf_counter()
    for step in range(recipe.sup_steps):
        rows, labels = scenes(recipe.batch)
        loss = heads_loss(model.encode_image(builder(rows, 0, device).images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % 250 == 0:
            echo(f"[base] A step {step + 1}/{recipe.sup_steps} heads_ce {float(loss.detach()):.3f}")
    seconds["A"] = time.perf_counter() - tic

    # B, C: L_clip on count-free captions, first with the image tower locked, then all free.
    for stage, steps, lr in (("B", recipe.lit_steps, recipe.lit_lr), ("C", recipe.clip_steps, recipe.clip_lr)):
        locked = stage == "B"
        for param in model.visual.parameters():
            param.requires_grad_(not locked)
        optim = OptimConfig(lr=lr, warmup_steps=min(50, steps // 5))
        optimizer = build_optimizer(model, optim)
        scheduler = build_scheduler(optimizer, optim, steps)
        head_optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
        tic = time.perf_counter()
        for step in range(steps):
            rows, labels = scenes(recipe.batch)
            batch = builder(rows, 0, device)
            with torch.set_grad_enabled(not locked):
                raw = model.encode_image(batch.images)  # (B, D) before normalisation
            loss = clip_loss(F.normalize(raw, dim=-1), model.encode_text(batch.tokens, normalize=True),
                             model.logit_scale.exp())
            if not locked and recipe.aux:
                loss = loss + recipe.aux * heads_loss(raw, labels)
            optimizer.zero_grad(set_to_none=True)
            head_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            if not locked and recipe.aux:
                head_optimizer.step()
            with torch.no_grad():
                clamp_logit_scale(model)
            if (step + 1) % 100 == 0:
                echo(f"[base] {stage} step {step + 1}/{steps} loss {float(loss.detach()):.3f}")
        seconds[stage] = time.perf_counter() - tic
    for param in model.parameters():
        param.requires_grad_(True)

    path = out_dir / SHIPPED_NAME
    # fp16 safetensors: half the size of fp32 in the repo, and a format that cannot carry code.
    storage.write_bytes(path, save_safetensors({k: v.half().cpu().contiguous() for k, v in export_state_dict(model).items()}))
    # The card measures the file as shipped (fp16), loaded the way every user loads it.
    shipped, shipped_pre, shipped_tok = create_model(ModelConfig(arch=recipe.arch, pretrained=str(path)))
    scores = evaluate_base(shipped, shipped_tok, shipped_pre, out_dir / "eval", recipe.image_size)
    card = {
        "command": f"countclip world pretrain-base --out DIR --seed {recipe.seed} --threads {recipe.threads} " + " ".join(
            f"{k}={v}" for k, v in recipe.to_dict().items()
            if k not in ("seed", "threads") and v != getattr(BaseRecipe(), k)),
        "recipe": recipe.to_dict(), "world": "CountWorld, count-free captions "
        f"({'numerosity words' if recipe.numerosity_words else 'no numerosity words'}), same-size objects",
        "seconds": {k: round(v) for k, v in seconds.items()} | {"total": round(time.perf_counter() - t0)},
        "accuracy": scores, "chance": {"shape": 1 / 8, "colour": 1 / 8, "background": 1 / 8, "count": 1 / 9},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    storage.write_text(path.with_suffix(".json"), json.dumps(card, indent=1) + "\n")
    echo(f"[base] {path}: zero-shot shape {scores['shape']:.1%}, colour {scores['colour']:.1%}, background "
         f"{scores['background']:.1%}; counting {scores['count']:.1%} (chance 11.1%); {card['seconds']['total']} s")
    return path
