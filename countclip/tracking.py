"""Every MLflow call: runs, params, metrics, artifacts, models and the registry.

Rank 0 of a training job logs metrics into a run the driver opened; the driver logs params,
config, dataset manifest and, at the end, the model. This module and the pyfunc flavour
(``countclip.pyfunc``) are the only ones that import MLflow, and only inside the functions that
need it: MLflow takes seconds to import, and `countclip count` on a checkpoint never needs it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from countclip.config import ConfigBase, require
from countclip.numbers import COUNTS


@dataclass
class TrackingConfig(ConfigBase):
    uri: str | None = None
    """MLflow tracking URI: an `mlflow server` (http://host:5000) in real use; null keeps a local
    sqlite store at runs/mlflow.db."""
    experiment: str = "countclip"
    """MLflow experiment name."""
    enabled: bool = True
    """Log to MLflow at all."""
    connect_timeout_s: int = 10
    """How long to wait for the tracking server before the job refuses to start."""

    def __post_init__(self) -> None:
        require(self.connect_timeout_s > 0, "tracking.connect_timeout_s must be positive")

    def resolved_uri(self) -> str:
        return self.uri or f"sqlite:///{Path('runs/mlflow.db').resolve()}"


# user:password@ in any URI (postgresql://u:pw@db/mlflow, https://u:pw@mlflow), a bare token as the
# user (https://token@host), and secrets in query strings (?password=..., &token=...).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]+)@")
_QUERY_SECRET = re.compile(r"(?i)(?P<key>[?&;](?:password|passwd|pwd|token|secret|api_?key|access_?key)=)[^&;#\s]+")


def mask_credentials(text: object) -> str:
    """``text`` with the secret of every URI in it replaced by ***: wherever a URI is printed or logged."""
    def userinfo(match: re.Match) -> str:
        user, sep, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:***@" if sep else f"{match['scheme']}***@"

    return _QUERY_SECRET.sub(r"\g<key>***", _USERINFO.sub(userinfo, str(text)))


def _sqlite_path(uri: str) -> Path | None:
    return Path(unquote(uri.removeprefix("sqlite:///"))) if uri.startswith("sqlite:///") else None


def _client(cfg: TrackingConfig):
    import mlflow

    mlflow.set_tracking_uri(cfg.resolved_uri())
    return mlflow.MlflowClient(cfg.resolved_uri())


def check_reachable(cfg: TrackingConfig) -> None:
    """Fail before any worker starts when the tracking store cannot be reached."""
    if not cfg.enabled:
        return
    uri = cfg.resolved_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=cfg.connect_timeout_s) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except OSError as exc:
            raise ConnectionError(f"MLflow tracking server {mask_credentials(uri)} is unreachable "
                                  f"({mask_credentials(exc)}); start it or fix tracking.uri") from None


def start_run(cfg: TrackingConfig, run_name: str, params: dict, artifacts: dict[str, str | dict]) -> str | None:
    """Open a run; log flattened params and the given artifacts (name -> text or JSON-able dict)."""
    if not cfg.enabled:
        return None
    client = _client(cfg)
    experiment = client.get_experiment_by_name(cfg.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        cfg.experiment, artifact_location=_artifact_location(cfg))
    run = client.create_run(experiment_id, run_name=run_name)
    flat = flatten(params)
    from mlflow.entities import Param

    items = [Param(k, mask_credentials(v)[:6000]) for k, v in flat.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    log_artifacts(cfg, run.info.run_id, artifacts)
    return run.info.run_id


def _artifact_location(cfg: TrackingConfig) -> str | None:
    """Where a new experiment's artifacts go: beside a sqlite store (MLflow's default is ./mlruns in
    whatever folder the job runs from); a tracking server decides for itself (None)."""
    db = _sqlite_path(cfg.resolved_uri())
    return (db.resolve().parent / "mlflow-artifacts").as_uri() if db else None


def log_artifacts(cfg: TrackingConfig, run_id: str | None, artifacts: dict[str, str | dict]) -> None:
    """Log text or JSON-able artifacts; secrets in URIs they hold (the tracking URI in a config) are masked."""
    if not (cfg.enabled and run_id):
        return
    client = _client(cfg)
    with tempfile.TemporaryDirectory() as folder:
        for name, content in artifacts.items():
            path = Path(folder) / name
            path.write_text(mask_credentials(content if isinstance(content, str) else json.dumps(content, indent=1)))
            client.log_artifact(run_id, str(path))


def log_file(cfg: TrackingConfig, run_id: str | None, path: str | Path, artifact_path: str | None = None) -> None:
    if cfg.enabled and run_id:
        _client(cfg).log_artifact(run_id, str(path), artifact_path)


def log_metric_rows(cfg: TrackingConfig, run_id: str | None, rows: list[dict[str, float]]) -> None:
    """Log each row's numbers at its "step" (one batch call)."""
    if not (cfg.enabled and run_id and rows):
        return
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(row["step"])) for row in rows for k, v in row.items() if k != "step"]
    client = _client(cfg)
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])


def set_tags(cfg: TrackingConfig, run_id: str | None, tags: dict[str, str]) -> None:
    if cfg.enabled and run_id:
        client = _client(cfg)
        for key, value in tags.items():
            client.set_tag(run_id, key, value)


def end_run(cfg: TrackingConfig, run_id: str | None, status: str = "FINISHED") -> None:
    if cfg.enabled and run_id:
        _client(cfg).set_terminated(run_id, status)


def metric_history(cfg: TrackingConfig, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client(cfg).get_metric_history(run_id, key))


def last_logged_step(cfg: TrackingConfig, run_id: str | None, key: str = "loss") -> int:
    """The highest step at which ``key`` is logged in the run (0 if none): where a restarted worker
    group takes up the publishing, so that steps it trains again are not logged twice."""
    if not (cfg.enabled and run_id):
        return 0
    return max((m.step for m in _client(cfg).get_metric_history(run_id, key)), default=0)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def quiet_mlflow() -> None:
    """MLflow's HTTP client retries for minutes by default; a job should fail fast instead."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def pinned_requirements() -> list[str]:
    """The model's runtime requirements, pinned to what is installed (no slow inference at log time)."""
    from importlib.metadata import version

    names = ["torch", "torchvision", "open_clip_torch", "numpy", "pandas", "pillow", "pyarrow", "pyyaml", "mlflow"]
    return [f"{name}=={version(name)}" for name in names] + [f"countclip=={version('countclip')}"]


def log_count_model(cfg: TrackingConfig, run_id: str, open_clip_folder: str | Path, example_image: bytes,
                    allow_image_paths: bool = False) -> str:
    """Log the pyfunc counting model, carrying the model's open_clip folder (``countclip export``) as
    its artifact; return its model URI.

    The model takes encoded image bytes only; ``allow_image_paths`` logs it for batch scoring on
    trusted hosts, where it also reads ``image_path`` rows from the disk it runs on (never serve
    such a model to callers who may not read that disk).
    """
    from importlib.util import find_spec

    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    _client(cfg)
    paths = [ColSpec("string", "image_path", required=False)] if allow_image_paths else []
    inputs = Schema([ColSpec("binary", "image", required=False), *paths, ColSpec("string", "noun")])
    outputs = Schema([ColSpec("long", "count"), ColSpec("double", "confidence")]
                     + [ColSpec("double", f"prob_{c}") for c in COUNTS])
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=find_spec("countclip.pyfunc").origin,  # a model from code, not a pickle
            artifacts={"open_clip": str(open_clip_folder)},
            model_config={"allow_image_paths": allow_image_paths},
            signature=ModelSignature(inputs, outputs),
            input_example=pd.DataFrame({"image": [example_image], "noun": ["circles"]}),
            pip_requirements=pinned_requirements(),
        )
    return info.model_uri


def is_model_uri(uri: str | None) -> bool:
    """Whether ``uri`` names an MLflow model (models:/name@alias, models:/name/3, runs:/id/path)."""
    return isinstance(uri, str) and uri.startswith(("models:/", "runs:/"))


def load_count_predictor(uri: str):
    """The ``CountPredictor`` inside a logged or registered counting model; FileNotFoundError when
    the registry (``MLFLOW_TRACKING_URI``) holds no such model."""
    import mlflow.pyfunc

    store = mlflow.get_tracking_uri()
    db = _sqlite_path(store)
    if db is not None and not db.is_file():  # MLflow would create an empty store (./mlflow.db by default)
        hint = "" if os.environ.get("MLFLOW_TRACKING_URI") else "; set MLFLOW_TRACKING_URI to the registry"
        raise FileNotFoundError(f"cannot load {uri}: the MLflow store {mask_credentials(store)} does not exist{hint}")
    try:
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().predictor
    except Exception as exc:  # MLflow raises several types for a missing model or registry
        raise FileNotFoundError(f"cannot load {uri}: {mask_credentials(exc)}") from None


def register_and_promote(cfg: TrackingConfig, model_uri: str, name: str, metrics: dict[str, float],
                         alias: str = "champion", zeroshot_tolerance: float = 0.03) -> dict:
    """Register a model version; move ``alias`` to it only if its count accuracy beats the current
    holder's without losing more than ``zeroshot_tolerance`` zero-shot accuracy. The comparison is
    recorded as tags on the new version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(cfg)
    version = mlflow.register_model(model_uri, name).version
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, key, f"{value:.6f}")
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    decision = {"version": version, "previous": current.version if current else None}
    if current is None:
        promote, reason = True, f"no {alias} yet"
    else:
        old = {k: float(current.tags.get(k, "nan")) for k in ("count_accuracy", "zeroshot_accuracy")}
        better = metrics["count_accuracy"] > old["count_accuracy"]
        kept = metrics["zeroshot_accuracy"] >= old["zeroshot_accuracy"] - zeroshot_tolerance
        promote = better and kept
        reason = (f"count accuracy {metrics['count_accuracy']:.4f} vs {old['count_accuracy']:.4f} "
                  f"(v{current.version}); zero-shot {metrics['zeroshot_accuracy']:.4f} vs "
                  f"{old['zeroshot_accuracy']:.4f}, tolerance {zeroshot_tolerance}")
    client.set_model_version_tag(name, version, "promotion", ("promoted: " if promote else "not promoted: ") + reason)
    if promote:
        client.set_registered_model_alias(name, alias, version)
    return decision | {"promoted": promote, "reason": reason}
