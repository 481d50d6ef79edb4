"""Using a trained model: count objects in images, and rank images for "N <noun>".

    predictor = load_predictor("runs/experiment/checkpoints/countclip.pt", arch="countclip-tiny")
    predictor = load_predictor("models:/countclip@champion")    # a registered model (MLflow)
    predictor = load_predictor("local-dir:runs/eval/open_clip")  # an open_clip folder (countclip export)
    predictor.count(["photo.jpg"], noun="dogs")  # -> [{"count": 3, "confidence": 0.81, "probabilities": {...}}]

The count follows the CountBench protocol: the nine captions "a photo of two <noun>" .. "ten <noun>"
are scored against the image and the best one wins; the softmax over them is the confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from countclip import tracking
from countclip.config import excerpt
from countclip.images import open_image
from countclip.model import ModelConfig, create_model
from countclip.numbers import COUNTS, count_prompt

MAX_NOUN_CHARS = 100
"""Longest noun accepted: the text tower reads a few dozen tokens anyway."""


def count_prompts(noun: str) -> list[str]:
    """The nine captions for a noun (plural, as counts 2..10 take)."""
    if not isinstance(noun, str):
        raise ValueError(f"the noun to count must be text, got {type(noun).__name__}")
    if any(not c.isprintable() and not c.isspace() for c in noun):
        raise ValueError(f"the noun to count holds control characters ({excerpt(noun, 60)}); give plain text, e.g. 'dogs'")
    noun = " ".join(noun.split())
    if not noun:
        raise ValueError("the noun to count is empty; give the plural of what to count, e.g. 'dogs'")
    if len(noun) > MAX_NOUN_CHARS:
        raise ValueError(f"the noun to count is {len(noun)} characters long; at most {MAX_NOUN_CHARS} are accepted")
    return [count_prompt(n, noun) for n in COUNTS]


@dataclass
class CountPredictor:
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: str = "cpu"

    @classmethod
    def load(cls, checkpoint: str, arch: str, device: str = "cpu") -> CountPredictor:
        model, preprocess, tokenizer = create_model(ModelConfig(arch=arch, pretrained=checkpoint), device)
        model.eval()
        return cls(model, preprocess, tokenizer, device)

    @torch.no_grad()
    def count(self, images: list, noun: str) -> list[dict]:
        prompts = count_prompts(noun)
        pixels = torch.stack([self.preprocess(open_image(item)) for item in images]).to(self.device)
        image_features = self.model.encode_image(pixels, normalize=True)  # (N, D)
        text_features = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True)  # (9, D)
        scale = self.model.logit_scale.exp().reshape(())
        probabilities = (scale * image_features @ text_features.T).softmax(-1).float().cpu().numpy()  # (N, 9)
        return [
            {"count": int(COUNTS[int(p.argmax())]), "confidence": float(p.max()),
             "probabilities": {int(c): float(v) for c, v in zip(COUNTS, p)}}
            for p in probabilities
        ]

    @torch.no_grad()
    def rank(self, images: list, query: str) -> np.ndarray:
        """Cosine similarity of each image to the query text, (N,)."""
        pixels = torch.stack([self.preprocess(open_image(item)) for item in images]).to(self.device)
        image_features = self.model.encode_image(pixels, normalize=True)
        text_features = self.model.encode_text(self.tokenizer([query]).to(self.device), normalize=True)
        return (image_features @ text_features.T)[:, 0].float().cpu().numpy()


def load_predictor(model: str, arch: str = "countclip-tiny", device: str = "cpu") -> CountPredictor:
    """A predictor from a checkpoint (local or s3://), an open_clip folder (``local-dir:DIR``, ``hf-hub:``),
    a pretrained tag, or a registered MLflow model
    (``models:/name@alias``, ``runs:/id/model``: its own architecture is used, ``arch`` is ignored)."""
    if tracking.is_model_uri(model):
        return tracking.load_count_predictor(model)
    return CountPredictor.load(model, arch, device)
