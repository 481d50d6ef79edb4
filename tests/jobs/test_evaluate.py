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




def test_the_evaluated_model_is_written_as_an_open_clip_folder_with_its_figures(bench, checkpoints, tmp_path):
    import open_clip

    result = run_evaluation(eval_config(bench, checkpoints / "a.pt", "sqlite:///unused.db", tmp_path,
                                        "tracking.enabled=false"))
    folder = tmp_path / "eval" / "open_clip"
    assert result["open_clip_folder"] == str(folder)
    card = (folder / "README.md").read_text()
    assert f"| count_accuracy | {result['metrics']['count_accuracy']:.4f} |" in card and "zeroshot_accuracy" in card
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    assert sum(p.numel() for p in model.parameters()) > 0
