
"""countclip.checkpoint: DCP training checkpoints, complete only with their step marker."""

import pytest
import torch

from countclip import checkpoint
from countclip.train import OptimConfig, build_scheduler

from .test_train import fresh_model


def test_incomplete_checkpoint_is_refused(tmp_path):
    model, _, _ = fresh_model()
    (tmp_path / "step_00000001").mkdir()
    opt = torch.optim.AdamW(model.parameters())
    sched = build_scheduler(opt, OptimConfig(), 10)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.load(tmp_path / "step_00000001", model, opt, sched)
    assert checkpoint.latest(tmp_path) is None


