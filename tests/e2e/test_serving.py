"""Serving over REST: `mlflow models serve` on a registered model answers base64 images as
`countclip count` does, and refuses a bad image or an empty noun with a 4xx and a clear message."""

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from countclip.jobs.evaluate import run_evaluation

from ..conftest import eval_config, free_port


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_mlflow_models_serve_counts_like_the_cli_and_refuses_bad_input(bench, checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_evaluation(eval_config(bench, checkpoints / "a.pt", tracking_uri, tmp_path))
    assert result["registry"]["promoted"]
    venv_bin = str(Path(sys.executable).parent)  # `mlflow models serve` runs uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [f"{venv_bin}/mlflow", "models", "serve", "-m", "models:/countclip@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        images = sorted((bench.parent / "images").glob("*.png"))[:4]
        encoded = [base64.b64encode(p.read_bytes()).decode() for p in images]
        status, body = post(f"{url}/invocations", {"dataframe_split": {
            "columns": ["image", "noun"], "data": [[e, "circles"] for e in encoded]}})
        assert status == 200, body
        served = [row["count"] for row in body["predictions"]]
        status, records = post(f"{url}/invocations", {"dataframe_records": [
            {"image": e, "noun": "circles"} for e in encoded]})
        assert status == 200 and [row["count"] for row in records["predictions"]] == served

        cli = subprocess.run([sys.executable, "-m", "countclip.cli", "count", *map(str, images), "--noun", "circles",
                              "--model", "models:/countclip@champion"], capture_output=True, text=True, env=env,
                             timeout=300)
        assert cli.returncode == 0, cli.stderr[-2000:]
        counted = [int(line.split("\t")[1].split()[0]) for line in cli.stdout.strip().splitlines()]
        assert served == counted

        not_an_image = base64.b64encode(b"<html>404</html>").decode()
        for row, message in [([not_an_image, "circles"], "is not a readable image"),
                             ([encoded[0], ""], "the noun to count is empty")]:
            status, body = post(f"{url}/invocations", {"dataframe_split": {"columns": ["image", "noun"], "data": [row]}})
            assert 400 <= status < 500 and message in body["message"], (status, body)
            assert "Traceback" not in json.dumps(body) and "stack_trace" not in body
    finally:
        server.terminate()
        server.wait(timeout=30)
