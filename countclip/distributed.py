"""The only home of parallelism: rank helpers, model wrapping (FSDP2 / DDP), state dicts.

Everything here degrades to the single-process case, so the training loop calls the same functions
with world size 1 on a laptop and under Ray Train on a cluster.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over ranks (for logging one number per step)."""
    if not is_distributed():
        return value.detach()
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world_size()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state dict (collective under FSDP: call on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
