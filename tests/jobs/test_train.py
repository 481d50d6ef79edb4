"""Ray Train job: preflight errors, FSDP equivalence with one process, a real worker kill."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from countclip.config import ConfigError
from countclip.data.shards import read_manifest
from countclip.jobs.train import TrainJobConfig, check_capacity, preflight
from countclip.world.files import write_clean_dataset

from ..conftest import free_port


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("cw") / "dataset"
    write_clean_dataset(str(out), seed=4, rows=240, image_size=64, counting_share=0.4)
    return str(out)


def job(dataset, tmp_path, *overrides):
    base = [f"dataset={dataset}", f"storage_path={tmp_path / 'store'}", f"tracking.uri=sqlite:///{tmp_path / 'ml.db'}",
            "train.steps=6", "train.batch_size=20", "train.counting_fraction=0.4", "train.log_every=1",
            "train.checkpoint_every=2", "train.seed=3", "train.loss.count_lambda=2.0", "scaling.num_workers=2",
            "scaling.cpus_per_worker=0.5", "train.data.decode_cpus=0.5", "name=t"]
    return TrainJobConfig.load(None, base + list(overrides))


def test_preflight_refuses_bad_jobs_before_any_worker(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete countclip dataset"):
        preflight(job(str(tmp_path / "missing"), tmp_path))
    empty = tmp_path / "empty"
    write_clean_dataset(str(empty), seed=1, rows=0)
    with pytest.raises(ValueError, match="is empty"):
        preflight(job(str(empty), tmp_path))
    with pytest.raises(ConfigError, match="unknown architecture 'ViT-Q-99'"):
        preflight(job(dataset, tmp_path, "model.arch=ViT-Q-99"))
    with pytest.raises(ConnectionError, match="MLflow tracking server http://127.0.0.1:.* is unreachable"):
        preflight(job(dataset, tmp_path, f"tracking.uri=http://127.0.0.1:{free_port()}", "tracking.connect_timeout_s=2"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="is not writable"):
        preflight(job(dataset, tmp_path, f"storage_path={blocker}/store"))
    with pytest.raises(FileNotFoundError, match="benchmark file .* does not exist"):
        preflight(job(dataset, tmp_path, f"benchmark={tmp_path}/none.json"))
    with pytest.raises(ConfigError, match="must divide by scaling.num_workers"):
        job(dataset, tmp_path, "train.batch_size=21")
    held = read_manifest(dataset)["written"]["counting"]
    needs = held + 1 + (held + 1) % 2  # one row more than the dataset holds, even so it splits over 2 ranks
    with pytest.raises(ValueError, match=f"holds {held} counting rows but each batch needs {needs}"):
        preflight(job(dataset, tmp_path, f"train.batch_size={2 * needs}", "train.counting_fraction=0.5"))
    with pytest.raises(ValueError, match="each batch holds 7 counting rows, which do not split over 2 ranks"):
        preflight(job(dataset, tmp_path, "train.batch_size=20", "train.counting_fraction=0.35"))
    with pytest.raises(ValueError, match="leaving less than the 1 CPU one ingest decode task needs"):
        check_capacity(job(dataset, tmp_path, "scaling.cpus_per_worker=1", "train.data.decode_cpus=1"), 2.0)
    check_capacity(job(dataset, tmp_path), 2.0)
    assert preflight(job(dataset, tmp_path))["rows_written"] == 240


def test_preflight_refuses_losses_and_adapters_the_model_or_strategy_cannot_train(dataset, tmp_path):
    with pytest.raises(ConfigError, match="loss.contrastive siglip needs a model with a logit bias"):
        preflight(job(dataset, tmp_path, "train.loss.contrastive=siglip"))
    with pytest.raises(ConfigError, match="'qkv' names no module of this model"):
        preflight(job(dataset, tmp_path, "model.lora.targets=[qkv]"))
    with pytest.raises(ConfigError, match="adapt nn.MultiheadAttention .* which FSDP2 cannot shard"):
        preflight(job(dataset, tmp_path, "model.lora.targets=[attn]"))
    assert preflight(job(dataset, tmp_path, "model.lora.targets=[attn]", "scaling.strategy=ddp"))
    assert preflight(job(dataset, tmp_path, "model.lora.rank=4"))  # the default c_fc/c_proj under FSDP2
    assert preflight(job(dataset, tmp_path, "model.arch=countclip-tiny-sigmoid", "train.loss.contrastive=siglip"))
    with pytest.raises(ConfigError, match="preserve_lambda keeps a frozen copy .* FSDP2-sharded"):
        preflight(job(dataset, tmp_path, "train.loss.preserve_lambda=10"))
    assert preflight(job(dataset, tmp_path, "train.loss.preserve_lambda=10", "scaling.strategy=ddp"))


def single_process_losses(cfg: TrainJobConfig):
    """One process training on the global batches of the job's ranks (every rank's rows at each step)."""
    from countclip.data.batches import TrainingStream
    from countclip.model import create_model
    from countclip.train import train

    torch.manual_seed(cfg.train.seed)
    model, preprocess, tokenizer = create_model(cfg.model)
    workers = cfg.scaling.num_workers
    data = TrainingStream.for_training(cfg.dataset, cfg.train, preprocess, ranks=range(workers), world_size=workers)
    result = train(cfg.train.replace(checkpoint_dir=None), model, tokenizer, data)
    return {row["step"]: row["loss"] for row in result.history}, model


def mlflow_losses(cfg: TrainJobConfig, run_id: str) -> list[tuple[int, float]]:
    from countclip.tracking import metric_history

    return metric_history(cfg.tracking, run_id, "loss")


def test_a_restarted_group_publishes_only_steps_the_run_does_not_hold(tmp_path):
    from countclip import tracking

    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path / 'ml.db'}", experiment="resume")
    run_id = tracking.start_run(cfg, "r", {}, {})
    assert tracking.last_logged_step(cfg, run_id) == 0
    tracking.log_metric_rows(cfg, run_id, [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)])
    assert tracking.last_logged_step(cfg, run_id) == 3
    assert tracking.last_logged_step(cfg.replace(enabled=False), run_id) == 0


@pytest.mark.slow
def test_fsdp_on_two_workers_matches_one_process_and_survives_a_worker_kill(dataset, tmp_path, monkeypatch, ray_fresh):
    """One Ray Train run, FSDP2 on 2 gloo workers: rank 1 is SIGKILLed after the step-2 checkpoint;
    the group restarts from it, every step is logged exactly once, and the losses and the final
    model equal a single-process run at the same global batch and seed."""
    import ray

    from countclip.jobs.train import run_training

    pid_dir = tmp_path / "pids"
    monkeypatch.setenv("COUNTCLIP_PID_DIR", str(pid_dir))
    cfg = job(dataset, tmp_path)
    killed = {}

    def kill_rank1_after_first_checkpoint():
        deadline = time.time() + 600
        store = tmp_path / "store" / "t"
        while time.time() < deadline and not killed:
            done = [p for p in store.glob("checkpoint_*") if (p / "step.json").exists()]
            if done and (pid_dir / "rank1.pid").exists():
                pid = int((pid_dir / "rank1.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                killed["after_step"] = json.loads((done[0] / "step.json").read_text())["step"]
            time.sleep(0.2)

    ray_fresh()  # its workers must inherit COUNTCLIP_PID_DIR
    try:
        killer = threading.Thread(target=kill_rank1_after_first_checkpoint, daemon=True)
        killer.start()
        summary = run_training(cfg, echo=print)
        killer.join(timeout=5)
    finally:
        ray.shutdown()
    assert killed, "the worker was never killed"
    assert int((pid_dir / "rank1.pid").read_text()) != killed["pid"]  # a new worker took its place

    expected, reference = single_process_losses(cfg)
    logged = mlflow_losses(cfg, summary["run_id"])
    assert [step for step, _ in logged] == list(range(1, 7))  # every step once, none twice
    for step, loss in logged:
        assert loss == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step

    from countclip.model import ModelConfig, create_model

    exported, _, _ = create_model(ModelConfig(pretrained=summary["export"]))
    for (name, a), (_, b) in zip(reference.state_dict().items(), exported.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert Path(summary["export"]).is_file() and summary["step"] == 6
    folder = summary["export_folder"]
    assert folder == str(Path(summary["export"]).with_name("model-open_clip"))
    from_folder, _, _ = create_model(ModelConfig(pretrained=f"local-dir:{folder}"))  # the open_clip folder beside it
    torch.testing.assert_close(from_folder.state_dict(), exported.state_dict())




@pytest.mark.slow
@pytest.mark.parametrize("strategy, targets", [("fsdp", None), ("fsdp", "[c_fc, c_proj]"), ("ddp", "[attn, c_fc, c_proj]")])
def test_siglip_and_lora_on_two_ray_workers_match_one_process(dataset, tmp_path, ray_local, strategy, targets):
    """The SigLIP loss (neighbour exchange across the 2 gloo workers, the logit bias trained under
    FSDP2) and LoRA adapters under Ray Train: the logged losses equal a single-process run, and the
    export is a stock open_clip checkpoint."""
    import open_clip

    from countclip.jobs.train import run_training

    lora = [f"model.lora.targets={targets}", "model.lora.rank=4"] if targets else []
    cfg = job(dataset, tmp_path, "model.arch=countclip-tiny-sigmoid", "train.loss.contrastive=siglip",
              f"scaling.strategy={strategy}", "train.steps=4", "train.optim.lr=1e-2", *lora)
    summary = run_training(cfg, echo=print)
    expected, _ = single_process_losses(cfg)
    logged = mlflow_losses(cfg, summary["run_id"])
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    for step, loss in logged:
        assert loss == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step
    assert len(set(expected.values())) == 4  # the model did train
    model, _, _ = open_clip.create_model_and_transforms("countclip-tiny-sigmoid", pretrained=summary["export"])
    assert not any("lora" in name or "base_layer" in name for name in model.state_dict())
    if targets is None:  # the logit bias trained, identically on the workers and in one process
        _, reference = single_process_losses(cfg)
        assert float(model.logit_bias) == pytest.approx(float(reference.logit_bias), rel=1e-5) != -10.0
