"""countclip.environment: offline switches that never override what the user exported."""

from countclip import environment


def test_switches_and_cache_respect_the_user(tmp_path, monkeypatch):
    monkeypatch.setenv("COUNTCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "user-choice")
    for key in ("HF_HUB_OFFLINE", "YOLO_CONFIG_DIR", "MPLCONFIGDIR"):
        monkeypatch.delenv(key, raising=False)
    assert environment.default_cache_dir() == tmp_path / "cache"
    cache = environment.configure_environment(offline=True)
    import os

    assert cache == tmp_path / "cache" and (cache / "ultralytics").is_dir()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "user-choice" and os.environ["HF_HUB_OFFLINE"] == "1"


def test_ray_init_joins_a_cluster_or_starts_a_private_one(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert environment.ray_init_args(None, 2) == {"num_cpus": 2, "include_dashboard": False,
                                                  "_node_ip_address": "127.0.0.1"}
    assert environment.ray_init_args("ray://head:10001", None) == {"address": "ray://head:10001"}
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert environment.ray_init_args(None, None) == {"address": None}
