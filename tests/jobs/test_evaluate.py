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




def test_a_wise_ft_blend_is_evaluated_and_registered_with_its_alpha(bench, checkpoints, tmp_path):
    import mlflow
    import torch

    from countclip.config import ConfigError

    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    with pytest.raises(ConfigError, match=r"alpha must be a number in \[0, 1\]"):
        eval_config(bench, checkpoints / "b.pt", uri, tmp_path, f"wise_ft.base={checkpoints / 'a.pt'}", "wise_ft.alpha=1.5")
    cfg = eval_config(bench, checkpoints / "b.pt", uri, tmp_path, f"wise_ft.base={checkpoints / 'a.pt'}", "wise_ft.alpha=0.25")
    results = run_evaluation(cfg)
    blend = torch.load(tmp_path / "eval" / "model_wise_ft.pt", weights_only=True)
    a, b = (torch.load(checkpoints / f"{n}.pt", weights_only=True) for n in ("a", "b"))
    torch.testing.assert_close(blend["visual.proj"], 0.75 * a["visual.proj"] + 0.25 * b["visual.proj"])
    assert results["metrics"]["wise_ft_alpha"] == 0.25
    version = mlflow.MlflowClient(uri).get_model_version(cfg.register.name, results["registry"]["version"])
    assert version.tags["wise_ft_alpha"] == "0.250000"
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
