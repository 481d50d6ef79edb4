"""The `countclip` command: exit codes and messages, and `countclip config JOB`."""

import os
import subprocess
import sys

import pytest
import yaml

from countclip.cli import JOBS, job_config_class, job_defaults

from .jobs.test_experiment import TINY, run_cli


def test_cli_count_errors_exit_nonzero(bench, checkpoints, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    image = next((bench.parent / "images").glob("*.png"))
    cases = [
        ([str(not_image), "--noun", "dogs", "--model", str(checkpoints / "a.pt")], "is not a readable image"),
        ([str(image), "--noun", " ", "--model", str(checkpoints / "a.pt")], "noun to count is empty"),
        ([str(image), "--noun", "dogs", "--model", str(tmp_path / "none.pt")], "does not exist"),
        ([str(image), "--noun", "dogs", "--model", "models:/nope@champion"], "cannot load models:/nope@champion"),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"}
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "countclip.cli", "count", *args], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-1500:])
    ok = subprocess.run([sys.executable, "-m", "countclip.cli", "count", str(image), "--noun", "circles", "--model",
                         str(checkpoints / "a.pt")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "circles\tconfidence" in ok.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["finetune.stepz=3"], "finetune: unknown field(s) ['stepz']"),
        (["finetune.steps=many"], "finetune.steps: expected an integer"),
        (["model.arch=ViT-Q-99", *TINY], "unknown architecture 'ViT-Q-99'"),
        (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
        (["finetune.loss.contrastive=siglip", *TINY], "loss.contrastive siglip needs a model with a logit bias"),
        (["lora.targets=[q_proj]", *TINY], "model.lora.targets: 'q_proj' names no module of this model"),
        (["wise_ft_alphas=[0, 1.5]", *TINY], "WiSE-FT alpha must be a number in [0, 1]"),
    ],
)
def test_bad_configuration_exits_nonzero_with_a_clear_message(tmp_path, args, message):
    proc = run_cli("experiment", "--out", str(tmp_path / "x"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x" / "benchmark").exists()  # nothing was built or trained




@pytest.mark.parametrize("job", JOBS)
def test_config_prints_every_default_with_its_docstring_and_loads_back(job, tmp_path):
    proc = run_cli("config", job, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tmp_path / "c.yaml").write_text(proc.stdout)
    loaded = job_config_class(job).load(tmp_path / "c.yaml")
    expected = job_defaults(job)
    assert loaded == expected
    assert yaml.safe_load(proc.stdout) == expected.to_dict()
    comments = [line for line in proc.stdout.splitlines() if line.lstrip().startswith("#")]
    assert len(comments) > 15  # the field docstrings (wise-ft has the fewest fields), e.g.:
    if job == "train":
        assert "  # Peak learning rate of AdamW, reached after warmup, then cosine-decayed to lr * min_lr_ratio." in proc.stdout
