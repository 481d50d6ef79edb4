"""The MLflow pyfunc flavour of the counting model (kept apart so `countclip count` never imports MLflow).

Logged by ``tracking.log_count_model`` with the open_clip checkpoint and a small JSON spec as
artifacts; a process with only MLflow and this package installed loads it with stock
``mlflow.pyfunc.load_model("models:/countclip@champion")``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow.pyfunc

from countclip.predict import CountPredictor

with warnings.catch_warnings():
    # MLflow nudges towards type-hinted predict(); the explicit signature logged with the model rules.
    warnings.simplefilter("ignore", UserWarning)

    class CountClipPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc: a DataFrame with ``noun`` and ``image`` (encoded bytes) or ``image_path`` in;
        ``count``, ``confidence`` and ``prob_2`` .. ``prob_10`` out. Rows may name different nouns."""

        def load_context(self, context) -> None:
            spec = json.loads(Path(context.artifacts["model_spec"]).read_text())
            self.predictor = CountPredictor.load(context.artifacts["checkpoint"], spec["arch"])

        def predict(self, context, model_input, params=None):
            import pandas as pd

            if "noun" not in model_input.columns or not ({"image", "image_path"} & set(model_input.columns)):
                raise ValueError("input needs a noun column and an image (bytes) or image_path column")
            images = model_input.get("image", pd.Series([None] * len(model_input), index=model_input.index))
            if "image_path" in model_input.columns:
                images = images.where(images.notna(), model_input["image_path"])
            rows = []
            for noun, group in model_input.groupby("noun", sort=False):
                for index, result in zip(group.index, self.predictor.count(list(images[group.index]), str(noun))):
                    rows.append({"index": index, "count": result["count"], "confidence": result["confidence"],
                                 **{f"prob_{c}": p for c, p in result["probabilities"].items()}})
            return pd.DataFrame(rows).set_index("index").loc[model_input.index].reset_index(drop=True)
