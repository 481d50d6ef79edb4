"""countclip.pyfunc: the logged counting model answers as the predictor does."""

import pandas as pd
import pytest

from countclip import tracking
from countclip.predict import load_predictor

from .conftest import scene_png


def test_logged_model_predicts_what_the_predictor_counts(checkpoints, tmp_path):
    import mlflow.pyfunc

    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path / 'ml.db'}", experiment="pyfunc")
    images = [scene_png(count=c, seed=c) for c in (3, 7)]
    uri = tracking.log_count_model(cfg, tracking.start_run(cfg, "r", {}, {}), checkpoints / "a.pt", "countclip-tiny",
                                   images[0])
    model = mlflow.pyfunc.load_model(uri)
    frame = pd.DataFrame({"image": images + images[:1], "noun": ["circles", "circles", "stars"]})
    out = model.predict(frame)
    assert list(out.columns[:2]) == ["count", "confidence"] and len(out) == 3
    predictor = load_predictor(str(checkpoints / "a.pt"))
    expected = predictor.count(images, "circles") + predictor.count(images[:1], "stars")
    assert out["count"].tolist() == [e["count"] for e in expected]
    assert out["confidence"].tolist() == pytest.approx([e["confidence"] for e in expected], abs=1e-6)
    with pytest.raises(Exception, match="noun"):
        model.predict(pd.DataFrame({"image": images}))
