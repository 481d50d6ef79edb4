"""The evaluate job: CountBench protocol, zero-shot accuracy kept, count-aware retrieval, then the
MLflow pyfunc model, its registration and (only if it is better) the ``champion`` alias.

    ray job submit --working-dir . -- python ray_jobs/evaluate.py --config configs/eval.yaml
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from countclip import storage, tracking
from countclip.config import ConfigBase, require
from countclip.data.fetch import FetchConfig, ImageFetcher
from countclip.evaluate import (
    cached_image_name,
    evaluate_countbench,
    find_image,
    load_countbench,
    open_benchmark_image,
    retrieval_metrics,
    save_confusion_png,
    wds_layout,
    zeroshot_imagefolder,
    zeroshot_wds,
)
from countclip.export import model_config, write_open_clip_folder
from countclip.model import ModelConfig, create_model, export_checkpoint, image_size, open_clip_name
from countclip.numbers import parse_caption
from countclip.tracking import TrackingConfig
from countclip.wiseft import check_alpha, interpolate
from countclip.world.files import png_bytes
from countclip.world.scenes import render, sample_scene
from countclip.world.sets import zeroshot_by_task, zeroshot_set


@dataclass
class RegisterConfig(ConfigBase):
    name: str | None = "countclip"
    """Registered model name; null logs the model to the run without registering it."""
    alias: str = "champion"
    """Alias moved to the new version only when it is better (see zeroshot_tolerance)."""
    zeroshot_tolerance: float = 0.03
    """Largest zero-shot accuracy drop (fraction) a better counter may have and still be promoted."""
    allow_image_paths: bool = False
    """Log the model for batch scoring on trusted hosts: it then also reads `image_path` rows from the
    disk it runs on. Off, it takes encoded image bytes only (what a served model must do)."""

    def __post_init__(self) -> None:
        require(0 <= self.zeroshot_tolerance <= 1, "register.zeroshot_tolerance must be in [0, 1]")


@dataclass
class WiseFTBlend(ConfigBase):
    base: str = ""
    """The original model the fine-tuned one (model.pretrained) is interpolated with: checkpoint or tag."""
    alpha: float = 0.5
    """Weight of the fine-tuned model in [0, 1] (countclip wise-ft measures the trade-off per alpha)."""

    def __post_init__(self) -> None:
        require(bool(self.base), "wise_ft.base must name the original model (checkpoint or pretrained tag)")
        self.alpha = check_alpha(self.alpha)


@dataclass
class EvalJobConfig(ConfigBase):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to evaluate: arch plus a checkpoint (local, s3://) or pretrained tag."""
    baseline: ModelConfig | None = None
    """A second model (e.g. the base before fine-tuning) measured side by side in retrieval."""
    countbench: str = "runs/experiment/benchmark/countworld_bench.json"
    """A CountBench-format JSON (image_url, text, number)."""
    images: str | None = None
    """Folder or s3:// prefix holding the benchmark images (by relative path, or named by the sha1 of
    their URL as the fetch cache writes them); null: beside the JSON file."""
    fetch_missing: bool = False
    """Download the images not found locally through the fetch stage into the cache folder."""
    fetch: FetchConfig = field(default_factory=FetchConfig)
    cache: str = "runs/eval-cache"
    """Local folder for images copied from S3 or fetched from their URLs."""
    countworld_zeroshot: bool = True
    """Zero-shot accuracy on CountWorld's classes (shape, colour, background)."""
    zeroshot_folders: list[str] = field(default_factory=list)
    """ImageFolder-style datasets (e.g. a CIFAR-10 or ImageNet validation folder) for zero-shot accuracy."""
    zeroshot_wds: list[str] = field(default_factory=list)
    """Classification sets in CLIP_benchmark's webdataset layout (a wds/<name> folder: test/*.tar,
    classnames.txt, zeroshot_classification_templates.txt), scored on their own classes and templates."""
    retrieval_k: int = 10
    """k of recall@k and count precision@k over the benchmark images."""
    output: str = "runs/eval"
    """Report, confusion matrix PNG, and the model as an open_clip folder (open_clip/, with a model card
    holding these figures; it loads as local-dir:<output>/open_clip)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    wise_ft: WiseFTBlend | None = None
    """Evaluate and register the WiSE-FT interpolation (1 - alpha) * base + alpha * model instead of the
    model itself; the blended checkpoint is written to <output>/model_wise_ft.pt. null: the model as is."""

    def __post_init__(self) -> None:
        require(self.model.pretrained is not None, "model.pretrained must name the checkpoint to evaluate")
        require(self.retrieval_k > 0, "retrieval_k must be positive")


def gather_images(cfg: EvalJobConfig, entries: list[dict]) -> Path:
    """A local folder where ``evaluate.find_image`` finds every benchmark image there is."""
    bench_dir = storage.local_path(cfg.countbench).parent if not storage.is_s3(cfg.countbench) else None
    root = Path(cfg.images) if cfg.images and not storage.is_s3(cfg.images) else bench_dir
    if not (cfg.images and storage.is_s3(cfg.images)) and not cfg.fetch_missing:
        return root
    cache = Path(cfg.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if cfg.images and storage.is_s3(cfg.images):
        for uri in storage.list_objects(cfg.images):
            target = cache / uri[len(cfg.images.rstrip("/")) + 1 :]
            if not target.exists():
                storage.write_bytes(target, storage.read_bytes(uri))
        root = cache
    if cfg.fetch_missing:
        missing = [e["image_url"] for i, e in enumerate(entries)
                   if "://" in e["image_url"] and find_image(e["image_url"], root, i) is None
                   and find_image(e["image_url"], cache, i) is None]
        fetcher = ImageFetcher(cfg.fetch)
        with ThreadPoolExecutor(8) as pool:
            for url, result in zip(missing, pool.map(fetcher.fetch, missing)):
                if result.status == "ok":
                    storage.write_bytes(cache / f"{cached_image_name(url)}.jpg", result.image)
        if root != cache:  # images found in root stay there: link them into the cache view
            for i, e in enumerate(entries):
                found = find_image(e["image_url"], root, i) if root else None
                if found and "://" in e["image_url"]:
                    target = cache / f"{cached_image_name(e['image_url'])}{found.suffix}"
                    if not target.exists():
                        target.write_bytes(found.read_bytes())
        root = cache
    return root


def load_model(cfg: ModelConfig):
    """(model, preprocess, tokenizer) from a checkpoint, a pretrained tag, or a models:/ URI."""
    if tracking.is_model_uri(cfg.pretrained):
        predictor = tracking.load_count_predictor(cfg.pretrained)
        return predictor.model, predictor.preprocess, predictor.tokenizer
    return create_model(cfg)


def run_evaluation(cfg: EvalJobConfig, echo=print) -> dict:
    tic = time.perf_counter()
    tracking.quiet_mlflow()
    entries = load_countbench(cfg.countbench)  # a malformed file stops here, before anything is logged
    for folder in cfg.zeroshot_wds:
        wds_layout(folder)  # so does a zero-shot folder that is not one
    tracking.check_reachable(cfg.tracking)
    model, preprocess, tokenizer = load_model(cfg.model)
    if cfg.wise_ft is not None:  # the blend is what gets evaluated, exported and registered
        _blend(cfg, model, echo)
    root = gather_images(cfg, entries)
    report = evaluate_countbench(model, tokenizer, preprocess, cfg.countbench, root)
    if report.scored == 0:
        raise ValueError(f"none of the {len(entries)} benchmark images was found under {root}; nothing to evaluate")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    save_confusion_png(report.confusion, out / "confusion.png", f"count accuracy {report.accuracy:.1%} "
                       f"({report.scored} of {report.scored + report.missing} images)")
    results = {"countbench": report.to_dict(), "countbench_file": cfg.countbench}
    echo(f"[eval] CountBench protocol: accuracy {report.accuracy:.1%} over {report.scored} images, "
         f"{report.missing} missing, macro-F1 {report.macro_f1:.3f}")

    zeroshot = {}
    if cfg.countworld_zeroshot:
        images, labels = zeroshot_set(seed=12345, n=400, image_size=image_size(model), same_size=True)
        inputs = preprocess.normalize(images)
        zeroshot |= {f"countworld_{k}": v for k, v in zeroshot_by_task(model, tokenizer, inputs, labels, "cpu").items()}
    for folder in cfg.zeroshot_folders:
        zeroshot[f"folder_{Path(folder).name}"] = zeroshot_imagefolder(model, tokenizer, preprocess, folder)["accuracy"]
    for folder in cfg.zeroshot_wds:
        zeroshot[f"wds_{Path(folder).name}"] = zeroshot_wds(model, tokenizer, preprocess, folder)["accuracy"]
    results["zeroshot"] = zeroshot
    zeroshot_mean = float(np.mean(list(zeroshot.values()))) if zeroshot else float("nan")
    echo("[eval] zero-shot: " + ", ".join(f"{k} {v:.1%}" for k, v in zeroshot.items()))

    images, counts, nouns = _retrieval_set(entries, root, preprocess)
    if len(images):
        pixels = torch.stack(images)
        results["retrieval"] = {"model": retrieval_metrics(model, tokenizer, pixels, counts, nouns, cfg.retrieval_k)}
        if cfg.baseline is not None:
            base, _, base_tokenizer = load_model(cfg.baseline)
            results["retrieval"]["baseline"] = retrieval_metrics(base, base_tokenizer, pixels, counts, nouns, cfg.retrieval_k)
        echo("[eval] retrieval: " + json.dumps(results["retrieval"]))

    metrics = {"count_accuracy": report.accuracy, "zeroshot_accuracy": zeroshot_mean, "macro_f1": report.macro_f1,
               "images_scored": float(report.scored), "images_missing": float(report.missing)}
    if cfg.wise_ft is not None:  # logged with the metrics and tagged on the registered version
        metrics["wise_ft_alpha"] = cfg.wise_ft.alpha
    storage.write_text(out / "report.json", json.dumps(results | {"metrics": metrics}, indent=1))
    results["metrics"] = metrics
    folder = None
    if not tracking.is_model_uri(cfg.model.pretrained):  # a registered model already carries its folder
        name = open_clip_name(cfg.model)
        folder = write_open_clip_folder(model, out / "open_clip", model_config(name), cfg.model.arch,
                                        {k: v for k, v in metrics.items() if not k.startswith("images_")},
                                        source=cfg.model.pretrained)
        results["open_clip_folder"] = folder
    results["registry"] = _log_and_register(cfg, metrics, out, folder, echo)
    results["seconds"] = round(time.perf_counter() - tic, 1)
    return results


def _blend(cfg: EvalJobConfig, model, echo) -> Path:
    """Turn ``model`` into its WiSE-FT blend with cfg.wise_ft.base in place; return the exported file."""
    base, _, _ = load_model(cfg.model.replace(pretrained=cfg.wise_ft.base))
    model.load_state_dict(interpolate(base.state_dict(), model.state_dict(), cfg.wise_ft.alpha))
    path = Path(cfg.output) / "model_wise_ft.pt"
    export_checkpoint(model, path)
    echo(f"[eval] WiSE-FT alpha {cfg.wise_ft.alpha:g}: {cfg.model.pretrained} over {cfg.wise_ft.base} -> {path}")
    return path


def _retrieval_set(entries: list[dict], root: Path, preprocess):
    images, counts, nouns = [], [], []
    for i, entry in enumerate(entries):
        parsed = parse_caption(entry["text"])
        path = find_image(entry["image_url"], root, i)
        image = open_benchmark_image(path) if path and parsed and parsed.noun else None
        if image is not None:
            images.append(preprocess(image))
            counts.append(entry["number"])
            nouns.append(parsed.noun)
    return images, np.array(counts), nouns


def _log_and_register(cfg: EvalJobConfig, metrics: dict, out: Path, folder: str | None, echo) -> dict:
    if not cfg.tracking.enabled:
        return {}
    run_id = tracking.start_run(cfg.tracking, "evaluate", cfg.to_dict(), {"report.json": (out / "report.json").read_text()})
    tracking.log_metric_rows(cfg.tracking, run_id, [{"step": 0, **metrics}])
    tracking.log_file(cfg.tracking, run_id, out / "confusion.png")
    decision = {"run_id": run_id}
    if folder is not None:
        example = png_bytes(render(sample_scene(np.random.default_rng(0), 3), 64))
        model_uri = tracking.log_count_model(cfg.tracking, run_id, folder, example, cfg.register.allow_image_paths)
        decision["model_uri"] = model_uri
        if cfg.register.name:
            decision |= tracking.register_and_promote(cfg.tracking, model_uri, cfg.register.name, metrics,
                                                      cfg.register.alias, cfg.register.zeroshot_tolerance)
            echo(f"[eval] registered {cfg.register.name} v{decision['version']}: "
                 + ("promoted to " + cfg.register.alias if decision["promoted"] else "not promoted") + f" ({decision['reason']})")
    tracking.end_run(cfg.tracking, run_id)
    return decision
