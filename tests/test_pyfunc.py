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


def test_the_logged_model_takes_bytes_only_unless_logged_for_batch_scoring(checkpoints, tmp_path):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path / 'ml.db'}", experiment="paths")
    image = scene_png(count=3, seed=3)
    run = tracking.start_run(cfg, "r", {}, {})
    served = mlflow.pyfunc.load_model(tracking.log_count_model(cfg, run, checkpoints / "a.pt", "countclip-tiny", image))
    readable = tmp_path / "readable.png"
    readable.write_bytes(image)
    with pytest.raises(MlflowException, match="image column of encoded image bytes"):  # the path is never opened
        served.predict(pd.DataFrame({"image_path": [str(readable)], "noun": ["circles"]}))
    with pytest.raises(MlflowException, match="is not a readable image: not an image"):
        served.predict(pd.DataFrame({"image": [b"<html>"], "noun": ["circles"]}))
    with pytest.raises(MlflowException, match="control characters"):
        served.predict(pd.DataFrame({"image": [image], "noun": ["dogs\x1b[2J"]}))

    batch = mlflow.pyfunc.load_model(tracking.log_count_model(cfg, run, checkpoints / "a.pt", "countclip-tiny", image,
                                                              allow_image_paths=True))
    assert batch.predict(pd.DataFrame({"image_path": [str(readable)], "noun": ["circles"]}))["count"].between(2, 10).all()
    (tmp_path / "text.png").write_text("not an image")
    messages = set()
    for path in (tmp_path / "absent.png", tmp_path / "text.png", tmp_path, "/etc/hostname"):
        with pytest.raises(MlflowException) as error:
            batch.predict(pd.DataFrame({"image_path": [str(path)], "noun": ["circles"]}))
        messages.add(error.value.message)
    assert messages == {"row 0: image_path could not be read as an image"}  # whether a path exists is not told
