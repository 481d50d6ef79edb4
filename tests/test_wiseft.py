"""WiSE-FT interpolation: exact at both ends, linear between, clear errors, the table and the plot."""

import json

import pytest
import torch

from countclip.config import ConfigError
from countclip.wiseft import check_alpha, format_markdown, interpolate, parse_alphas, write_curve


def states(seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(4, 3, generator=g), "logit_scale": torch.tensor([2.6]), "ids": torch.arange(3)}
    tuned = {"w": torch.randn(4, 3, generator=g), "logit_scale": torch.tensor([4.1]), "ids": torch.arange(3)}
    return base, tuned


def test_alpha_zero_is_the_base_and_one_the_finetuned_model_exactly():
    base, tuned = states()
    for name in base:
        assert torch.equal(interpolate(base, tuned, 0.0)[name], base[name])
        assert torch.equal(interpolate(base, tuned, 1.0)[name], tuned[name])
    half = interpolate(base, tuned, 0.5)
    torch.testing.assert_close(half["w"], (base["w"] + tuned["w"]) / 2)
    torch.testing.assert_close(half["logit_scale"], torch.tensor([3.35]))


def test_mismatched_models_and_alphas_outside_the_unit_interval_fail_clearly():
    base, tuned = states()
    with pytest.raises(ValueError, match="differ in their weights"):
        interpolate(base, {k: v for k, v in tuned.items() if k != "w"}, 0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        interpolate(base, tuned | {"w": torch.zeros(2, 3)}, 0.5)
    with pytest.raises(ValueError, match="integer tensors that differ"):
        interpolate(base, tuned | {"ids": torch.arange(1, 4)}, 0.5)
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ConfigError, match=r"alpha must be a number in \[0, 1\]"):
            check_alpha(bad)
    assert parse_alphas("0, 0.25,1") == [0.0, 0.25, 1.0]
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        parse_alphas("0,x")
    with pytest.raises(ConfigError, match="got 2.0"):
        parse_alphas("0,2")


def test_the_curve_is_written_as_json_markdown_and_png(tmp_path):
    rows = [{"alpha": a, "count_accuracy": 0.1 + 0.3 * a, "zeroshot_accuracy": 0.7 - 0.1 * a,
             "zeroshot_by_task": {"shape": 0.2, "colour": 0.9}} for a in (0.0, 0.5, 1.0)]
    paths = write_curve(rows, tmp_path, "t", {"seed": 3})
    assert json.loads((tmp_path / "wise_ft.json").read_text()) == {"seed": 3, "rows": rows}
    table = (tmp_path / "wise_ft.md").read_text()
    assert "| 0.50 | 25.0% | 65.0% | 20.0% | 90.0% |" in table and table == f"t\n\n{format_markdown(rows)}"
    assert (tmp_path / "wise_ft.png").read_bytes()[:4] == b"\x89PNG" and paths["png"].endswith("wise_ft.png")
