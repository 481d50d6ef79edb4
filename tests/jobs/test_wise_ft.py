"""WiSE-FT end to end: the experiment's options (LoRA row, WiSE-FT curve) and `countclip wise-ft`,
whose rows at alpha 0 and 1 must reproduce the experiment's base and CountCLIP figures."""

import json

import pytest
import torch

from countclip.jobs.experiment import ExperimentConfig, run_experiment
from countclip.jobs.wise_ft import WiseFTConfig, run_wise_ft

from .test_experiment import TINY, run_cli


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    cfg = ExperimentConfig.load(None, [*TINY, f"out={out}", "seed=5", "lora.rank=4", "lora_lr=3e-3",
                                       "wise_ft_alphas=[0, 0.5, 1]"])
    return out, run_experiment(cfg, echo=lambda line: None)


def test_experiment_reports_a_lora_row_and_the_wise_ft_curve(experiment):
    import open_clip

    out, report = experiment
    lora, full = report["countclip_lora"], report["countclip"]
    assert lora["trainable_parameters"] == 2 * 2 * 2 * (4 * 128 + 512 * 4) and lora["parameters"] > full["parameters"]
    assert full["trainable_parameters"] == full["parameters"]
    assert report["lora_gain_over_control"] == pytest.approx(lora["count_accuracy"] - report["control"]["count_accuracy"])
    # The LoRA export is a stock open_clip checkpoint.
    model, _, _ = open_clip.create_model_and_transforms("countclip-tiny", pretrained=str(out / "checkpoints/countclip_lora.pt"))
    assert not any("lora" in name for name in model.state_dict())
    rows = report["wise_ft"]["rows"]
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    for alpha, name in ((0.0, "base"), (1.0, "countclip")):
        row = next(r for r in rows if r["alpha"] == alpha)
        assert row["count_accuracy"] == report[name]["count_accuracy"]
        assert row["zeroshot_by_task"] == report[name]["zeroshot_by_task"]
    assert json.loads((out / "wise_ft.json").read_text())["rows"] == rows
    assert (out / "wise_ft.png").read_bytes()[:4] == b"\x89PNG" and "| 0.50 |" in (out / "wise_ft.md").read_text()


def test_wise_ft_job_rebuilds_the_experiments_held_out_sets(experiment, tmp_path):
    out, report = experiment
    cfg = WiseFTConfig(base=str(out / "checkpoints/base.pt"), finetuned=str(out / "checkpoints/countclip.pt"),
                       alphas=[0.0, 1.0], seed=5, benchmark_per_count=3, zeroshot_images=40, threads=1,
                       out=str(tmp_path / "w"), save_checkpoints=True)
    result = run_wise_ft(cfg, echo=lambda line: None)
    for row, name in zip(result["rows"], ("base", "countclip")):
        assert row["count_accuracy"] == report[name]["count_accuracy"], name
        assert row["zeroshot_by_task"] == report[name]["zeroshot_by_task"], name
    exported = torch.load(tmp_path / "w/checkpoints/wise_ft_1.00.pt", weights_only=True)
    tuned = torch.load(out / "checkpoints/countclip.pt", weights_only=True)
    assert all(torch.equal(exported[k], tuned[k]) for k in tuned)


def test_wise_ft_cli_refuses_alphas_outside_the_unit_interval(experiment, tmp_path):
    out, _ = experiment
    proc = run_cli("wise-ft", "--base", str(out / "checkpoints/base.pt"), "--finetuned",
                   str(out / "checkpoints/countclip.pt"), "--alpha", "0,1.5", "--out", str(tmp_path / "w"), timeout=120)
    assert proc.returncode == 2 and "alpha must be a number in [0, 1]" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()
