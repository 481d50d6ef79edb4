"""Evaluate, register on an `mlflow server` with S3 artifacts, and load `models:/countclip@champion` in a fresh process."""

import json
import os
import subprocess
import sys

import pytest

from countclip.jobs.evaluate import run_evaluation

from ..conftest import eval_config


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


