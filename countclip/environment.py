"""The one place that sets the libraries' process-wide switches: offline modes, caches, telemetry.

Called by the CLI, the ray_jobs entrypoints and the test suite, never at import. Offline is the
default, so nothing in a demo or a test tries the network; ``COUNTCLIP_OFFLINE=0`` lets open_clip
download pretrained weights from the hub on a cluster that has the internet.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

TELEMETRY_OFF = {
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray's usage-stats upload
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "YOLO_OFFLINE": "1",  # ultralytics: no version check, no GitHub asset look-ups
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow's INFO chatter (schema migrations, input checks); its warnings stay
}
HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def default_cache_dir() -> Path:
    """$COUNTCLIP_CACHE, else a countclip folder in the system temp dir (never the home directory)."""
    return Path(os.environ.get("COUNTCLIP_CACHE") or Path(tempfile.gettempdir()) / "countclip-cache")


def offline_requested() -> bool:
    return os.environ.get("COUNTCLIP_OFFLINE", "1").strip().lower() not in ("0", "false", "no")


def configure_environment(cache_dir: str | Path | None = None, *, offline: bool | None = None) -> Path:
    """Set the switches (without overriding what the user already exported); return the cache dir.

    Caches of ultralytics and matplotlib go under ``cache_dir`` (default: a countclip folder in the
    system temp dir), so nothing is written to the home directory.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    switches = dict(TELEMETRY_OFF)
    if offline_requested() if offline is None else offline:
        switches |= HUB_OFFLINE
    switches |= {
        "YOLO_CONFIG_DIR": str(cache / "ultralytics"),
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "COUNTCLIP_CACHE": str(cache),
    }
    if not sys.stderr.isatty():  # in a log, MLflow's artifact download bar is carriage-return noise
        switches["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for key, value in switches.items():
        os.environ.setdefault(key, value)
    for key in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    return cache


def ray_init_args(address: str | None, local_cpus: int | None) -> dict:
    """ray.init arguments: join the cluster at ``address`` (or RAY_ADDRESS, as under `ray job submit`),
    else start a private local instance bound to 127.0.0.1."""
    if address or os.environ.get("RAY_ADDRESS"):
        return {"address": address}
    return {"num_cpus": local_cpus, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}


def configure_ray_data_output(progress: bool) -> None:
    """What Ray Data prints in this process. ``progress=False`` (the CLI's default): no progress bars,
    whose non-terminal form dumps every operator's state into the log every few seconds, and only
    warnings and errors of Ray Data's logger on the console (its INFO lines, progress included, still
    go to the session's logs/ray-data/ray-data.log). ``progress=True``: Ray Data's own defaults."""
    from ray.data import DataContext
    from ray.data._internal.logging import SessionFileHandler

    DataContext.get_current().enable_progress_bars = progress
    level = logging.NOTSET if progress else logging.WARNING
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):  # the console handler; the log file keeps everything
            handler.setLevel(level)
    # With the bars off on purpose, Ray Data's one-time notice that they are off says nothing new.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.NOTSET if progress else logging.ERROR)
