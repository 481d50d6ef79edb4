"""MLflow model, registry promotion, and loading `models:/countclip@champion` in a fresh process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from countclip.evaluate_job import EvalJobConfig, run_evaluation
from countclip.model import export_checkpoint
from countclip.world_files import write_benchmark


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("bench") / "b", seed=2, per_count=4, image_size=64)


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory):
    """Two tiny checkpoints: the random model, and a copy whose logit scale differs (another model)."""
    model, _, _ = tiny_model
    folder = tmp_path_factory.mktemp("ckpt")
    export_checkpoint(model, folder / "a.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["logit_scale"] = state["logit_scale"].reshape(()) + 1.0
    state["visual.proj"] = state["visual.proj"] + 0.05 * torch.randn_like(state["visual.proj"])
    export_checkpoint(state, folder / "b.pt")
    return folder


def eval_config(bench, checkpoint, tracking_uri, tmp_path, *overrides):
    return EvalJobConfig.load(None, [
        "model.arch=countclip-tiny", f"model.pretrained={checkpoint}", f"countbench={bench}",
        f"output={tmp_path / 'eval'}", f"tracking.uri={tracking_uri}", "tracking.experiment=test-eval",
        "register.name=countclip", *overrides])


@pytest.mark.slow
def test_registered_champion_loads_in_a_fresh_process_from_the_server(bench, checkpoints, mlflow_server, tmp_path):
    result = run_evaluation(eval_config(bench, checkpoints / "a.pt", mlflow_server["url"], tmp_path))
    assert result["registry"]["promoted"] and result["metrics"]["images_scored"] == 36
    script = (
        "import json, sys, mlflow.pyfunc, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/countclip@champion')\n"
        "paths = sys.argv[1:]\n"
        "df = pd.DataFrame({'image': [open(p, 'rb').read() for p in paths], 'noun': ['circles'] * len(paths)})\n"
        "out = m.predict(df)\n"
        "print(json.dumps(out.to_dict(orient='records')))\n"
    )
    images = sorted(str(p) for p in (bench.parent / "images").glob("*.png"))[:3]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3"))}  # no S3 keys here
    env["MLFLOW_TRACKING_URI"] = mlflow_server["url"]
    proc = subprocess.run([sys.executable, "-c", script, *images], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 3
    for row in rows:
        assert 2 <= row["count"] <= 10
        probs = [row[f"prob_{c}"] for c in range(2, 11)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and row["confidence"] == pytest.approx(max(probs))


def test_promotion_only_for_a_better_model(checkpoints, tmp_path):
    import mlflow

    from countclip import tracking

    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    cfg = tracking.TrackingConfig(uri=uri, experiment="promo")
    image = _png()
    model_uri = tracking.log_count_model(cfg, tracking.start_run(cfg, "r", {}, {}), checkpoints / "a.pt",
                                         "countclip-tiny", image)

    first = tracking.register_and_promote(cfg, model_uri, "m", {"count_accuracy": 0.5, "zeroshot_accuracy": 0.7})
    assert first["promoted"] and first["reason"] == "no champion yet"
    worse = tracking.register_and_promote(cfg, model_uri, "m", {"count_accuracy": 0.4, "zeroshot_accuracy": 0.9})
    assert not worse["promoted"]
    forgetful = tracking.register_and_promote(cfg, model_uri, "m", {"count_accuracy": 0.9, "zeroshot_accuracy": 0.6})
    assert not forgetful["promoted"]  # counts better, but lost 10 points of zero-shot accuracy
    better = tracking.register_and_promote(cfg, model_uri, "m", {"count_accuracy": 0.6, "zeroshot_accuracy": 0.69})
    assert better["promoted"]
    client = mlflow.MlflowClient(uri)
    assert client.get_model_version_by_alias("m", "champion").version == better["version"]
    tags = client.get_model_version("m", worse["version"]).tags
    assert tags["promotion"].startswith("not promoted: count accuracy 0.4000 vs 0.5000")


def _png() -> bytes:
    import numpy as np

    from countclip.world import render, sample_scene
    from countclip.world_files import png_bytes

    return png_bytes(render(sample_scene(np.random.default_rng(0), 3), 64))


def test_bad_inputs_register_nothing(bench, checkpoints, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"image_url": "x.png", "text": "two dogs"}]))
    with pytest.raises(ValueError, match="lacks field"):
        run_evaluation(eval_config(broken, checkpoints / "a.pt", uri, tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_evaluation(eval_config(bench, tmp_path / "missing.pt", uri, tmp_path))
    client = mlflow.MlflowClient(uri)
    assert client.search_registered_models() == []


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
