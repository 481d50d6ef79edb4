from dataclasses import dataclass, field

import pytest

from countclip.config import ConfigBase, ConfigError, require
from countclip.jobs.experiment import ExperimentConfig
from countclip.train import TrainConfig


@dataclass
class Inner(ConfigBase):
    rate: float = 0.5
    name: str = "x"

    def __post_init__(self):
        require(0 <= self.rate <= 1, f"rate must be in [0, 1], got {self.rate}")


@dataclass
class Outer(ConfigBase):
    steps: int = 3
    flag: bool = False
    tags: list[str] = field(default_factory=list)
    maybe: int | None = None
    inner: Inner = field(default_factory=lambda: Inner(name="from-factory"))


def test_defaults_and_round_trip(tmp_path):
    cfg = Outer.from_dict({"steps": 5, "inner": {"rate": 0.25}})
    assert cfg.steps == 5 and cfg.inner.rate == 0.25
    assert cfg.inner.name == "from-factory"  # a partial section keeps its parent's defaults
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert Outer.load(path) == cfg


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match=r"inner: unknown field\(s\) \['rte'\]"):
        Outer.from_dict({"inner": {"rte": 0.1}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"steps": "many"}, "steps: expected an integer"),
        ({"steps": 2.5}, "steps: expected an integer"),
        ({"flag": "yes"}, "flag: expected true or false"),
        ({"tags": "a"}, "tags: expected a list"),
        ({"inner": {"rate": 2.0}}, "inner: rate must be in"),
        ({"inner": 3}, "inner: expected a mapping"),
    ],
)
def test_ill_typed_values_are_rejected_clearly(data, message):
    with pytest.raises(ConfigError, match=message):
        Outer.from_dict(data)


def test_scalars_are_coerced_losslessly():
    cfg = Outer.from_dict({"steps": 4.0, "maybe": None, "inner": {"rate": "1e-1"}})
    assert cfg.steps == 4 and cfg.maybe is None and cfg.inner.rate == pytest.approx(0.1)


def test_overrides_reach_nested_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\ninner:\n  name: file\n")
    cfg = Outer.load(path, ["inner.rate=0.75", "tags=[a, b]", "flag=true"])
    assert (cfg.steps, cfg.inner.name, cfg.inner.rate, cfg.tags, cfg.flag) == (7, "file", 0.75, ["a", "b"], True)


def test_bad_override_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="field.subfield=value"):
        Outer.load(None, ["steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        Outer.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Outer.load(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        Outer.load(listing)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("steps: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Outer.load(path)


def test_real_configs_validate_their_rules():
    with pytest.raises(ConfigError, match="batch_size must be at least 2"):
        TrainConfig.from_dict({"batch_size": 1})
    with pytest.raises(ConfigError, match=r"loss: loss.counterfactuals must be in 1..8"):
        TrainConfig.from_dict({"loss": {"counterfactuals": 9}})
    with pytest.raises(ConfigError, match="pretrain.loss.count_lambda must be 0"):
        ExperimentConfig.from_dict({"pretrain": {"counting_fraction": 0.5, "loss": {"count_lambda": 1.0}}})
    exp = ExperimentConfig.from_dict({"finetune": {"steps": 10}})
    assert exp.finetune.steps == 10 and exp.finetune.loss.count_lambda > 0  # experiment defaults kept
