"""The training loop: data -> forward -> named loss terms -> step -> log -> checkpoint.

One function, read top to bottom. It runs as-is in one process (the CountWorld experiment) and inside
each Ray Train worker, where the model arrives already wrapped by ``countclip.distributed`` and the
process group is up; ranks differ only in which slice of each global batch they take.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from countclip import checkpoint
from countclip.config import ConfigBase, ConfigError, require
from countclip.data.batches import BatchBuilder, TrainingStream, count_only_negatives
from countclip.data.ingest import IngestConfig
from countclip.distributed import mean_across_ranks, unwrap, world_size
from countclip.losses import Contrastive, CountingContrastiveLoss, LambdaScheme, count_weights

LN_100 = math.log(100)  # CLIP clamps the logit scale at 100 to keep training stable


@dataclass
class OptimConfig(ConfigBase):
    lr: float = 1e-3
    """Peak learning rate of AdamW, reached after warmup, then cosine-decayed to lr * min_lr_ratio."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on matrices only (not on gains, biases, embeddings, logit scale)."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas (CLIP's)."""
    eps: float = 1e-6
    """AdamW epsilon."""
    grad_clip_norm: float | None = 1.0
    """Clip the global gradient norm to this; null for no clipping."""

    def __post_init__(self) -> None:
        require(self.lr > 0, f"optim.lr must be positive, got {self.lr}")
        require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas must be two numbers in [0, 1)")


@dataclass
class LossConfig(ConfigBase):
    count_lambda: float = 1.0
    """lambda of L = L_clip + lambda * L_count; 0 trains with L_clip alone (the control)."""
    lambda_scheme: LambdaScheme = "constant"
    """Per-count multiplier of lambda from the training set's count frequencies: constant, norm, modal, log."""
    counterfactuals: int = 1
    """Counterfactual captions per counting sample: 1 (the paper) .. 8 (all others: CountPlus)."""
    contrastive: Contrastive = "clip"
    """The contrastive term: clip (softmax InfoNCE) or siglip (open_clip's SigLipLoss: sigmoid pairs with
    the model's logit bias, for SigLIP architectures). L_count is the same softmax term for both."""
    preserve_lambda: float = 0.0
    """Feature preservation (after LDIFS, Mukhoti et al. 2023): plus this lambda times the mean squared
    distance between the L2-normalised image embeddings of each batch's plain (non-counting) rows and
    those of the frozen model training started from, so that L_count adds count features without
    moving the image features the model had (its zero-shot knowledge); 0: off. Unsharded models only."""

    def __post_init__(self) -> None:
        require(self.count_lambda >= 0, f"loss.count_lambda must be >= 0, got {self.count_lambda}")
        require(self.preserve_lambda >= 0, f"loss.preserve_lambda must be >= 0, got {self.preserve_lambda}")
        require(1 <= self.counterfactuals <= 8, f"loss.counterfactuals must be in 1..8, got {self.counterfactuals}")


@dataclass
class TrainConfig(ConfigBase):
    """The training loop's settings; which model and data it runs on is the job's business."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    steps: int = 500
    """Optimizer steps."""
    batch_size: int = 64
    """Global batch size (all ranks together)."""
    counting_fraction: float | None = 0.25
    """Share of each batch that is counting rows (exactly round(batch_size * counting_fraction) per
    batch, the same share on every rank); null samples all rows alike as plain rows (pretraining)."""
    data: IngestConfig = field(default_factory=IngestConfig)
    """How the dataset is streamed in (decode tasks, prefetch, shuffle window, augmentation)."""
    seed: int = 0
    """Seeds model init order, batch order and counterfactual draws."""
    log_every: int = 25
    """Log metrics every N steps."""
    checkpoint_every: int = 0
    """Save a training checkpoint every N steps (0: only at the end, if checkpoint_dir is set)."""
    checkpoint_dir: str | None = None
    """Folder for training checkpoints; a run resumes from the newest complete one in it."""
    threads: int = 0
    """torch intra-op threads for CPU training; 0 leaves torch's default."""
    autocast_bf16: bool = False
    """Run the forward pass under bf16 autocast (fast on GPUs and on CPUs with AMX); losses stay fp32."""

    def __post_init__(self) -> None:
        require(self.steps > 0, f"steps must be positive, got {self.steps}")
        require(self.batch_size >= 2, f"batch_size must be at least 2 for a contrastive loss, got {self.batch_size}")
        if self.counting_fraction is not None:
            require(0 <= self.counting_fraction <= 1, f"counting_fraction must be in [0, 1], got {self.counting_fraction}")
            require(self.counting_fraction > 0 or self.loss.count_lambda == 0,
                    "counting_fraction is 0 but loss.count_lambda > 0: L_count would see no counting rows")
        else:
            require(self.loss.count_lambda == 0,
                    "counting_fraction is null (all rows plain) but loss.count_lambda > 0: set a counting_fraction")
        require(self.log_every > 0, f"log_every must be positive, got {self.log_every}")
        require(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


@dataclass
class TrainResult:
    steps: int
    history: list[dict[str, float]]  # one row per logged step
    count_only_negatives: float  # mean per counting row over the logged batches


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # Decay only matrices, as open_clip does: gains, biases, embeddings and logit_scale keep their scale.
    # Frozen parameters (everything but the adapters of a LoRA model) stay out of the optimizer.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim < 2 or "embedding" in name or "logit_scale" in name or "ln" in name or "bn" in name
        (no_decay if plain else decay).append(param)
    if not decay and not no_decay:
        raise ConfigError("the model has no trainable parameters")
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": cfg.weight_decay}]
    # fused: one kernel over all parameters (CPU and CUDA); the per-tensor loop costs ~40 ms a step here.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(
    cfg: TrainConfig,
    model: nn.Module,
    tokenizer,
    data: TrainingStream,
    *,
    log: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[Path, int, list[dict[str, float]]], None] | None = None,
    device: torch.device | str = "cpu",
    checkpoint_root: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` steps on ``data`` (this rank's stream of the dataset).

    Checkpoints go under ``checkpoint_root`` (default cfg.checkpoint_dir) every cfg.checkpoint_every
    steps and at the end; ``on_checkpoint(folder, step, rows)`` then receives the metric rows logged
    since the previous checkpoint, so a caller that publishes metrics only there publishes each step
    exactly once even across a crash and resume. The run resumes from ``resume_from``, else from the
    newest complete checkpoint under the root.
    """
    if (data.batch_size, data.counting_fraction, data.seed) != (cfg.batch_size, cfg.counting_fraction, cfg.seed):
        raise ValueError("the training stream was opened for another batch size, counting fraction or seed than "
                         "the training config's (open it with TrainingStream.for_training)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    histogram = data.histogram()
    weights = count_weights(histogram, cfg.loss.lambda_scheme) if any(histogram.values()) else None
    if cfg.loss.contrastive == "siglip" and getattr(unwrap(model), "logit_bias", None) is None:
        raise ConfigError("loss.contrastive siglip needs a model with a logit bias (a SigLIP architecture); "
                          "this model has none: use loss.contrastive=clip")
    loss_fn = CountingContrastiveLoss(cfg.loss.count_lambda, weights, cfg.loss.contrastive).to(device)
    builder = BatchBuilder(tokenizer, data.preprocess, cfg.loss.counterfactuals, cfg.seed)
    teacher = frozen_image_tower(model) if cfg.loss.preserve_lambda > 0 else None  # before a resume loads

    root = checkpoint_root or cfg.checkpoint_dir
    if resume_from is None and root:
        resume_from = checkpoint.latest(root)
    start = checkpoint.load(resume_from, model, optimizer, scheduler)["step"] if resume_from else 0

    history, negatives, unpublished = [], [], []
    model.train()
    tic, seen = time.perf_counter(), 0
    for step, rows in zip(range(start, cfg.steps), data.steps(start, cfg.steps)):
        batch = builder(rows, step, device)

        # One forward for true and counterfactual captions: FSDP only hooks the module's forward.
        n_cf = batch.cf_tokens.shape[0] * batch.cf_tokens.shape[1]
        texts = torch.cat([batch.tokens, batch.cf_tokens.flatten(0, 1)])
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            # SigLIP models return their logit bias as a fourth output.
            image_features, all_text_features, logit_scale, *logit_bias = model(batch.images, texts)
        image_features, all_text_features = image_features.float(), all_text_features.float()
        text_features = all_text_features[: len(batch.tokens)]  # (B, D), L2-normalised
        cf_features = all_text_features[len(batch.tokens):].view(*batch.cf_tokens.shape[:2], text_features.shape[-1])  # (K, M, D)
        terms = loss_fn(image_features, text_features, cf_features, batch.is_counting, batch.counts, logit_scale,
                        *logit_bias)
        plain = ~batch.is_counting
        if teacher is not None and bool(plain.any()):
            with torch.no_grad():
                start_features = F.normalize(teacher(batch.images[plain]).float(), dim=-1)
            distance = (image_features[plain] - start_features).pow(2).sum(-1).mean()
            terms["preserve_loss"] = cfg.loss.preserve_lambda * distance
        loss = sum(terms.values())

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
            if cfg.optim.grad_clip_norm else torch.tensor(0.0)
        )
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            clamp_logit_scale(model)
        seen += len(rows.captions) * world_size()

        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            elapsed, tic = time.perf_counter() - tic, time.perf_counter()
            row = {name: float(mean_across_ranks(value)) for name, value in terms.items()}
            row |= {
                "loss": float(mean_across_ranks(loss)),
                "lr": scheduler.get_last_lr()[0],
                "logit_scale": float(logit_scale.detach().reshape(-1)[0]),
                "grad_norm": float(grad_norm),
                "samples_per_s": seen / elapsed,
                "cf_captions": float(n_cf),
            }
            if logit_bias:
                row["logit_bias"] = float(logit_bias[0].detach().reshape(-1)[0])
            seen = 0
            negatives.append(count_only_negatives(rows.captions, rows.counts))
            history.append({"step": done, **row})
            unpublished.append(history[-1])
            if log:
                log(done, row)
        if root and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps):
            folder = checkpoint.save(checkpoint.folder_for(root, done), model, optimizer, scheduler, done)
            if on_checkpoint:
                on_checkpoint(folder, done, unpublished)
            unpublished = []
    return TrainResult(cfg.steps - start, history, float(np.mean(negatives)) if negatives else 0.0)


def frozen_image_tower(model: nn.Module) -> nn.Module:
    """A frozen copy of the model's image tower as it is now (loss.preserve_lambda's reference)."""
    inner = unwrap(model)
    if any(type(p).__name__ == "DTensor" for p in inner.parameters()):
        raise ConfigError("loss.preserve_lambda needs an unsharded model (one process or DDP); this one is "
                          "FSDP-sharded: set loss.preserve_lambda=0 or train with DDP")
    return copy.deepcopy(inner.visual).eval().requires_grad_(False)


def clamp_logit_scale(model: nn.Module) -> None:
    """Keep the learned temperature in [0, ln 100] (CLIP's clamp), in place."""
    for name, param in model.named_parameters():
        if name.endswith("logit_scale"):
            param.clamp_(0, LN_100)
