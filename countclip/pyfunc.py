"""The MLflow pyfunc flavour of the counting model (kept apart so `countclip count` never imports MLflow).

Logged by ``tracking.log_count_model`` with the open_clip checkpoint and a small JSON spec as
artifacts; a process with only MLflow and this package installed loads it with stock
``mlflow.pyfunc.load_model("models:/countclip@champion")``.

Served (`mlflow models serve`), the model answers anyone who can reach it, so by default it takes
encoded image bytes only: it never opens a path a caller names. A model logged for batch scoring
with ``allow_image_paths=True`` also reads ``image_path`` rows from the host's disk, and then an
unreadable path gets one message whatever the reason, so a caller cannot tell which paths exist.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow.pyfunc

from countclip.config import one_line
from countclip.images import open_image
from countclip.predict import CountPredictor

with warnings.catch_warnings():
    # MLflow nudges towards type-hinted predict(); the explicit signature logged with the model rules.
    warnings.simplefilter("ignore", UserWarning)

    class CountClipPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc: a DataFrame with ``noun`` and ``image`` (encoded bytes) in, or ``image_path``
        when logged with ``allow_image_paths``; ``count``, ``confidence`` and ``prob_2`` .. ``prob_10``
        out. Rows may name different nouns. Bad input raises MlflowException (HTTP 400 when served)."""

        def load_context(self, context) -> None:
            spec = json.loads(Path(context.artifacts["model_spec"]).read_text())
            self.predictor = CountPredictor.load(context.artifacts["checkpoint"], spec["arch"])
            self.allow_image_paths = bool(spec.get("allow_image_paths", False))

        def predict(self, context, model_input, params=None):
            import pandas as pd

            try:
                images = request_images(model_input, getattr(self, "allow_image_paths", False))
                rows = []
                for noun, group in model_input.groupby("noun", sort=False, dropna=False):
                    for index, result in zip(group.index, self.predictor.count(list(images[group.index]), noun)):
                        rows.append({"index": index, "count": result["count"], "confidence": result["confidence"],
                                     **{f"prob_{c}": p for c, p in result["probabilities"].items()}})
            except ValueError as exc:  # the request's fault: a 400 with one line, no traceback
                from mlflow.exceptions import MlflowException
                from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

                raise MlflowException(one_line(exc, 300), error_code=INVALID_PARAMETER_VALUE) from None
            return pd.DataFrame(rows).set_index("index").loc[model_input.index].reset_index(drop=True)


def request_images(model_input, allow_image_paths: bool):
    """The decoded image of each row (a pandas Series of PIL images); ValueError naming the row."""
    import pandas as pd

    columns = set(model_input.columns)
    if "image_path" in columns and not allow_image_paths:
        raise ValueError("image_path is refused: this model takes encoded image bytes in an 'image' column")
    if "noun" not in columns or not ({"image", "image_path"} & columns):
        accepted = ("an image (bytes) or image_path column" if allow_image_paths else
                    "an image column of encoded image bytes (this model reads no image_path: it is logged for serving)")
        raise ValueError(f"input needs a noun column and {accepted}")
    if not len(model_input):
        raise ValueError("input holds no rows")
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
