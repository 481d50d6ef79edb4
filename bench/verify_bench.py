"""YOLO verification: the verify stage inside Ray Data against a bare Ultralytics predict loop on the
same images, images/s at steady state, with 1 and 2 actors/CPUs.

    .venv/bin/python bench/verify_bench.py --images 512 --out bench/results/verify_cpu.json

The Ray Data side runs the stage class the build uses (decode + predict + counting) in an actor pool;
steady state is timed from the first finished batch to the last.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def make_images(n: int, size: int):
    from countclip.world import render, sample_scene
    from countclip.world_files import png_bytes

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, int(rng.integers(2, 11)), shape="circle") for _ in range(n)]
    arrays = [render(s, size) for s in scenes]
    return arrays, [png_bytes(a) for a in arrays], [s.count for s in scenes]


def bare_loop(arrays, cfg, threads: int) -> float:
    import torch

    from countclip.data.verify import YoloVerifier

    torch.set_num_threads(threads)
    model = YoloVerifier(cfg).model
    model.predict([a[..., ::-1] for a in arrays[: cfg.batch_size]], imgsz=cfg.image_size, verbose=False)
    tic = time.perf_counter()
    for start in range(0, len(arrays), cfg.batch_size):
        model.predict([a[..., ::-1] for a in arrays[start:start + cfg.batch_size]], imgsz=cfg.image_size,
                      conf=cfg.confidence, verbose=False)
    return len(arrays) / (time.perf_counter() - tic)


class ThreadedVerifier:
    def __init__(self, cfg, threads):
        import torch

        from countclip.data.verify import YoloVerifier

        torch.set_num_threads(threads)
        self.stage = YoloVerifier(cfg)

    def __call__(self, batch):
        return self.stage(batch)


def in_ray_data(encoded, counts, cfg, actors: int) -> float:
    import ray
    from ray.data import ActorPoolStrategy

    ray.init(num_cpus=actors, include_dashboard=False, log_to_driver=False)
    try:
        n = len(encoded)
        items = ray.data.from_items([{"image": e, "fetch_status": "ok", "caption_count": c, "noun": "circles"}
                                     for e, c in zip(encoded, counts)], override_num_blocks=max(1, n // cfg.batch_size))
        items = items.materialize()
        out = items.map_batches(ThreadedVerifier, fn_constructor_args=(cfg, 1), batch_format="numpy",
                                batch_size=cfg.batch_size, compute=ActorPoolStrategy(size=actors), num_cpus=1)
        first, rows_after_first, seen = None, 0, 0
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                rows_after_first += len(batch["verified"])
            seen += len(batch["verified"])
        return rows_after_first / (time.perf_counter() - first)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from countclip.data.verify import VerifyConfig
    from countclip.environment import configure_environment

    configure_environment()
    cfg = VerifyConfig(weights="countworld", image_size=args.size, batch_size=32, device="cpu")
    arrays, encoded, counts = make_images(args.images, args.size)
    results = {"images": args.images, "image_size": args.size}
    for cpus in (1, 2):
        bare = bare_loop(arrays, cfg, cpus)
        ray_rate = in_ray_data(encoded, counts, cfg, cpus)
        results[f"{cpus}cpu"] = {"bare_images_per_s": bare, "ray_data_images_per_s": ray_rate, "ratio": ray_rate / bare}
        print(f"{cpus} CPU: bare predict {bare:.1f} img/s, Ray Data verify stage {ray_rate:.1f} img/s "
              f"({ray_rate / bare:.2f}x)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
