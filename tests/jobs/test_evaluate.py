"""The evaluate job (countclip.jobs.evaluate): a bad benchmark or checkpoint registers nothing."""

import json

import pytest

from countclip.jobs.evaluate import run_evaluation

from ..conftest import eval_config


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


