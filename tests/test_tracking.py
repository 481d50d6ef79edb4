"""countclip.tracking: the logged counting model, registry promotion, model URIs."""


from pathlib import Path

from countclip import tracking

from .conftest import scene_png


def test_promotion_only_for_a_better_model(open_clip_folders, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    cfg = tracking.TrackingConfig(uri=uri, experiment="promo")
    image = scene_png()
    model_uri = tracking.log_count_model(cfg, tracking.start_run(cfg, "r", {}, {}), open_clip_folders / "a", image)

    first = tracking.register_and_promote(cfg, model_uri, "m", {"count_accuracy": 0.5, "zeroshot_accuracy": 0.7})
    assert first["promoted"] and first["reason"] == "no champion yet"
    worse = tracking.register_and_promote(cfg, model_uri, "m", {"count_accuracy": 0.4, "zeroshot_accuracy": 0.9})
    assert not worse["promoted"]
    forgetful = tracking.register_and_promote(cfg, model_uri, "m", {"count_accuracy": 0.9, "zeroshot_accuracy": 0.6})
    assert not forgetful["promoted"]  # counts better, but lost 10 points of zero-shot accuracy
    better = tracking.register_and_promote(cfg, model_uri, "m", {"count_accuracy": 0.6, "zeroshot_accuracy": 0.69})
    assert better["promoted"]
    client = mlflow.MlflowClient(uri)
    assert client.get_model_version_by_alias("m", "champion").version == better["version"]
    tags = client.get_model_version("m", worse["version"]).tags
    assert tags["promotion"].startswith("not promoted: count accuracy 0.4000 vs 0.5000")






def test_credentials_in_uris_are_masked_wherever_they_are_printed_or_logged(tmp_path, monkeypatch):
    import mlflow
    import pytest

    assert tracking.mask_credentials("postgresql://ml:s3cret@db:5432/mlflow") == "postgresql://ml:***@db:5432/mlflow"
    assert tracking.mask_credentials("see https://tok@h/x?api_key=k&b=1") == "see https://***@h/x?api_key=***&b=1"
    with pytest.raises(ConnectionError) as error:
        tracking.check_reachable(tracking.TrackingConfig(uri="http://ann:hunter2@127.0.0.1:9", connect_timeout_s=2))
    assert "hunter2" not in str(error.value) and "ann:***@" in str(error.value)
    monkeypatch.chdir(tmp_path)
    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path / 'store' / 'ml.db'}", experiment="mask")
    secret = {"tracking": {"uri": "https://ann:hunter2@mlflow.example/"}}
    run_id = tracking.start_run(cfg, "r", secret, {"config.yaml": "uri: https://ann:hunter2@mlflow.example/\n"})
    client = mlflow.MlflowClient(cfg.resolved_uri())
    assert client.get_run(run_id).data.params["tracking.uri"] == "https://ann:***@mlflow.example/"
    logged = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                      dst_path=str(tmp_path / "dl"), tracking_uri=cfg.resolved_uri()))
    assert "hunter2" not in logged.read_text()
    # Artifacts go beside the sqlite store, not to ./mlruns of the folder the job runs from.
    assert not (tmp_path / "mlruns").exists() and (tmp_path / "store" / "mlflow-artifacts").is_dir()


def test_loading_a_registered_model_never_creates_a_store(tmp_path, monkeypatch):
    """(Without any tracking URI, MLflow would create ./mlflow.db: the corpus in tests/e2e/test_bad_input.py
    runs that case in a fresh process.)"""
    import mlflow
    import pytest

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'none.db'}")
    try:
        with pytest.raises(FileNotFoundError, match="the MLflow store .*none.db does not exist"):
            tracking.load_count_predictor("models:/countclip@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    assert list(tmp_path.iterdir()) == []
