"""YOLO verification: the verify stage inside Ray Data against a bare Ultralytics predict loop on the
same images, images/s at steady state, with 1 and 2 actors/CPUs.

    .venv/bin/python bench/verify_bench.py --images 512 --rounds 3 --out bench/results/verify_cpu.json

The Ray Data side runs the stage class the build uses (decode + predict + counting) in an actor pool;
steady state is timed from the first finished batch to the last. Two bare loops in this process are
its baselines: ``model.predict`` on the already-decoded arrays (predict alone), and the same loop
that first decodes the encoded images with PIL, as any loop over real image files must (the work the
stage has to do, without Ray Data). The three run interleaved for --rounds rounds, because this
shared machine's speed drifts by tens of percent from minute to minute; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def make_images(n: int, size: int):
    from countclip.world.files import png_bytes
    from countclip.world.scenes import render, sample_scene

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, int(rng.integers(2, 11)), shape="circle") for _ in range(n)]
    arrays = [render(s, size) for s in scenes]
    return arrays, [png_bytes(a) for a in arrays], [s.count for s in scenes]


def bare_loop(images, cfg, threads: int, decode: bool) -> float:
    """Images/s of a plain predict loop: on decoded RGB arrays, or (decode=True) on encoded bytes."""
    import torch

    from countclip.data.verify import YoloVerifier, decode_rgb

    torch.set_num_threads(threads)
    model = YoloVerifier(cfg).model
    prepare = (lambda item: decode_rgb(item)[..., ::-1]) if decode else (lambda item: item[..., ::-1])
    model.predict([prepare(item) for item in images[: cfg.batch_size]], imgsz=cfg.image_size, verbose=False)
    tic = time.perf_counter()
    for start in range(0, len(images), cfg.batch_size):
        model.predict([prepare(item) for item in images[start:start + cfg.batch_size]], imgsz=cfg.image_size,
                      conf=cfg.confidence, verbose=False)
    return len(images) / (time.perf_counter() - tic)


class ThreadedVerifier:
    def __init__(self, cfg, threads):
        import torch

        from countclip.data.verify import YoloVerifier

        torch.set_num_threads(threads)
        self.stage = YoloVerifier(cfg)

    def __call__(self, batch):
        return self.stage(batch)


def in_ray_data(encoded, counts, cfg, actors: int) -> float:
    """Steady-state images/s of the verify stage in an actor pool of `actors` (Ray must be up)."""
    import ray
    from ray.data import ActorPoolStrategy

    n = len(encoded)
    items = ray.data.from_items([{"image": e, "fetch_status": "ok", "caption_count": c, "noun": "circles"}
                                 for e, c in zip(encoded, counts)], override_num_blocks=max(1, n // cfg.batch_size))
    items = items.materialize()
    out = items.map_batches(ThreadedVerifier, fn_constructor_args=(cfg, 1), batch_format="numpy",
                            batch_size=cfg.batch_size, compute=ActorPoolStrategy(size=actors), num_cpus=1)
    first, rows_after_first = None, 0
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        now = time.perf_counter()
        if first is None:
            first = now
        else:
            rows_after_first += len(batch["verified"])
    return rows_after_first / (time.perf_counter() - first)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each loop; medians are reported")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import ray

    from countclip.data.verify import VerifyConfig
    from countclip.environment import configure_environment

    configure_environment()
    cfg = VerifyConfig(weights="countworld", image_size=args.size, batch_size=32, device="cpu")
    arrays, encoded, counts = make_images(args.images, args.size)
    results = {"images": args.images, "image_size": args.size, "rounds": args.rounds}
    for cpus in (1, 2):
        runs: dict[str, list[float]] = {"bare_predict": [], "bare_decode_predict": [], "ray_data_stage": []}
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            for _ in range(args.rounds):
                runs["bare_predict"].append(bare_loop(arrays, cfg, cpus, decode=False))
                runs["bare_decode_predict"].append(bare_loop(encoded, cfg, cpus, decode=True))
                runs["ray_data_stage"].append(in_ray_data(encoded, counts, cfg, cpus))
        finally:
            ray.shutdown()
        rate = {name: statistics.median(values) for name, values in runs.items()}
        stage = rate["ray_data_stage"]
        results[f"{cpus}cpu"] = {"images_per_s": runs, "median_images_per_s": rate,
                                 "ratio_to_bare_predict": stage / rate["bare_predict"],
                                 "ratio_to_bare_decode_predict": stage / rate["bare_decode_predict"]}
        print(f"{cpus} CPU: bare predict {rate['bare_predict']:.1f} img/s, bare decode+predict "
              f"{rate['bare_decode_predict']:.1f} img/s, Ray Data verify stage {stage:.1f} img/s: "
              f"{stage / rate['bare_predict']:.2f}x predict alone, {stage / rate['bare_decode_predict']:.2f}x "
              f"decode+predict", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
