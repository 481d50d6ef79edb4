"""The verify stage (countclip.data.verify).

The stage tests run the shipped CountWorld checkpoint for real: the counts asserted are what it detects.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from countclip.config import ConfigError
from countclip.data.verify import (
    COUNTWORLD_WEIGHTS,
    VerifyConfig,
    YoloVerifier,
    caption_count,
    counted_class,
    decode_rgb,
)
from countclip.world.files import png_bytes
from countclip.world.scenes import PLURALS, SHAPES, render, sample_scene


def test_counted_class_prefers_noun_then_dominant_with_tie_rule():
    classes = np.array([3, 3, 5, 5, 1])
    conf = np.array([0.9, 0.9, 0.5, 0.5, 0.99], dtype=np.float32)
    assert counted_class(classes, conf, noun_class=1) == 1  # the noun's class, however rare
    assert counted_class(classes, conf, noun_class=7) == 7  # even when absent (counts 0)
    assert counted_class(np.array([2, 2, 4]), np.array([0.3, 0.3, 0.9]), None) == 2  # most frequent
    assert counted_class(classes, conf, None) == 3  # tie on count: larger summed confidence
    assert counted_class(np.array([6, 4]), np.array([0.5, 0.5]), None) == 4  # full tie: lower id
    assert counted_class(np.array([], dtype=np.int64), np.array([]), None) is None


@pytest.mark.parametrize("value, expected", [
    (3, 3), (np.int64(10), 10), (2.0, 2), ("7", 7), (None, None), (float("nan"), None), (0, None), (-1, None),
    (1, None), (11, None), (2.5, None), ("two", None), (math.inf, None),
])
def test_caption_count_accepts_only_counts_2_to_10(value, expected):
    assert caption_count(value) == expected


def test_decode_rgb():
    pixels = np.zeros((8, 12, 3), dtype=np.uint8)
    pixels[..., 0] = 200  # red: decoded as RGB, not BGR
    decoded = decode_rgb(png_bytes(pixels))
    assert decoded.shape == (8, 12, 3) and decoded[0, 0].tolist() == [200, 0, 0]
    for bad in (b"not an image", png_bytes(pixels)[:40], b"", None, "text", 3):
        assert decode_rgb(bad) is None


# ------------------------------------------------------------------------------------------------
# Config and loading


@pytest.mark.parametrize("field, value, words", [
    ("confidence", 1.5, "confidence"), ("iou", 0.0, "iou"), ("image_size", 100, "multiple of 32"),
    ("batch_size", 0, "batch_size"), ("device", "gpu", "device"), ("unmapped_noun", "guess", "unmapped_noun"),
    ("weights", "", "weights"),
])
def test_config_rejects_bad_values(field, value, words):
    with pytest.raises(ConfigError, match=words):
        VerifyConfig.from_dict({field: value})


def test_config_defaults_name_the_shipped_checkpoint():
    cfg = VerifyConfig.from_dict({"device": "cpu", "confidence": 0.4})
    assert cfg.resolved_weights() == str(COUNTWORLD_WEIGHTS) and COUNTWORLD_WEIGHTS.is_file()
    assert VerifyConfig(device="auto").resolved_device() in ("cpu", "cuda:0")


def test_missing_weights_raise_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "best.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        YoloVerifier(VerifyConfig(weights=str(missing), device="cpu"))


# ------------------------------------------------------------------------------------------------
# The stage on real detections




def scene_png(seed, count, distractors=0, shape=None):
    scene = sample_scene(np.random.default_rng(seed), count, distractors=distractors, shape=shape, same_size=True)
    return scene, png_bytes(render(scene, 128))


def test_shipped_checkpoint_knows_the_shapes(verifier):
    assert [verifier.names[i] for i in sorted(verifier.names)] == list(SHAPES)


def test_verify_stage_on_a_mixed_batch(verifier):
    # Scenes the shipped detector counts exactly (it misses about 1 in 75: tests/world/test_detector.py).
    honest = [scene_png(seed, count) for seed, count in ((10, 2), (11, 5), (35, 8), (13, 10))]
    liar_scene, liar = scene_png(20, 4)
    mixed_scene, mixed = scene_png(21, 3, distractors=4, shape="circle")  # 3 circles among 4 other shapes
    star_scene, stars = scene_png(22, 6, shape="star")
    rows = [  # (image, fetch_status, caption_count, noun, expected status, expected detected count)
        *[(png, "ok", s.count, PLURALS[s.shape], "verified", s.count) for s, png in honest],
        (liar, "ok", 7, PLURALS[liar_scene.shape], "count_mismatch", 4),  # the caption says 7, the image holds 4
        (mixed, "ok", 3, "red circles", "verified", 3),  # counts the named shape only
        (mixed, "ok", 7, "circles", "count_mismatch", 3),  # all objects are 7, circles 3
        (stars, "ok", 6, "things", "verified", 6),  # no class named: the dominant class
        (stars, "ok", 6, None, "verified", 6),
        (stars, "ok", 6, "hexagons", "no_detections", 0),  # named, but not there
        (stars, "ok", None, "stars", "skipped", -1),  # non-counting rows
        (stars, "ok", float("nan"), "stars", "skipped", -1),
        (stars, "ok", 0, "stars", "skipped", -1),
        (stars, "ok", -1, "stars", "skipped", -1),
        (None, "http_404", 3, "dogs", "skipped", -1),  # fetch failures
        (None, "timeout", float("nan"), None, "skipped", -1),
        (b"\x89PNG\r\n\x1a\n garbage", "ok", 3, "stars", "decode_error", -1),
        (None, "ok", 3, "stars", "decode_error", -1),
    ]
    n = len(rows)
    batch = {
        "image": np.array([r[0] for r in rows], dtype=object),
        "fetch_status": np.array([r[1] for r in rows], dtype=object),
        "caption_count": np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64),
        "noun": np.array([r[3] for r in rows], dtype=object),
        "url": np.array([f"file:///img/{i}.png" for i in range(n)], dtype=object),
        "score": np.arange(n, dtype=np.float32) / 10,
    }
    before = {k: v.copy() for k, v in batch.items()}
    out = verifier(batch)

    assert out["verify_status"].tolist() == [r[4] for r in rows]
    assert out["detected_count"].tolist() == [r[5] for r in rows]
    assert out["verified"].tolist() == [r[4] == "verified" for r in rows]
    assert out["detected_count"].dtype == np.int64 and out["verified"].dtype == bool
    classes = out["verify_class"].tolist()
    assert classes[:4] == [s.shape for s, _ in honest]
    assert classes[5:10] == ["circle", "circle", "star", "star", "hexagon"]
    assert classes[10:] == [""] * (n - 10)
    assert mixed_scene.distractor_shape != "circle" and star_scene.shape == "star"
    for key, value in before.items():  # input columns come back unchanged
        assert out[key] is batch[key]
        assert [repr(x) for x in out[key]] == [repr(x) for x in value]


def test_unmapped_noun_can_skip_rows(verifier):
    skip = YoloVerifier(VerifyConfig(device="cpu", unmapped_noun="skip"))
    _, stars = scene_png(22, 6, shape="star")
    out = skip({"image": np.array([stars, stars], dtype=object), "fetch_status": np.array(["ok", "ok"], dtype=object),
                "caption_count": np.array([6, 6]), "noun": np.array(["things", "stars"], dtype=object)})
    assert out["verify_status"].tolist() == ["unmapped_noun", "verified"]
    assert out["detected_count"].tolist() == [-1, 6] and out["verified"].tolist() == [False, True]


def test_predict_gets_arrays_in_chunks_of_batch_size(monkeypatch):
    small = YoloVerifier(VerifyConfig(device="cpu", batch_size=2))
    calls = []
    predict = small.model.predict

    def spy(source, **kwargs):
        calls.append((len(source), {type(x) for x in source}, kwargs["imgsz"]))
        return predict(source, **kwargs)

    monkeypatch.setattr(small.model, "predict", spy)
    scenes = [scene_png(30 + k, 3 + k) for k in range(5)]
    out = small({"image": np.array([png for _, png in scenes], dtype=object),
                 "fetch_status": np.array(["ok"] * 5, dtype=object),
                 "caption_count": np.array([s.count for s, _ in scenes]),
                 "noun": np.array([PLURALS[s.shape] for s, _ in scenes], dtype=object)})
    assert calls == [(2, {np.ndarray}, 128), (2, {np.ndarray}, 128), (1, {np.ndarray}, 128)]
    assert out["verified"].all()


def test_empty_and_all_skipped_batches(verifier):
    out = verifier({"image": np.array([], dtype=object), "fetch_status": np.array([], dtype=object),
                    "caption_count": np.array([], dtype=np.float64)})
    assert len(out["verify_status"]) == 0 and out["detected_count"].dtype == np.int64
    with pytest.raises(KeyError, match="fetch_status"):
        verifier({"image": np.array([None], dtype=object), "caption_count": np.array([3])})


def test_weights_from_s3(s3, verifier):
    from countclip import storage

    storage.write_bytes(f"s3://{s3}/detectors/cw.pt", COUNTWORLD_WEIGHTS.read_bytes())
    remote = YoloVerifier(VerifyConfig(weights=f"s3://{s3}/detectors/cw.pt", device="cpu"))
    assert remote.names == verifier.names




# ------------------------------------------------------------------------------------------------
# Training data and training






