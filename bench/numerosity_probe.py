"""How much count a model's image embedding already holds: a linear probe of the count (2..10).

The probe is a softmax regression on the L2-normalised image embeddings of fresh CountWorld scenes
(same-size objects, 64 px, counts drawn uniformly), fitted on the first 3,500 and scored on the
last 1,000. Each model is probed beside the same architecture at its random initialisation, which
reads numerosity from pixel statistics alone (how much of the image the objects cover). A base that
probes well above that holds count features that plain L_clip fine-tuning can map number words onto.

    .venv/bin/python bench/numerosity_probe.py --out bench/results/numerosity_probe.json
    .venv/bin/python bench/numerosity_probe.py --model runs/experiment/checkpoints/control.pt --model countworld
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F


def embeddings(pretrained: str | None, images: np.ndarray, arch: str) -> torch.Tensor:
    from countclip.model import ModelConfig, create_model

    torch.manual_seed(0)  # the random-init row: the same weights every run
    model, preprocess, _ = create_model(ModelConfig(arch=arch, pretrained=pretrained))
    model.eval()
    inputs = preprocess.normalize(images)
    with torch.no_grad():
        return torch.cat([model.encode_image(inputs[i:i + 500], normalize=True) for i in range(0, len(inputs), 500)])


def probe(features: torch.Tensor, labels: torch.Tensor, train: int, steps: int = 1500) -> dict[str, float]:
    """Held-out accuracy and within-one accuracy of a softmax regression fitted on the first ``train`` rows."""
    torch.manual_seed(0)
    mean, std = features[:train].mean(0), features[:train].std(0) + 1e-6
    x = (features - mean) / std
    linear = torch.nn.Linear(x.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(linear(x[:train]), labels[:train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = linear(x[train:]).argmax(1)
    error = (predicted - labels[train:]).abs()
    return {"accuracy": round(float((error == 0).float().mean()), 4), "within_one": round(float((error <= 1).float().mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", default=None,
                        help="pretrained alias or checkpoint (repeatable; default: countworld, the shipped base)")
    parser.add_argument("--arch", default="countclip-tiny")
    parser.add_argument("--images", type=int, default=4500, help="scenes; the last 1,000 are held out")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.images <= 1000:
        parser.error("--images must be above 1000 (the last 1,000 are held out)")
    from countclip.environment import configure_environment
    from countclip.world.scenes import render, sample_scene

    configure_environment()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    counts = rng.integers(2, 11, size=args.images)
    images = np.stack([render(sample_scene(rng, int(c), same_size=True), 64) for c in counts])
    labels = torch.from_numpy(counts - 2)
    results = {"images": args.images, "held_out": 1000, "seed": args.seed, "chance": round(1 / 9, 4), "models": {}}
    for name in [*(args.model or ["countworld"]), None]:
        row = probe(embeddings(name, images, args.arch), labels, args.images - 1000)
        results["models"][name or f"{args.arch} (random init)"] = row
        print(f"{name or 'random init':<40} count probe {row['accuracy']:.1%} (within one: {row['within_one']:.1%})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
