"""CLIP_benchmark as an independent evaluator: its own CLI, on the open_clip folder `countclip export`
writes and the CountWorld zero-shot tasks in its webdataset layout, agrees with countclip's zero-shot
accuracy on the same images, classes and templates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from countclip.evaluate import zeroshot_wds
from countclip.model import ModelConfig, create_model
from countclip.world.files import write_zeroshot_wds

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_clip_benchmark_agrees_with_countclip_on_the_countworld_tasks(open_clip_folders, tmp_path):
    pytest.importorskip("clip_benchmark", reason="clip-benchmark is in the dev extra: pip install -e '.[dev]'")
    names = write_zeroshot_wds(tmp_path / "zs", seed=7, n=200, image_size=64, same_size=True)
    folder = open_clip_folders / "b"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # CPU, as here; the suite's offline switches are inherited
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "clip-benchmark"), "eval", "--model", f"local-dir:{folder}",
         "--dataset", *names, "--dataset_root", str(tmp_path / "zs" / "wds" / "{dataset}"),
         "--task", "zeroshot_classification", "--no_amp", "--num_workers", "0", "--batch_size", "64",
         "--output", str(tmp_path / "{dataset}.json")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    model, preprocess, tokenizer = create_model(ModelConfig(pretrained=f"local-dir:{folder}"))
    for name in names:
        theirs = json.loads((tmp_path / f"{name.removeprefix('wds/')}.json").read_text())["metrics"]["acc1"]
        ours = zeroshot_wds(model, tokenizer, preprocess, tmp_path / "zs" / name)
        assert ours["images"] == 200 and ours["templates"] == 32
        assert abs(theirs - ours["accuracy"]) <= 0.005, (name, theirs, ours["accuracy"])
