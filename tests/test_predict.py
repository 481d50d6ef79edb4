"""countclip.predict: counting by the CountBench protocol, ranking, and loading predictors."""

import numpy as np
import pytest
import torch

from countclip.images import open_image
from countclip.numbers import COUNTS, count_prompt
from countclip.predict import CountPredictor, count_prompts, load_predictor

from .conftest import scene_png


def test_prompts_name_every_count_once():
    assert count_prompts("  red   dogs ") == [count_prompt(n, "red dogs") for n in COUNTS]
    assert count_prompts("dogs")[1] == "a photo of three dogs"
    with pytest.raises(ValueError, match="noun to count is empty"):
        count_prompts(" \t")


def test_count_is_the_argmax_of_the_nine_prompts(checkpoints):
    predictor = load_predictor(str(checkpoints / "a.pt"), "countclip-tiny")
    assert isinstance(predictor, CountPredictor)
    images = [scene_png(count=c, seed=c) for c in (2, 5, 9)]
    results = predictor.count(images, "circles")
    with torch.no_grad():
        pixels = torch.stack([predictor.preprocess(open_image(data)) for data in images])
        image_features = predictor.model.encode_image(pixels, normalize=True)
        text_features = predictor.model.encode_text(predictor.tokenizer(count_prompts("circles")), normalize=True)
        expected = (image_features @ text_features.T).argmax(-1).numpy() + 2
    assert [r["count"] for r in results] == expected.tolist()
    for r in results:
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5 and r["confidence"] == max(r["probabilities"].values())


def test_rank_scores_each_image(checkpoints):
    predictor = load_predictor(str(checkpoints / "a.pt"))
    scores = predictor.rank([scene_png(seed=1), scene_png(seed=2)], "three circles")
    assert scores.shape == (2,) and np.all(np.abs(scores) <= 1)


def test_a_missing_registered_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(FileNotFoundError, match="cannot load models:/nope@champion"):
        load_predictor("models:/nope@champion")
