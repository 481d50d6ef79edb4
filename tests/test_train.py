"""countclip.train: the loop's named loss terms, the control, resume, the schedule."""

import shutil

import pytest
import torch

from countclip import checkpoint
from countclip.data.batches import TrainingStream
from countclip.model import ModelConfig, create_model
from countclip.train import LossConfig, OptimConfig, TrainConfig, build_scheduler, train
from countclip.world.files import write_clean_dataset


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("small") / "dataset")
    write_clean_dataset(out, seed=11, rows=96, image_size=64, counting_share=0.4)
    return out


def fresh_model():
    torch.manual_seed(0)
    return create_model(ModelConfig(arch="countclip-tiny"))


def stream(dataset, cfg, preprocess):
    return TrainingStream.for_training(dataset, cfg, preprocess)


def config(**changes):
    base = TrainConfig(steps=6, batch_size=16, counting_fraction=0.25, log_every=1, seed=3,
                       optim=OptimConfig(lr=5e-4, warmup_steps=2), loss=LossConfig(count_lambda=2.0))
    return base.replace(**changes)


def test_loss_terms_are_logged_and_training_reduces_the_loss(small_dataset):
    model, preprocess, tokenizer = fresh_model()
    rows = []
    cfg = config(steps=12, optim=OptimConfig(lr=2e-3, warmup_steps=1))
    result = train(cfg, model, tokenizer, stream(small_dataset, cfg, preprocess), log=lambda step, row: rows.append((step, row)))
    assert [s for s, _ in rows] == list(range(1, 13))
    assert {"clip_loss", "count_loss", "loss", "lr", "samples_per_s", "logit_scale"} <= set(rows[0][1])
    first, last = rows[0][1], rows[-1][1]
    assert last["loss"] < first["loss"]
    assert rows[0][1]["loss"] == pytest.approx(rows[0][1]["clip_loss"] + rows[0][1]["count_loss"], rel=1e-5)
    assert result.steps == 12 and result.count_only_negatives >= 0


def test_siglip_training_logs_its_terms_and_learns_the_logit_bias(small_dataset):
    from countclip.config import ConfigError

    torch.manual_seed(0)
    model, preprocess, tokenizer = create_model(ModelConfig(arch="countclip-tiny-sigmoid"))
    siglip = LossConfig(count_lambda=2.0, contrastive="siglip")
    rows = []
    cfg = config(steps=12, optim=OptimConfig(lr=2e-3, warmup_steps=1), loss=siglip)
    train(cfg, model, tokenizer, stream(small_dataset, cfg, preprocess), log=lambda step, row: rows.append(row))
    assert {"siglip_loss", "count_loss", "logit_bias"} <= set(rows[0]) and "clip_loss" not in rows[0]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["logit_bias"] != pytest.approx(-10.0)  # the bias trains with the towers
    plain, _, _ = fresh_model()
    cfg = config(steps=1, loss=siglip)
    with pytest.raises(ConfigError, match="loss.contrastive siglip needs a model with a logit bias"):
        train(cfg, plain, tokenizer, stream(small_dataset, cfg, preprocess))


def test_control_has_no_counting_term(small_dataset):
    model, preprocess, tokenizer = fresh_model()
    cfg = config(steps=2, loss=LossConfig(count_lambda=0.0))
    result = train(cfg, model, tokenizer, stream(small_dataset, cfg, preprocess))
    assert "count_loss" not in result.history[-1]


def test_a_stream_for_another_config_is_refused(small_dataset):
    model, preprocess, tokenizer = fresh_model()
    with pytest.raises(ValueError, match="opened for another batch size"):
        train(config(), model, tokenizer, stream(small_dataset, config(batch_size=20), preprocess))


def test_resume_after_a_crash_equals_an_uninterrupted_run(small_dataset, tmp_path):
    """The resumed run continues the stream at the checkpointed step: the same rows, the same model."""
    model_a, preprocess, tokenizer = fresh_model()
    train(config(), model_a, tokenizer, stream(small_dataset, config(), preprocess))

    model_b, _, _ = fresh_model()
    run_dir = tmp_path / "ckpt"
    cfg = config(checkpoint_dir=str(run_dir), checkpoint_every=3)
    train(cfg, model_b, tokenizer, stream(small_dataset, cfg, preprocess))
    assert checkpoint.latest(run_dir).name == "step_00000006"
    shutil.rmtree(run_dir / "step_00000006")  # the crash: the last save never happened
    (run_dir / "step_00000006").mkdir()  # ...and a half-written folder without its marker is left
    assert checkpoint.latest(run_dir).name == "step_00000003"

    model_c, _, _ = fresh_model()
    resumed = train(cfg, model_c, tokenizer, stream(small_dataset, cfg, preprocess))
    assert resumed.steps == 3 and [r["step"] for r in resumed.history] == [4, 5, 6]
    for (name, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6, msg=name)


def test_schedule_warms_up_then_decays():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1), steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(b <= a for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] == pytest.approx(0.1, abs=0.02)




def test_preserve_lambda_keeps_plain_image_features_near_the_start(small_dataset):
    """loss.preserve_lambda adds a logged term that pulls the plain rows' image embeddings back to the
    frozen starting model's: with it they move less over the same steps than without."""
    import torch.nn.functional as F

    def drift(preserve: float) -> tuple[float, dict]:
        model, preprocess, tokenizer = fresh_model()
        images = torch.randn(24, 3, 64, 64)
        with torch.no_grad():
            before = F.normalize(model.visual(images), dim=-1)
        cfg = config(steps=12, optim=OptimConfig(lr=3e-3, warmup_steps=1),
                     loss=LossConfig(count_lambda=2.0, preserve_lambda=preserve))
        result = train(cfg, model, tokenizer, stream(small_dataset, cfg, preprocess))
        model.eval()
        with torch.no_grad():
            after = F.normalize(model.visual(images), dim=-1)
        return float((after - before).pow(2).sum(-1).mean()), result.history[-1]

    free, free_row = drift(0.0)
    kept, kept_row = drift(50.0)
    assert "preserve_loss" not in free_row and kept_row["preserve_loss"] >= 0
    assert kept_row["loss"] == pytest.approx(kept_row["clip_loss"] + kept_row["count_loss"] + kept_row["preserve_loss"],
                                             rel=1e-5)
    assert kept < 0.5 * free, (kept, free)


def test_preserve_lambda_must_not_be_negative():
    from countclip.config import ConfigError

    with pytest.raises(ConfigError, match="loss.preserve_lambda must be >= 0"):
        LossConfig(preserve_lambda=-1.0)
