"""FSDP2 against DDP against one process on CPU: per-worker peak memory and samples/s at the same
global batch, same run.

    .venv/bin/python bench/fsdp_bench.py --arch ViT-B-32 --batch 32 --steps 4 --out bench/results/fsdp_cpu.json

Each variant runs in fresh processes (2 gloo workers of 1 thread each, or 1 process of 2 threads),
so peak RSS (ru_maxrss) is the variant's own. Parameters + gradients + AdamW state of ViT-B-32 are
~2.4 GB per replica; FSDP2 should hold about half of that per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def worker(rank: int, world: int, strategy: str, args, port: int, queue) -> None:
    import torch.distributed as dist

    from countclip.data.batches import TrainingStream
    from countclip.distributed import shard_model
    from countclip.environment import configure_environment
    from countclip.model import ModelConfig, count_parameters, create_model
    from countclip.train import LossConfig, OptimConfig, TrainConfig, train
    from countclip.world.files import write_clean_dataset

    configure_environment()
    torch.set_num_threads(2 // world)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model, preprocess, tokenizer = create_model(ModelConfig(arch=args.arch))
    params = count_parameters(model)
    model = shard_model(model, strategy, torch.device("cpu"))
    dataset = os.path.join(args.data_dir, "dataset")
    if rank == 0 and not os.path.exists(os.path.join(dataset, "manifest.json")):
        write_clean_dataset(dataset, seed=0, rows=args.batch * 4, image_size=preprocess.size[0], counting_share=0.5)
    if world > 1:
        dist.barrier()
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, counting_fraction=0.5, log_every=1,
                      optim=OptimConfig(lr=1e-5, warmup_steps=1), loss=LossConfig(count_lambda=1.0))
    # One process trains on the global batches of the 2-worker runs (both ranks' rows each step).
    views = {"rank": rank, "world_size": world} if world > 1 else {"ranks": [0, 1], "world_size": 2}
    data = TrainingStream.for_training(dataset, cfg, preprocess, **views)
    tic = time.perf_counter()
    history = train(cfg, model, tokenizer, data).history
    elapsed = time.perf_counter() - tic
    warm = [h["samples_per_s"] for h in history[1:]] or [history[0]["samples_per_s"]]
    # Parameters, gradients and AdamW's two moments this worker holds (its shards under FSDP).
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    queue.put({"rank": rank, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "state_gib": local * 4 * 4 / 2**30,
               "samples_per_s": float(np.mean(warm)), "losses": [h["loss"] for h in history], "params": params,
               "seconds": elapsed})
    if world > 1:
        dist.destroy_process_group()


def run(strategy: str, world: int, args) -> dict:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    torch.multiprocessing.start_processes(worker, args=(world, strategy, args, port, queue), nprocs=world,
                                         join=True, start_method="spawn")
    ranks = sorted((queue.get() for _ in range(world)), key=lambda r: r["rank"])
    return {"workers": world, "peak_rss_gib_per_worker": [round(r["peak_rss_gib"], 2) for r in ranks],
            "param_grad_adam_gib_per_worker": [round(r["state_gib"], 3) for r in ranks],
            "samples_per_s": ranks[0]["samples_per_s"], "losses": [round(v, 5) for v in ranks[0]["losses"]],
            "params": ranks[0]["params"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.data_dir = tempfile.mkdtemp(prefix="fsdp-bench-")  # the dataset all three runs stream
    results = {"arch": args.arch, "global_batch": args.batch, "steps": args.steps}
    for name, strategy, world in (("single", "none", 1), ("ddp", "ddp", 2), ("fsdp2", "fsdp", 2)):
        results[name] = run(strategy, world, args)
        print(name, json.dumps(results[name]), flush=True)
    base = results["single"]["samples_per_s"]
    results["samples_per_s_vs_single"] = {k: results[k]["samples_per_s"] / base for k in ("ddp", "fsdp2")}
    results["fsdp2_peak_vs_ddp"] = max(results["fsdp2"]["peak_rss_gib_per_worker"]) / max(results["ddp"]["peak_rss_gib_per_worker"])
    results["fsdp2_state_vs_ddp"] = (max(results["fsdp2"]["param_grad_adam_gib_per_worker"])
                                     / max(results["ddp"]["param_grad_adam_gib_per_worker"]))
    print(json.dumps({k: results[k] for k in ("samples_per_s_vs_single", "fsdp2_peak_vs_ddp", "fsdp2_state_vs_ddp")}))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
