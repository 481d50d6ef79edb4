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


def gather_objects(value: object) -> list:
    """Every rank's ``value``, in rank order (collective: every rank calls it); [value] alone."""
    if not is_distributed():
        return [value]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state dict (collective under FSDP: call on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of both towers: FSDP's sharding units (one all-gather per block)."""
    from open_clip.transformer import ResidualAttentionBlock

    return [m for m in model.modules() if isinstance(m, ResidualAttentionBlock)]


def shard_model(
    model: nn.Module,
    strategy: str,
    device: torch.device,
    *,
    mixed_precision: bool = True,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """Wrap ``model`` for data-parallel training; the same call on CPU (gloo) and GPU (NCCL).

    fsdp: FSDP2 ``fully_shard`` on every residual block of both towers, then on the root, so only one
    block's full parameters exist at a time; bf16 compute with fp32 gradient reduction on GPU.
    ddp: DistributedDataParallel (whole replicas; the baseline FSDP is measured against).
    none: the model as is (single process).
    Ray's ``prepare_model(parallel_strategy="fsdp")`` refuses CPU, hence this function.
    """
    if activation_checkpointing:
        model.set_grad_checkpointing(True)
    if strategy == "none":
        return model
    if not is_distributed():
        raise RuntimeError(f"strategy {strategy!r} needs torch.distributed; start the process group first")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if strategy != "fsdp":
        raise ValueError(f"unknown strategy {strategy!r}; use fsdp, ddp or none")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if getattr(model, "logit_bias", None) is not None:
        # Registered before fully_shard, so it runs before FSDP2's post-forward reshard (see the hook).
        model.register_forward_hook(_copy_logit_bias)
    mesh = init_device_mesh(device.type, (world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if mixed_precision and device.type == "cuda" else MixedPrecisionPolicy())
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    # Evaluation calls encode_image/encode_text directly; FSDP2 must gather parameters for them too.
    register_fsdp_forward_method(model, "encode_image")
    register_fsdp_forward_method(model, "encode_text")
    return model


def _copy_logit_bias(module: nn.Module, inputs, output):
    """open_clip's SigLIP forward returns the logit_bias parameter itself; under FSDP2 that is the
    unsharded parameter, whose storage the reshard right after forward frees (the loss then read freed
    memory: a segfault). Hand the loss a differentiable copy; its gradient still reaches the parameter."""
    if isinstance(output, tuple) and len(output) == 4:
        return (*output[:3], output[3].clone())
    if isinstance(output, dict) and "logit_bias" in output:
        return output | {"logit_bias": output["logit_bias"].clone()}
    return output


def unwrap(model: nn.Module) -> nn.Module:
    """The open_clip model inside a DDP wrapper (FSDP2 keeps the module itself)."""
    return getattr(model, "module", model)
