"""countclip.distributed: the single-process fallbacks and the wrapping rules (the 2-rank paths run in
tests/test_losses.py and tests/jobs/test_train.py)."""

import pytest
import torch

from countclip.distributed import gather_objects, mean_across_ranks, rank, shard_model, unwrap, world_size


def test_single_process_fallbacks(tiny_model):
    assert (rank(), world_size()) == (0, 1)
    assert gather_objects({"node": "a"}) == [{"node": "a"}]
    assert mean_across_ranks(torch.tensor(2.5)).item() == 2.5
    model = tiny_model[0]
    assert shard_model(model, "none", torch.device("cpu")) is model and unwrap(model) is model


def test_parallel_strategies_need_a_process_group(tiny_model):
    with pytest.raises(RuntimeError, match="needs torch.distributed"):
        shard_model(tiny_model[0], "fsdp", torch.device("cpu"))
