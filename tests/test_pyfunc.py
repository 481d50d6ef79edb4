"""countclip.pyfunc: the logged counting model answers as the predictor does, refuses bad input with
a clear message, and logs without MLflow's type-hint warning."""

import warnings

import pandas as pd
import pytest

from countclip import tracking
from countclip.predict import load_predictor

from .conftest import scene_png


def test_logged_model_predicts_what_the_predictor_counts(open_clip_folders, tmp_path):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path / 'ml.db'}", experiment="pyfunc")
    images = [scene_png(count=c, seed=c) for c in (3, 7)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "Add type hints to the `predict` method ..." would fail here
        uri = tracking.log_count_model(cfg, tracking.start_run(cfg, "r", {}, {}), open_clip_folders / "a", images[0])
    model = mlflow.pyfunc.load_model(uri)
    frame = pd.DataFrame({"image": images + images[:1], "noun": ["circles", "circles", "stars"]})
    out = model.predict(frame)
    assert list(out.columns[:2]) == ["count", "confidence"] and len(out) == 3
    predictor = load_predictor(str(open_clip_folders / "a.pt"))
    expected = predictor.count(images, "circles") + predictor.count(images[:1], "stars")
    assert out["count"].tolist() == [e["count"] for e in expected]
    assert out["confidence"].tolist() == pytest.approx([e["confidence"] for e in expected], abs=1e-6)
    for bad, message in [(pd.DataFrame({"image": images}), "noun"),
                         (pd.DataFrame({"image": [b"not an image"], "noun": ["circles"]}), "is not a readable image"),
                         (pd.DataFrame({"image": images[:1], "noun": [" "]}), "noun to count is empty")]:
        with pytest.raises(MlflowException, match=message) as caught:
            model.predict(bad)
        assert caught.value.get_http_status_code() == 400


def test_the_flavour_defines_without_mlflows_type_hint_warning():
    import subprocess
    import sys

    script = ("import warnings, mlflow.pyfunc\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    import countclip.pyfunc\n"
              "print([str(w.message) for w in caught])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


def test_the_logged_model_takes_bytes_only_unless_logged_for_batch_scoring(open_clip_folders, tmp_path):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path / 'ml.db'}", experiment="paths")
    image = scene_png(count=3, seed=3)
    run = tracking.start_run(cfg, "r", {}, {})
    served = mlflow.pyfunc.load_model(tracking.log_count_model(cfg, run, open_clip_folders / "a", image))
    readable = tmp_path / "readable.png"
    readable.write_bytes(image)
    with pytest.raises(MlflowException, match="image column of encoded image bytes"):  # the path is never opened
        served.predict(pd.DataFrame({"image_path": [str(readable)], "noun": ["circles"]}))
    with pytest.raises(MlflowException, match="is not a readable image: not an image"):
        served.predict(pd.DataFrame({"image": [b"<html>"], "noun": ["circles"]}))
    with pytest.raises(MlflowException, match="control characters"):
        served.predict(pd.DataFrame({"image": [image], "noun": ["dogs\x1b[2J"]}))

    batch = mlflow.pyfunc.load_model(tracking.log_count_model(cfg, run, open_clip_folders / "a", image,
                                                              allow_image_paths=True))
    assert batch.predict(pd.DataFrame({"image_path": [str(readable)], "noun": ["circles"]}))["count"].between(2, 10).all()
    (tmp_path / "text.png").write_text("not an image")
    messages = set()
    for path in (tmp_path / "absent.png", tmp_path / "text.png", tmp_path, "/etc/hostname"):
        with pytest.raises(MlflowException) as error:
            batch.predict(pd.DataFrame({"image_path": [str(path)], "noun": ["circles"]}))
        messages.add(error.value.message)
    assert messages == {"row 0: image_path could not be read as an image"}  # whether a path exists is not told
