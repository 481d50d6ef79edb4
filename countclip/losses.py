"""The training objective: L = L_clip + lambda * L_count (Paiss et al., ICCV 2023).

``clip_loss`` is CLIP's symmetric InfoNCE. Under torch.distributed it gathers features from every rank
with an autograd-aware all_gather, so each rank scores its own rows against the global batch
(``local_loss``), and gradient averaging across ranks yields exactly the single-process gradient.

``counting_loss`` is L_count: for each counting sample k with image i_k, true caption t_k and
counterfactual caption(s) t^cf_k (the same caption with another number word),

    L_count = -mean_k log( e^{s<i_k,t_k>} / (e^{s<i_k,t_k>} + sum_j e^{s<i_k,t^cf_kj>}) )

with s the exponentiated logit scale and <.,.> the dot product of L2-normalised features. One
counterfactual per sample is the paper's loss; all eight is "CountPlus" (ReScience reproduction).
Counterfactuals are hard negatives for L_count only, never added to the L_clip batch.

For SigLIP models the contrastive term is ``siglip_loss``: open_clip's own ``SigLipLoss`` (the
sigmoid pair loss with the model's learned logit bias; across ranks it passes text features from
neighbour to neighbour with gradients, as open_clip trains). L_count stays the two-way (or 1 + M-way)
softmax above, on the SigLIP model's scaled logits s<i,t> + b: the bias is the same for the true and
the counterfactual caption of an image, so it cancels and the term is exactly the paper's with the
model's own scale. We chose it over a sigmoid pair loss (-log sig(z_true) - log sig(-z_cf)) because
what counting needs, and what the CountBench protocol measures, is the ranking of the true count
above the others for the same image; the sigmoid form would also push each logit's absolute level,
which the SigLIP term already calibrates, and would make lambda mean something else for SigLIP runs.

``CountingContrastiveLoss`` returns the terms by name; the training loop sums them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

LambdaScheme = Literal["constant", "norm", "modal", "log"]
Contrastive = Literal["clip", "siglip"]


def gather_features(features: Tensor) -> tuple[Tensor, int]:
    """All ranks' features concatenated in rank order, with gradients flowing back to each rank.

    Returns (gathered (W*B, D), this rank's index). A no-op outside torch.distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, 0
    # torch.distributed.nn's all_gather is differentiable: backward sums each slice's gradient
    # back to the rank that owns it, which the plain dist.all_gather would drop.
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), dim=0), dist.get_rank()


def clip_loss(
    image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float, *, local_loss: bool = True
) -> Tensor:
    """Symmetric InfoNCE over the global batch.

    image_features, text_features: (B, D) L2-normalised, row k of each a matching pair on this rank.
    local_loss: score only this rank's rows against all columns (O(B * W*B) instead of (W*B)^2). The
    mean of the per-rank losses equals the single-process loss on the concatenated batch; with
    local_loss=False every rank computes that full loss itself.
    """
    if image_features.shape != text_features.shape:
        raise ValueError(f"image and text features differ in shape: {image_features.shape} vs {text_features.shape}")
    all_images, rank = gather_features(image_features)
    all_texts, _ = gather_features(text_features)
    batch = image_features.shape[0]
    if local_loss:
        logits_per_image = logit_scale * image_features @ all_texts.T  # (B, W*B)
        logits_per_text = logit_scale * text_features @ all_images.T  # (B, W*B)
        labels = torch.arange(batch, device=image_features.device) + rank * batch
    else:
        logits_per_image = logit_scale * all_images @ all_texts.T  # (W*B, W*B)
        logits_per_text = logits_per_image.T
        labels = torch.arange(all_images.shape[0], device=image_features.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def siglip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor) -> Tensor:
    """SigLIP's sigmoid loss, computed by open_clip's ``SigLipLoss`` (bidirectional neighbour exchange).

    image_features, text_features: (B, D) L2-normalised on this rank. Each rank scores its B images
    against every rank's texts and divides by B, so the mean over ranks equals the single-process
    loss on the concatenated batch, and averaged gradients equal the single-process gradient.
    """
    from open_clip.loss import SigLipLoss

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    return SigLipLoss(rank=rank, world_size=world)(image_features, text_features, logit_scale, logit_bias)


def counting_loss(
    image_features: Tensor,
    text_features: Tensor,
    cf_text_features: Tensor,
    logit_scale: Tensor | float,
    weights: Tensor | None = None,
) -> Tensor:
    """L_count over counting samples.

    image_features, text_features: (K, D) L2-normalised, K counting samples.
    cf_text_features: (K, D) one counterfactual each (the paper), or (K, M, D) for M of them
    (CountPlus: M = 8).
    weights: optional (K,) per-sample weights (lambda by count frequency); the result is their
    weighted mean. With K = 0 the loss is an exact zero still attached to the graph.
    """
    if cf_text_features.dim() == 2:
        cf_text_features = cf_text_features.unsqueeze(1)
    if image_features.shape[0] == 0:
        return (image_features.sum() + text_features.sum() + cf_text_features.sum()) * 0.0
    positive = logit_scale * (image_features * text_features).sum(-1, keepdim=True)  # (K, 1)
    negatives = logit_scale * torch.einsum("kd,kmd->km", image_features, cf_text_features)  # (K, M)
    logits = torch.cat([positive, negatives], dim=1)
    per_sample = -F.log_softmax(logits, dim=1)[:, 0]  # (K,)
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).sum() / weights.sum().clamp_min(1e-12)


def count_weights(histogram: Mapping[int, int], scheme: LambdaScheme) -> dict[int, float]:
    """Per-count multipliers of lambda from the training set's count frequencies.

    constant: 1 for every count. norm: inverse frequency scaled so that the counts' mean weight
    is 1. modal: n_max / n_c (the most frequent count keeps 1). log: 1 + ln(n_max / n_c), a
    gentler modal. Counts absent from the histogram get the largest weight of any present count.
    """
    counts = {c: n for c, n in histogram.items() if n > 0}
    if not counts:
        raise ValueError("count_weights needs a histogram with at least one non-zero count")
    n_max = max(counts.values())
    if scheme == "constant":
        weights = {c: 1.0 for c in counts}
    elif scheme == "norm":
        inverse = {c: 1.0 / n for c, n in counts.items()}
        mean = sum(inverse.values()) / len(inverse)
        weights = {c: w / mean for c, w in inverse.items()}
    elif scheme == "modal":
        weights = {c: n_max / n for c, n in counts.items()}
    elif scheme == "log":
        weights = {c: 1.0 + math.log(n_max / n) for c, n in counts.items()}
    else:
        raise ValueError(f"unknown lambda scheme {scheme!r}; use constant, norm, modal or log")
    top = max(weights.values())
    return {c: weights.get(c, top) for c in range(2, 11)}


class CountingContrastiveLoss(nn.Module):
    """The contrastive term (clip_loss or siglip_loss) over all samples plus lambda * L_count over the
    counting ones, as named terms."""

    def __init__(self, count_lambda: float, weights_by_count: Mapping[int, float] | None = None,
                 contrastive: Contrastive = "clip"):
        super().__init__()
        if contrastive not in ("clip", "siglip"):
            raise ValueError(f"unknown contrastive loss {contrastive!r}; use clip or siglip")
        self.count_lambda = count_lambda
        self.contrastive = contrastive
        table = torch.ones(11)
        for count, weight in (weights_by_count or {}).items():
            table[count] = weight
        self.register_buffer("weights_by_count", table, persistent=False)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        cf_text_features: Tensor,
        is_counting: Tensor,
        counts: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """image/text features (B, D); cf_text_features (K, D) or (K, M, D) for the K counting rows
        in batch order; is_counting (B,) bool; counts (B,) int; logit_bias: the SigLIP model's."""
        if self.contrastive == "siglip":
            if logit_bias is None:
                raise ValueError("loss.contrastive siglip needs the model's logit bias; this model has none")
            terms = {"siglip_loss": siglip_loss(image_features, text_features, logit_scale, logit_bias)}
        else:
            terms = {"clip_loss": clip_loss(image_features, text_features, logit_scale)}
        if self.count_lambda > 0:
            weights = self.weights_by_count[counts[is_counting]]
            terms["count_loss"] = self.count_lambda * counting_loss(
                image_features[is_counting], text_features[is_counting], cf_text_features, logit_scale, weights
            )
        return terms
