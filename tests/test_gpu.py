"""The training step on a CUDA device (bf16 autocast, batches moved with non-blocking copies).

Marked gpu: it runs where a GPU is (bench/gpu_checks.py covers throughput); elsewhere it is skipped
with the reason shown in the test summary.
"""

import pytest
import torch

from countclip.data.batches import TrainingStream
from countclip.model import ModelConfig, create_model
from countclip.train import LossConfig, OptimConfig, TrainConfig, train
from countclip.world.files import write_clean_dataset

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]


def test_bf16_training_steps_on_cuda_reduce_the_loss(tmp_path):
    write_clean_dataset(str(tmp_path / "d"), seed=1, rows=128, image_size=64, counting_share=0.4)
    torch.manual_seed(0)
    model, preprocess, tokenizer = create_model(ModelConfig(arch="countclip-tiny"), "cuda")
    cfg = TrainConfig(steps=20, batch_size=32, counting_fraction=0.25, log_every=1, autocast_bf16=True,
                      optim=OptimConfig(lr=5e-4, warmup_steps=2), loss=LossConfig(count_lambda=1.0))
    data = TrainingStream.for_training(str(tmp_path / "d"), cfg, preprocess)
    history = train(cfg, model, tokenizer, data, device="cuda").history
    assert history[-1]["loss"] < history[0]["loss"]
    assert next(model.parameters()).device.type == "cuda"
