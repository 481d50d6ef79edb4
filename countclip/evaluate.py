"""Evaluation: the CountBench protocol, zero-shot classification, count-aware retrieval metrics.

CountBench protocol (Paiss et al.): for each image, the caption is rewritten with every number word
two..ten; the model predicts the count whose caption scores highest against the image. Accuracy is
over the images found; missing images are counted and reported, never silently dropped, so two runs
on different image sets are not compared by accident.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from countclip import storage
from countclip.config import excerpt, one_line
from countclip.images import ImageError, decode_image, read_image_file
from countclip.numbers import COUNTS, WORD_FOR_COUNT, caption_variants, count_prompt

REQUIRED_FIELDS = ("image_url", "text", "number")


@dataclass
class CountingReport:
    accuracy: float  # over scored images
    per_count_accuracy: dict[int, float]
    confusion: np.ndarray  # (9, 9) rows: true count 2..10, columns: predicted
    macro_f1: float
    scored: int
    missing: int  # entries whose image was not found or not readable
    skipped: dict[str, int] = field(default_factory=dict)  # other reasons an entry was not scored
    predictions: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "count_accuracy": self.accuracy,
            "per_count_accuracy": {str(k): v for k, v in self.per_count_accuracy.items()},
            "macro_f1": self.macro_f1,
            "scored": self.scored,
            "missing": self.missing,
            "skipped": self.skipped,
            "confusion": self.confusion.tolist(),
        }


def load_countbench(path: str | Path) -> list[dict]:
    """Read and validate a CountBench-format JSON list (fields image_url, text, number 2..10)."""
    try:
        entries = json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"benchmark file {path} does not exist") from None
    except storage.NotARegularFile:
        raise ValueError(f"benchmark file {path} is a folder or not a regular file; name the JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"benchmark file {path} is not valid JSON: {exc}") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise ValueError(f"benchmark file {path} is nested too deeply to be a CountBench file") from None
    if not isinstance(entries, list):
        raise ValueError(f"benchmark file {path} must hold a JSON list of entries")
    for i, entry in enumerate(entries):
        missing = [f for f in REQUIRED_FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise ValueError(f"benchmark file {path}: entry {i} lacks field(s) {missing}; each entry needs {list(REQUIRED_FIELDS)}")
        if not isinstance(entry["number"], int) or entry["number"] not in COUNTS:
            raise ValueError(f"benchmark file {path}: entry {i} has number {excerpt(entry['number'])}, expected an integer 2..10")
        if not isinstance(entry["text"], str) or not isinstance(entry["image_url"], str):
            raise ValueError(f"benchmark file {path}: entry {i} needs string image_url and text")
    return entries


def cached_image_name(url: str) -> str:
    """The file name under which a fetched benchmark image is cached (sha1 of the URL)."""
    return hashlib.sha1(url.encode()).hexdigest()[:20]


def find_image(url: str, root: Path | None, index: int) -> Path | None:
    """Local file of a benchmark entry: a local/relative path, or a cached download by URL hash or index."""
    if "://" not in url or url.startswith("file://"):
        path = storage.local_path(url)
        if not path.is_absolute() and root is not None:
            path = root / path
        return path if path.is_file() else None
    if root is None:
        return None
    for stem in (cached_image_name(url), f"{index:04d}", str(index)):
        hits = sorted(root.glob(stem + ".*"))
        if hits:
            return hits[0]
    return None


def benchmark_captions(text: str, number: int) -> dict[int, str] | None:
    """The nine protocol captions; falls back to replacing the first whole number word when the
    grammar does not accept the caption as a count (the benchmark's label is authoritative)."""
    try:
        return caption_variants(text, number)
    except ValueError:
        pass
    word = WORD_FOR_COUNT[number]
    match = re.search(rf"\b{word}\b", text, flags=re.IGNORECASE)
    if match is None:
        return None
    original = match.group(0)

    def styled(w: str) -> str:
        return w.upper() if original.isupper() else w.capitalize() if original[0].isupper() else w

    return {n: text[: match.start()] + styled(WORD_FOR_COUNT[n]) + text[match.end():] for n in COUNTS}


@torch.no_grad()
def predict_counts(model, tokenizer, images: torch.Tensor, variants: list[dict[int, str]],
                   device="cpu", batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(predicted counts (N,), probabilities (N, 9) over counts 2..10) by the CountBench protocol.

    images: (N, 3, H, W) preprocessed; variants: per image, the nine captions keyed by count.
    """
    model.eval()
    predictions, probabilities = [], []
    for start in range(0, len(images), batch_size):
        chunk = variants[start : start + batch_size]
        image_features = model.encode_image(images[start : start + batch_size].to(device), normalize=True)
        texts = [v[n] for v in chunk for n in COUNTS]
        text_features = model.encode_text(tokenizer(texts).to(device), normalize=True)
        text_features = text_features.view(len(chunk), len(COUNTS), -1)  # (b, 9, D)
        scale = model.logit_scale.exp().reshape(())
        logits = scale * torch.einsum("bd,bkd->bk", image_features, text_features)
        probabilities.append(logits.softmax(-1).float().cpu())
        predictions.append(logits.argmax(-1).cpu() + COUNTS[0])
    return torch.cat(predictions).numpy(), torch.cat(probabilities).numpy()


def counting_report(truth: np.ndarray, predicted: np.ndarray, missing: int = 0,
                    skipped: dict[str, int] | None = None) -> CountingReport:
    """Accuracy, per-count accuracy, macro-F1 and the confusion matrix over counts 2..10."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    k = len(COUNTS)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth - COUNTS[0], predicted - COUNTS[0]), 1)
    per_count = {c: float(confusion[i, i] / confusion[i].sum()) for i, c in enumerate(COUNTS) if confusion[i].sum()}
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros(k), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros(k), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = confusion.sum(1) > 0
    return CountingReport(
        accuracy=float((truth == predicted).mean()) if len(truth) else 0.0,
        per_count_accuracy=per_count,
        confusion=confusion,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        scored=len(truth),
        missing=missing,
        skipped=dict(skipped or {}),
        predictions=[int(p) for p in predicted],
    )


def evaluate_countbench(model, tokenizer, preprocess, bench_file: str | Path, image_root: str | Path | None = None,
                        device="cpu") -> CountingReport:
    """Run the protocol on a CountBench-format file; images under ``image_root`` (default: the
    file's folder). Missing or unreadable images are counted in ``missing``."""
    entries = load_countbench(bench_file)
    root = Path(image_root) if image_root else storage.local_path(bench_file).parent
    images, variants, truth, missing, skipped = [], [], [], 0, {}
    for i, entry in enumerate(entries):
        captions = benchmark_captions(entry["text"], entry["number"])
        if captions is None:
            skipped["no_number_word"] = skipped.get("no_number_word", 0) + 1
            continue
        path = find_image(entry["image_url"], root, i)
        image = open_benchmark_image(path) if path else None
        if image is None:
            missing += 1
            continue
        images.append(preprocess(image))
        variants.append(captions)
        truth.append(entry["number"])
    if not images:
        return counting_report(np.zeros(0, int), np.zeros(0, int), missing, skipped)
    predicted, _ = predict_counts(model, tokenizer, torch.stack(images), variants, device)
    return counting_report(np.array(truth), predicted, missing, skipped)


def open_benchmark_image(path: Path) -> Image.Image | None:
    """The RGB image at ``path``, or None when it is missing or unreadable (it is then counted)."""
    try:
        return read_image_file(path)
    except (OSError, ImageError):
        return None


@torch.no_grad()
def zeroshot_accuracy(model, tokenizer, images: torch.Tensor, labels: np.ndarray,
                      class_prompts: list[list[str]], device="cpu", batch_size: int = 256) -> float:
    """Top-1 accuracy of classifying images by the mean of each class's prompt embeddings."""
    model.eval()
    class_features = []
    for prompts in class_prompts:
        features = model.encode_text(tokenizer(prompts).to(device), normalize=True).mean(0)
        class_features.append(features / features.norm())
    classifier = torch.stack(class_features)  # (C, D)
    hits = 0
    for start in range(0, len(images), batch_size):
        features = model.encode_image(images[start : start + batch_size].to(device), normalize=True)
        predicted = (features @ classifier.T).argmax(-1).cpu().numpy()
        hits += int((predicted == labels[start : start + batch_size]).sum())
    return hits / len(images)


def save_confusion_png(confusion: np.ndarray, path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(COUNTS)), COUNTS)
    ax.set_yticks(range(len(COUNTS)), COUNTS)
    ax.set_xlabel("predicted count")
    ax.set_ylabel("true count")
    ax.set_title(title)
    for (i, j), n in np.ndenumerate(confusion):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                    color="white" if n > confusion.max() / 2 else "black")
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())


@torch.no_grad()
def retrieval_metrics(model, tokenizer, images: torch.Tensor, counts: np.ndarray, nouns: list[str],
                      k: int = 10, device="cpu") -> dict[str, float]:
    """Count-aware retrieval: one query "a photo of <N> <noun>" per (count, noun) present.

    recall@k: relevant images (that count and noun) in the top k, over min(k, relevant); count
    precision@k: the share of the top k holding the queried count (whatever the noun).
    """
    model.eval()
    features = torch.cat([model.encode_image(images[i : i + 256].to(device), normalize=True)
                          for i in range(0, len(images), 256)])  # (N, D)
    pairs = sorted({(int(c), n) for c, n in zip(counts, nouns)})
    queries = [count_prompt(c, n) for c, n in pairs]
    text = model.encode_text(tokenizer(queries).to(device), normalize=True)  # (Q, D)
    top = (text @ features.T).topk(min(k, len(images)), dim=1).indices.cpu().numpy()  # (Q, k)
    nouns_arr = np.asarray(nouns)
    recalls, precisions = [], []
    for (count, noun), hits in zip(pairs, top):
        relevant = (counts == count) & (nouns_arr == noun)
        recalls.append(relevant[hits].sum() / min(len(hits), relevant.sum()))
        precisions.append((counts[hits] == count).mean())
    return {f"recall@{k}": float(np.mean(recalls)), f"count_precision@{k}": float(np.mean(precisions)),
            "queries": len(queries)}


IMAGEFOLDER_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a photo of the {}.", "an image of a {}.")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def zeroshot_imagefolder(model, tokenizer, preprocess, root: str | Path, device="cpu", limit_per_class: int = 100) -> dict:
    """Zero-shot accuracy on an ImageFolder-style dataset (one sub-folder per class, folder names as
    class names, underscores as spaces), with CLIP's usual prompt templates."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise ValueError(f"{root} is not an ImageFolder-style dataset (no class sub-folders)")
    images, labels, skipped = [], [], 0
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit_per_class]
        for path in files:
            image = open_benchmark_image(path)
            if image is None:
                skipped += 1
                continue
            images.append(preprocess(image))
            labels.append(index)
    if not images:
        raise ValueError(f"{root} holds no readable images")
    prompts = [[t.format(c.replace("_", " ")) for t in IMAGEFOLDER_TEMPLATES] for c in classes]
    accuracy = zeroshot_accuracy(model, tokenizer, torch.stack(images), np.array(labels), prompts, device)
    return {"accuracy": accuracy, "classes": len(classes), "images": len(images), "unreadable": skipped}


def wds_layout(folder: str | Path, split: str = "test") -> tuple[list[str], list[str], int]:
    """(class names, templates, shard count) of a CLIP_benchmark webdataset folder; ValueError if it is none
    (the evaluate job checks this before any work)."""
    folder = Path(folder)
    try:
        classes = (folder / "classnames.txt").read_text().split("\n")
        templates = (folder / "zeroshot_classification_templates.txt").read_text().split("\n")
        shards = int((folder / split / "nshards.txt").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder} is not a CLIP_benchmark webdataset folder ({one_line(exc, 150)})") from None
    return [c.strip() for c in classes if c.strip()], [t.strip() for t in templates if t.strip()], shards


def zeroshot_wds(model, tokenizer, preprocess, folder: str | Path, split: str = "test", device="cpu") -> dict:
    """Zero-shot accuracy on a classification set in CLIP_benchmark's webdataset layout
    (``split/nshards.txt``, ``split/0.tar`` .. of ``<key>.<image ext>`` + ``<key>.cls``, ``classnames.txt``,
    ``zeroshot_classification_templates.txt`` with ``{c}``): the images, classes and templates
    ``clip_benchmark eval --dataset wds/<name>`` scores, read with the standard library's tarfile."""
    import tarfile

    folder = Path(folder)
    classes, templates, shards = wds_layout(folder, split)
    samples: dict[str, dict[str, bytes]] = {}
    for shard in range(shards):
        try:
            with tarfile.open(folder / split / f"{shard}.tar") as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        key, _, ext = member.name.partition(".")
                        samples.setdefault(key, {})[ext.lower()] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError) as exc:
            raise ValueError(f"{folder / split / f'{shard}.tar'} is not a readable tar ({one_line(str(exc), 150)})") from None
    images, labels, skipped = [], [], 0
    for key, sample in samples.items():
        data = next((sample[ext] for ext in ("webp", "png", "jpg", "jpeg") if ext in sample), None)
        label = sample.get("cls", b"").strip()
        if data is None or not label.isdigit() or int(label) >= len(classes):
            raise ValueError(f"{folder}: sample {excerpt(key)} lacks an image or a .cls label 0..{len(classes) - 1}")
        try:
            images.append(preprocess(decode_image(data)))
        except ImageError:  # unreadable images are counted and skipped, as in the other benchmarks
            skipped += 1
            continue
        labels.append(int(label))
    if not images:
        raise ValueError(f"{folder} holds no readable images")
    prompts = [[t.format(c=c) for t in templates] for c in classes]
    accuracy = zeroshot_accuracy(model, tokenizer, torch.stack(images), np.array(labels), prompts, device)
    return {"accuracy": accuracy, "classes": len(classes), "templates": len(templates), "images": len(images),
            "unreadable": skipped}
