"""Using a trained model: count objects in images, rank images for "N <noun>", and the MLflow pyfunc.

    predictor = CountPredictor.load("runs/experiment/checkpoints/countclip.pt", arch="countclip-tiny")
    predictor.count(["photo.jpg"], noun="dogs")  # -> [{"count": 3, "confidence": 0.81, "probabilities": {...}}]

The count follows the CountBench protocol: the nine captions "a photo of two <noun>" .. "ten <noun>"
are scored against the image and the best one wins; the softmax over them is the confidence.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from countclip.numbers import COUNTS, NUMBER_WORDS

WORD_FOR_COUNT = {n: w for w, n in NUMBER_WORDS.items()}
PROMPT = "a photo of {word} {noun}"


def count_prompts(noun: str) -> list[str]:
    """The nine captions for a noun (plural, as counts 2..10 take)."""
    noun = " ".join(str(noun).split())
    if not noun:
        raise ValueError("the noun to count is empty; give the plural of what to count, e.g. 'dogs'")
    return [PROMPT.format(word=WORD_FOR_COUNT[n], noun=noun) for n in COUNTS]


def open_image(item) -> Image.Image:
    """An RGB image from bytes, a path, or a PIL image; a clear ValueError for anything else."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    try:
        if isinstance(item, (bytes, bytearray, memoryview)):
            with Image.open(io.BytesIO(bytes(item))) as image:
                return image.convert("RGB")
        if isinstance(item, (str, Path)):
            with Image.open(item) as image:
                return image.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"image {item} does not exist") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        name = item if isinstance(item, (str, Path)) else f"<{len(item)} bytes>"
        raise ValueError(f"{name} is not a readable image: {exc}") from None
    raise ValueError(f"an image must be bytes, a path or a PIL image, got {type(item).__name__}")


@dataclass
class CountPredictor:
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: str = "cpu"

    @classmethod
    def load(cls, checkpoint: str, arch: str, device: str = "cpu") -> CountPredictor:
        from countclip.model import ModelConfig, create_model

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
