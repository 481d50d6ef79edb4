"""Training checkpoints: model, optimizer, scheduler and step, saved with torch.distributed.checkpoint.

The same code saves a single-process model and an FSDP-sharded one (each rank writes its shards).
A checkpoint folder is complete only once ``step.json`` is in it, written last, so a crash mid-save
never leaves a checkpoint that looks usable. Non-tensor entries (optimizer hyper-parameters) are
unpickled with ``weights_only=True`` (DCP's default planner would unpickle anything), and the step
marker is JSON.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from countclip import storage
from countclip.distributed import is_distributed, is_main_process

MARKER = "step.json"
# FSDP1 needs flattened optimizer state for DCP (field notes); harmless for FSDP2, DDP and plain models.
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, but bytes entries only unpickle plain data (weights_only=True)."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def training_state(model: nn.Module, optimizer, scheduler) -> dict:
    model_state, optim_state = get_state_dict(model, optimizer, options=OPTIONS)
    return {"model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict()}


def save(folder: str | Path, model: nn.Module, optimizer, scheduler, step: int, extra: dict | None = None) -> Path:
    """Save into ``folder`` (every rank calls this); return it. Overwrites a stale partial save."""
    folder = Path(folder)
    if is_main_process() and folder.exists():
        shutil.rmtree(folder)
    _barrier()
    dcp.save(training_state(model, optimizer, scheduler), checkpoint_id=str(folder))
    _barrier()
    if is_main_process():
        storage.write_text(folder / MARKER, json.dumps({"step": step, **(extra or {})}))
    _barrier()
    return folder


def load(folder: str | Path, model: nn.Module, optimizer, scheduler) -> dict:
    """Restore a complete checkpoint in place; return its marker (step and extras)."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint (no {MARKER})")
    state = training_state(model, optimizer, scheduler)
    dcp.load(state, checkpoint_id=str(folder), planner=SafeLoadPlanner())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=OPTIONS)
    scheduler.load_state_dict(state["scheduler"])
    return json.loads(marker.read_text())


def load_model_weights(folder: str | Path, model: nn.Module) -> dict:
    """Load only the model weights of a training checkpoint into an unsharded model (export, eval)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint (no {MARKER})")
    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(folder), planner=SafeLoadPlanner())
    set_model_state_dict(model, state["model"])
    return json.loads(marker.read_text())


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder (``step_NNNNNNNN``) under root, if any."""
    root = Path(root)
    done = sorted(p.parent for p in root.glob(f"step_*/{MARKER}")) if root.is_dir() else []
    return done[-1] if done else None


def folder_for(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def _barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()
