"""GPU checks for the device machine (one H200), as one script: results to --out as JSON.

1. FSDP2 on CUDA: ViT-B-32 trained by the project's own loop with ``distributed.shard_model`` under a
   1-rank NCCL process group -- bf16 mixed precision and fp32, against DDP and no wrapper: samples/s
   and peak GPU memory, and that fp32 FSDP's losses equal the unwrapped model's.
2. YOLO verification at 640 px: the verify stage (``YoloVerifier``, what each Ray Data actor runs:
   decode + predict + counting) against a bare Ultralytics predict loop on the same images, images/s.
3. The CountWorld base's pretraining (``countclip world pretrain-base``) on CUDA, a short recipe:
   seconds per step of each stage (what a full recipe would take there) and the card of the file.

    python bench/gpu_checks.py --out /tmp/gpu.json            # on the GPU machine
    python bench/gpu_checks.py --out /tmp/cpu.json --small    # a quick run of the same code on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def fsdp_checks(device: torch.device, small: bool, results: dict, save) -> None:
    import torch.distributed as dist

    from countclip.data.batches import TrainingStream
    from countclip.distributed import shard_model
    from countclip.model import ModelConfig, create_model
    from countclip.train import LossConfig, OptimConfig, TrainConfig, train
    from countclip.world.files import write_clean_dataset

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    arch, size = ("countclip-tiny", 64) if small else ("ViT-B-32", 224)
    batch, steps = (16, 4) if small else (256, 14)
    dataset = os.path.join(tempfile.mkdtemp(prefix="gpu-checks-"), "dataset")
    write_clean_dataset(dataset, seed=0, rows=batch * 4, image_size=size, counting_share=0.5)
    cfg = TrainConfig(steps=steps, batch_size=batch, counting_fraction=0.5, log_every=1, seed=0,
                      optim=OptimConfig(lr=1e-5, warmup_steps=2), loss=LossConfig(count_lambda=1.0))
    runs = {}
    for name, strategy, mixed in [("none", "none", False), ("fsdp_fp32", "fsdp", False),
                                  ("fsdp_bf16", "fsdp", True), ("ddp", "ddp", False)]:
        torch.manual_seed(0)
        model, preprocess, tokenizer = create_model(ModelConfig(arch=arch), device)
        model = shard_model(model, strategy, device, mixed_precision=mixed)
        data = TrainingStream.for_training(dataset, cfg, preprocess)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        history = train(cfg, model, tokenizer, data, device=device).history
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        warm = history[2:]  # the first steps include allocation and kernel selection
        runs[name] = {
            "losses": [round(h["loss"], 6) for h in history],
            "samples_per_s": float(np.mean([h["samples_per_s"] for h in warm])) if warm else None,
            "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "seconds": round(time.perf_counter() - tic, 1),
        }
        results["fsdp"] = {"arch": arch, "batch": batch, "image_size": size, "runs": runs}
        save()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref, fp32 = runs["none"]["losses"], runs["fsdp_fp32"]["losses"]
    results["fsdp"]["fp32_matches_unwrapped"] = bool(np.allclose(ref, fp32, rtol=2e-3, atol=1e-3))
    results["fsdp"]["bf16_first_loss_delta"] = abs(ref[0] - runs["fsdp_bf16"]["losses"][0])
    save()
    dist.destroy_process_group()


def yolo_checks(device: str, small: bool, results: dict, save) -> None:
    from countclip.data.verify import VerifyConfig, YoloVerifier
    from countclip.world.files import png_bytes
    from countclip.world.scenes import render, sample_scene

    size, n, batch = (128, 64, 16) if small else (640, 1024, 64)
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, int(rng.integers(2, 11)), shape="circle") for _ in range(n)]
    arrays = [render(s, size) for s in scenes]
    encoded = np.array([png_bytes(a) for a in arrays], dtype=object)
    cfg = VerifyConfig(weights="countworld", image_size=size, batch_size=batch, device=device,
                       half=device != "cpu")
    stage = YoloVerifier(cfg)
    model = stage.model

    def bare_loop() -> float:
        tic = time.perf_counter()
        for start in range(0, n, batch):
            model.predict([a[..., ::-1] for a in arrays[start:start + batch]], imgsz=size, conf=cfg.confidence,
                          device=stage.device, half=cfg.half, verbose=False)
        return n / (time.perf_counter() - tic)

    def stage_loop() -> float:
        tic = time.perf_counter()
        for start in range(0, n, 256):
            rows = slice(start, start + 256)
            m = len(encoded[rows])
            stage({"image": encoded[rows], "fetch_status": np.full(m, "ok", dtype=object),
                   "caption_count": np.array([s.count for s in scenes[rows]]),
                   "noun": np.full(m, "circles", dtype=object)})
        return n / (time.perf_counter() - tic)

    bare_loop()  # warm-up: CUDA context, cudnn autotuning
    measured = {"bare_predict_images_per_s": [bare_loop() for _ in range(2)],
                "verify_stage_images_per_s": [stage_loop() for _ in range(2)]}
    measured["stage_over_bare"] = max(measured["verify_stage_images_per_s"]) / max(measured["bare_predict_images_per_s"])
    results["yolo"] = {"device": stage.device, "image_size": size, "images": n, "batch": batch, **measured}
    save()


def base_checks(device: str, small: bool, results: dict, save) -> None:
    """A short run of the base recipe on ``device``: per-stage seconds per step, and the card's accuracies."""
    from countclip.world.base import BaseRecipe, pretrain_base

    steps = (2, 2, 2) if small else (300, 100, 100)
    recipe = BaseRecipe(sup_steps=steps[0], lit_steps=steps[1], clip_steps=steps[2], device=device,
                        batch=8 if small else 128)
    with tempfile.TemporaryDirectory() as out:
        path = pretrain_base(out, recipe, echo=lambda line: None)
        card = json.loads(path.with_suffix(".json").read_text())
    per_step = {stage: card["seconds"][stage] / n for stage, n in zip("ABC", steps)}
    results["base"] = {"steps": dict(zip("ABC", steps)), "seconds": card["seconds"], "seconds_per_step": per_step,
                       "accuracy": card["accuracy"],
                       "full_recipe_seconds_estimate": round(sum(per_step[s] * n for s, n in zip("ABC", (3000, 300, 500))))}
    save()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    from countclip.environment import configure_environment

    configure_environment()
    cuda = torch.cuda.is_available()
    results = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}

    def save() -> None:
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(json.dumps(results), flush=True)

    for name, check in (("yolo", lambda: yolo_checks("cuda:0" if cuda else "cpu", args.small, results, save)),
                        ("fsdp", lambda: fsdp_checks(torch.device("cuda:0" if cuda else "cpu"), args.small, results, save)),
                        ("base", lambda: base_checks("cuda:0" if cuda else "cpu", args.small, results, save))):
        try:
            check()
        except Exception as exc:  # one failed check must not hide the other's numbers
            results[f"{name}_error"] = repr(exc)
            save()


if __name__ == "__main__":
    main()
