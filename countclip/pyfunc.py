"""The MLflow pyfunc flavour of the counting model (kept apart so `countclip count` never imports MLflow).

Logged by ``tracking.log_count_model`` as MLflow's "model from code" (this file is copied into the
model and run at load, so no pickled object travels), with the model's open_clip folder
(``countclip.export``) as its artifact; a process with only MLflow and this package installed loads it with stock
``mlflow.pyfunc.load_model("models:/countclip@champion")``, and ``mlflow models serve`` serves it
over REST. Bad input (an unreadable image, an empty or missing noun) is refused with an
``INVALID_PARAMETER_VALUE`` MlflowException, which the scoring server answers with HTTP 400 and the
message alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from countclip.predict import CountPredictor, count_prompts


class CountClipPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a DataFrame with ``noun`` and ``image`` (encoded bytes) or ``image_path`` in;
    ``count``, ``confidence`` and ``prob_2`` .. ``prob_10`` out. Rows may name different nouns."""

    def load_context(self, context) -> None:
        if "open_clip" in context.artifacts:
            self.predictor = CountPredictor.load(f"local-dir:{context.artifacts['open_clip']}", arch="countclip-tiny")
        else:  # models logged before the open_clip folder: a bare checkpoint and a spec naming its arch
            spec = json.loads(Path(context.artifacts["model_spec"]).read_text())
            self.predictor = CountPredictor.load(context.artifacts["checkpoint"], spec["arch"])

    # The pd.DataFrame hints tell MLflow that the logged signature, not the hints, describes the input.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            return self._count(model_input)
        except ValueError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None

    def _count(self, model_input: pd.DataFrame) -> pd.DataFrame:
        if "noun" not in model_input.columns or not ({"image", "image_path"} & set(model_input.columns)):
            raise ValueError("input needs a noun column and an image (bytes) or image_path column")
        if model_input["noun"].isna().any():
            raise ValueError(f"rows {model_input.index[model_input['noun'].isna()].tolist()} have no noun")
        images = model_input.get("image", pd.Series([None] * len(model_input), index=model_input.index))
        if "image_path" in model_input.columns:
            images = images.where(images.notna(), model_input["image_path"])
        for noun in model_input["noun"].unique():  # every noun is checked before any image is scored
            count_prompts(str(noun))
        rows = []
        for noun, group in model_input.groupby("noun", sort=False):
            for index, result in zip(group.index, self.predictor.count(list(images[group.index]), str(noun))):
                rows.append({"index": index, "count": result["count"], "confidence": result["confidence"],
                             **{f"prob_{c}": p for c, p in result["probabilities"].items()}})
        return pd.DataFrame(rows).set_index("index").loc[model_input.index].reset_index(drop=True)


if __name__ != "countclip.pyfunc":  # MLflow runs this file as the model's code, under a module name of its own
    mlflow.models.set_model(CountClipPyfunc())
