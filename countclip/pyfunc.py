"""The MLflow pyfunc flavour of the counting model (kept apart so `countclip count` never imports MLflow).

Logged by ``tracking.log_count_model`` as MLflow's "model from code" (this file is copied into the
model and run at load, so no pickled object travels), with the model's open_clip folder
(``countclip.export``) as its artifact; a process with only MLflow and this package installed loads it with stock
``mlflow.pyfunc.load_model("models:/countclip@champion")``, and ``mlflow models serve`` serves it
over REST. Bad input (an unreadable image, an empty or missing noun) is refused with an
``INVALID_PARAMETER_VALUE`` MlflowException, which the scoring server answers with HTTP 400 and a
one-line message.

Served, the model answers anyone who can reach it, so by default it takes encoded image bytes only:
it never opens a path a caller names. A model logged for batch scoring with ``allow_image_paths=True``
(its MLflow ``model_config``) also reads ``image_path`` rows from the host's disk, and then an
unreadable path gets one message whatever the reason, so a caller cannot tell which paths exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from countclip.config import one_line
from countclip.images import open_image
from countclip.predict import CountPredictor, count_prompts


class CountClipPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a DataFrame with ``noun`` and ``image`` (encoded bytes) in, or ``image_path``
    when logged with ``allow_image_paths``; ``count``, ``confidence`` and ``prob_2`` .. ``prob_10``
    out. Rows may name different nouns."""

    allow_image_paths = False

    def load_context(self, context) -> None:
        if "open_clip" in context.artifacts:
            self.predictor = CountPredictor.load(f"local-dir:{context.artifacts['open_clip']}", arch="countclip-tiny")
            self.allow_image_paths = bool((context.model_config or {}).get("allow_image_paths", False))
        else:  # models logged before the open_clip folder: a bare checkpoint and a spec naming its arch
            spec = json.loads(Path(context.artifacts["model_spec"]).read_text())
            self.predictor = CountPredictor.load(context.artifacts["checkpoint"], spec["arch"])
            self.allow_image_paths = bool(spec.get("allow_image_paths", False))

    # The pd.DataFrame hints tell MLflow that the logged signature, not the hints, describes the input.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            return self._count(model_input)
        except ValueError as exc:  # the request's fault: a 400 with one line, no traceback
            raise MlflowException(one_line(exc, 300), error_code=INVALID_PARAMETER_VALUE) from None

    def _count(self, model_input: pd.DataFrame) -> pd.DataFrame:
        check_request(model_input, self.allow_image_paths)
        images = request_images(model_input, self.allow_image_paths)
        rows = []
        for noun, group in model_input.groupby("noun", sort=False):
            for index, result in zip(group.index, self.predictor.count(list(images[group.index]), str(noun))):
                rows.append({"index": index, "count": result["count"], "confidence": result["confidence"],
                             **{f"prob_{c}": p for c, p in result["probabilities"].items()}})
        return pd.DataFrame(rows).set_index("index").loc[model_input.index].reset_index(drop=True)


def check_request(model_input: pd.DataFrame, allow_image_paths: bool) -> None:
    """Refuse a request's columns, rows and nouns (ValueError) before any image is decoded."""
    columns = set(model_input.columns)
    if "image_path" in columns and not allow_image_paths:
        raise ValueError("image_path is refused: this model takes encoded image bytes in an 'image' column")
    if "noun" not in columns or not ({"image", "image_path"} & columns):
        accepted = ("an image (bytes) or image_path column" if allow_image_paths else
                    "an image column of encoded image bytes (this model reads no image_path: it is logged for serving)")
        raise ValueError(f"input needs a noun column and {accepted}")
    if not len(model_input):
        raise ValueError("input holds no rows")
    if model_input["noun"].isna().any():
        raise ValueError(f"rows {model_input.index[model_input['noun'].isna()].tolist()[:10]} have no noun")
    for noun in model_input["noun"].unique():
        count_prompts(str(noun))


def request_images(model_input: pd.DataFrame, allow_image_paths: bool) -> pd.Series:
    """The decoded image of each row (a pandas Series of PIL images); ValueError naming the row."""
    columns = set(model_input.columns)
    if "image_path" in columns and not allow_image_paths:  # checked here too: this is what opens files
        raise ValueError("image_path is refused: this model takes encoded image bytes in an 'image' column")
    images = []
    for position, index in enumerate(model_input.index):
        data = model_input["image"][index] if "image" in columns else None
        path = model_input["image_path"][index] if "image_path" in columns else None
        if isinstance(data, (bytes, bytearray, memoryview)):
            images.append(open_image(bytes(data)))
        elif isinstance(path, str) and path:
            try:
                images.append(open_image(Path(path)))
            except Exception:  # one answer for missing, unreadable, not a file, not an image
                raise ValueError(f"row {position}: image_path could not be read as an image") from None
        else:
            raise ValueError(f"row {position}: no image (encoded bytes expected, got {type(data).__name__})")
    return pd.Series(images, index=model_input.index, dtype=object)


if __name__ != "countclip.pyfunc":  # MLflow runs this file as the model's code, under a module name of its own
    mlflow.models.set_model(CountClipPyfunc())
