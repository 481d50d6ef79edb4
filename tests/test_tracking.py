"""countclip.tracking: the logged counting model, registry promotion, model URIs."""


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






