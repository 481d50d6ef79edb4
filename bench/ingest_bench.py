"""Training ingest: the train job's stream of a built dataset against a bare decode loop and the old
whole-dataset decode, at two dataset sizes.

    python bench/ingest_bench.py --rows 4000 16000 --image-size 224 --json bench/results/ingest_cpu.json

For each size it builds (or reuses) CountWorld shards in the layout the build writes (JPEG, longest side
384) and measures, in the same run:
- the stream: a Ray Train TorchTrainer with one worker on a local Ray with this machine's CPUs, whose
  step only consumes the batch: ``TrainingStream`` (Ray Data decode tasks: decode and the model's
  preprocess) as the train job runs it. peak_rss_mib is the training worker's (with its anonymous and
  shared-memory parts at the end: the object store's pages count once the worker reads them),
  first_step_s from the trainer's start to the first batch in hand, samples_per_s over the second half
  of the steps (the decode tasks run ahead during the first step, which takes seconds: the batches they
  buffered meanwhile come out at once, so a rate from the first steps measures the buffer, not the
  stream; samples_per_s_from_step_10 keeps that figure), worker_cpu_cores the training process's own
  CPU use over the second half (Ray Data's iterator and executor threads: what the consumer takes from
  the cores the decode tasks run on);
  with --with-builder the step also runs ``BatchBuilder`` (normalise, tokenise, draw counterfactuals:
  the work a training step does on its own CPU, on the GPU's host);
- the old path (a faithful copy of the removed ``load_training_set``: every row decoded in one thread
  into one array before step 1), in a fresh process: its peak RSS and time to the first step;
- bare_decode_samples_per_s: a multiprocessing pool on the same cores reading the same shard bytes and
  decoding + preprocessing to the same size, nothing else.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dataset_for(rows: int, cache: Path) -> str:
    from countclip.world.files import write_clean_dataset

    out = cache / f"countworld-{rows}-jpeg384"
    if not (out / "manifest.json").exists():
        write_clean_dataset(str(out), seed=rows, rows=rows, image_size=384, counting_share=0.4, image_format="jpeg")
    return str(out)


def stream_worker(config: dict) -> None:
    """One Ray Train worker: the real ingest, a step that only consumes the batch."""
    import numpy as np
    import open_clip
    import ray

    from countclip.data.batches import BatchBuilder, TrainingStream
    from countclip.environment import configure_environment
    from countclip.images import ImagePreprocess
    from countclip.train import TrainConfig

    configure_environment()
    cfg = TrainConfig.from_dict(config["train"])
    preprocess = ImagePreprocess({"size": (config["size"], config["size"]), "mean": open_clip.OPENAI_DATASET_MEAN,
                                  "std": open_clip.OPENAI_DATASET_STD, "interpolation": "bicubic",
                                  "resize_mode": "shortest", "fill_color": 0})
    stream = TrainingStream.for_training(config["dataset"], cfg, preprocess, backend="ray")
    builder = BatchBuilder(open_clip.get_tokenizer("ViT-B-32"), preprocess, cfg.loss.counterfactuals, cfg.seed)
    first, half = None, cfg.steps // 2
    times, pixels = [], []
    for step, rows in enumerate(stream.steps(0, cfg.steps)):
        assert rows.images.shape[0] == cfg.batch_size
        pixels.append(float(rows.images[:, ::16, ::16].mean()))  # the step reads the batch
        if config["with_builder"]:
            builder(rows, step)
        now = time.time()
        first = first or now
        times.append(now)
        if step == half:
            cpu_at_half = _cpu_seconds()
    warm = times[half:]
    worker_cores = (_cpu_seconds() - cpu_at_half) / (warm[-1] - warm[0])
    # Train V2 keeps only metrics reported with a checkpoint: the figures go to a file instead.
    Path(config["out"]).write_text(json.dumps({
        "first_step_s": first - config["start"], "samples_per_s": (len(warm) - 1) * cfg.batch_size / (warm[-1] - warm[0]),
        "samples_per_s_from_step_10": (len(times) - 11) * cfg.batch_size / (times[-1] - times[10]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **_rss_parts(),
        "mean_pixel": float(np.mean(pixels)), "worker_cpu_cores": worker_cores,
        "node": ray.get_runtime_context().get_node_id()}))


def _cpu_seconds() -> float:
    """CPU time of this process so far (the step, Ray Data's iterator and executor threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_parts() -> dict:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {f"{name.lower()}_mib": int(fields[name].split()[0]) / 1024 for name in ("RssAnon", "RssShmem") if name in fields}


def run_stream(dataset: str, size: int, steps: int, batch: int, decode_cpus: float, with_builder: bool) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from countclip.data.ingest import IngestConfig
    from countclip.train import LossConfig, TrainConfig

    train = TrainConfig(steps=steps, batch_size=batch, counting_fraction=0.4, seed=0,
                        loss=LossConfig(count_lambda=1.0, counterfactuals=3), data=IngestConfig(decode_cpus=decode_cpus))
    storage = tempfile.mkdtemp(prefix="ingest-bench-ray-")
    out = Path(storage) / "worker.json"
    trainer = TorchTrainer(
        stream_worker,
        train_loop_config={"train": train.to_dict(), "dataset": dataset, "size": size, "start": time.time(),
                           "out": str(out), "with_builder": with_builder},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.05}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="ingest", storage_path=storage),
    )
    trainer.fit()
    return json.loads(out.read_text())


OLD_PATH = r'''
import io, json, resource, sys, time
import numpy as np, pyarrow.parquet as pq
from PIL import Image
start = time.time()
dataset, size = sys.argv[1], int(sys.argv[2])
manifest = json.load(open(dataset + "/manifest.json"))
images, captions, counts = [], [], []
for shard in manifest["shards"]:  # the removed load_training_set: every row decoded before step 1
    table = pq.read_table(dataset + "/" + shard["path"], columns=["image", "caption", "caption_count", "kind"])
    for data, text, count, kind in zip(*(table.column(c).to_pylist() for c in table.column_names)):
        with Image.open(io.BytesIO(data)) as image:
            images.append(np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)))
        captions.append(text)
        counts.append(int(count) if kind == "counting" else 0)
images = np.stack(images)
print(json.dumps({"first_step_s": time.time() - start, "rows": len(images),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run_old_path(dataset: str, size: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", OLD_PATH, dataset, str(size)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _decode_shard(args: tuple[str, int]) -> int:
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    path, size = args
    table = pq.read_table(path, columns=["image"])
    for data in table.column("image").to_pylist():
        image = Image.open(io.BytesIO(data)).convert("RGB")
        scale = size / min(image.size)  # resize the shorter side to size, centre crop: the eval geometry
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        np.asarray(image.crop((left, top, left + size, top + size)))
    return table.num_rows


def run_bare_decode(dataset: str, size: int, processes: int) -> float:
    manifest = json.loads(Path(dataset, "manifest.json").read_text())
    shards = [(str(Path(dataset) / s["path"]), size) for s in manifest["shards"]]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_decode_shard, shards[:processes])  # warm the workers up
        tic = time.perf_counter()
        rows = sum(pool.map(_decode_shard, shards))
    return rows / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=400,
                        help="steps per run; the rate is taken over the second half (at least 40)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--decode-cpus", type=float, default=0.9,
                        help="CPUs each decode task reserves (0.9: two tasks beside the consuming worker on 2 CPUs)")
    parser.add_argument("--with-builder", action="store_true", help="the step also builds the Batch (normalise, tokenise)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "countclip-ingest-bench"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.steps < 40:
        parser.error("--steps must be at least 40: the rate is taken over the second half")

    import ray

    from countclip.environment import configure_environment

    configure_environment()
    cache = Path(args.cache)
    cpus = os.cpu_count() or 1
    datasets = {n: dataset_for(n, cache) for n in args.rows}
    results = {"image_size": args.image_size, "batch": args.batch, "steps": args.steps, "cpus": cpus,
               "with_builder": args.with_builder,
               "decode_cpus": args.decode_cpus, "runs": [], "old_path": []}
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    for n, dataset in datasets.items():
        run = {"rows": n, **run_stream(dataset, args.image_size, args.steps, args.batch, args.decode_cpus,
                                       args.with_builder)}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    ray.shutdown()
    for n, dataset in datasets.items():
        old = {"rows": n, **run_old_path(dataset, args.image_size)}
        results["old_path"].append(old)
        print("old path", json.dumps(old), flush=True)
    results["bare_decode_samples_per_s"] = run_bare_decode(datasets[args.rows[-1]], args.image_size, cpus)
    small, large = results["runs"][0], results["runs"][-1]
    results["ratios"] = {
        "peak_rss_large_vs_small": large["peak_rss_mib"] / small["peak_rss_mib"],
        "first_step_large_vs_small": large["first_step_s"] / small["first_step_s"],
        "stream_vs_bare_decode": large["samples_per_s"] / results["bare_decode_samples_per_s"],
        "old_peak_rss_large_vs_small": results["old_path"][-1]["peak_rss_mib"] / results["old_path"][0]["peak_rss_mib"],
        "old_first_step_large_vs_small": results["old_path"][-1]["first_step_s"] / results["old_path"][0]["first_step_s"],
    }
    print(json.dumps(results["ratios"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
