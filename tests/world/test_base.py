"""The CountWorld base's recipe: its options, and a tiny run of the whole pretraining to a loadable file and card."""

import hashlib
import json

import numpy as np
import pytest

from countclip.config import ConfigError
from countclip.model import ModelConfig, create_model
from countclip.world import base as base_module
from countclip.world.base import BaseRecipe, _Scenes, pretrain_base
from countclip.world.scenes import VAGUE_BY_NUMEROSITY, VAGUE_QUANTITIES, CaptionStyle, caption

NUMEROSITY_ONLY = {w for _, words in VAGUE_BY_NUMEROSITY for w in words} - set(VAGUE_QUANTITIES)


def _quantities(numerosity: bool) -> set[str]:
    rows, _ = _Scenes(np.random.default_rng(0), 32, CaptionStyle(numerosity=numerosity))(200)
    return {w for c in rows.captions for w in NUMEROSITY_ONLY if f" {w} " in f" {c} "}


def test_numerosity_words_are_an_option_of_the_recipe():
    assert NUMEROSITY_ONLY, "the world has numerosity words that plain quantity words do not include"
    assert _quantities(True)  # the shipped base's captions say "a few", "many"
    assert not _quantities(False)  # without them no caption's quantity word depends on the count


@pytest.mark.parametrize("override", ["device=tpu", "sup_steps=0", "clip_lr=0"])
def test_bad_recipe_values_are_refused(override):
    with pytest.raises(ConfigError):
        BaseRecipe.load(None, [override])


@pytest.mark.slow
def test_a_tiny_pretraining_writes_a_base_that_loads_and_a_card_that_describes_it(tmp_path, monkeypatch):
    styles = []  # every caption the run writes, as the recipe's option made it

    def recording_caption(scene, rng, *, with_count, style):
        styles.append(style.numerosity)
        return caption(scene, rng, with_count=with_count, style=style)

    monkeypatch.setattr(base_module, "caption", recording_caption)
    recipe = BaseRecipe(batch=8, sup_steps=2, lit_steps=2, clip_steps=2, numerosity_words=False, threads=1)
    path = pretrain_base(tmp_path, recipe, echo=lambda line: None)
    assert styles and not any(styles)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "numerosity_words=False" in card["command"] and "no numerosity words" in card["world"]
    assert set(card["accuracy"]) == {"shape", "colour", "background", "count"}
    assert all(0.0 <= v <= 1.0 for v in card["accuracy"].values())
    model, _, _ = create_model(ModelConfig(arch=recipe.arch, pretrained=str(path)))
    assert sum(p.numel() for p in model.parameters()) > 0
