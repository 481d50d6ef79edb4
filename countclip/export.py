"""The open_clip folder export: the layout stock open_clip, CLIP_benchmark and the Hugging Face hub read.

    countclip export runs/experiment/checkpoints/countclip.pt --arch countclip-tiny --out runs/countclip-tiny
    open_clip.create_model_and_transforms("local-dir:runs/countclip-tiny")   # no countclip code needed

The folder is open_clip's hub layout (``open_clip.push_to_hf_hub.save_for_hf``): ``open_clip_config.json``
with ``model_cfg`` (the architecture itself, so nothing has to be registered) and ``preprocess_cfg``
(size, mean, std, interpolation, resize mode), ``open_clip_model.safetensors``, and a ``README.md``
model card with the evaluation figures when they are known. ``save_for_hf`` itself is not used: it
writes no image size and asks the tokenizer to save itself, which open_clip's SimpleTokenizer cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from countclip import storage
from countclip.config import ConfigError
from countclip.model import (
    ModelConfig,
    create_model,
    export_state_dict,
    open_clip_name,
    preprocess_config,
    register_architectures,
)

CONFIG_NAME = "open_clip_config.json"  # open_clip.constants.HF_CONFIG_NAME
WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
CARD_NAME = "README.md"


def model_config(name: str) -> dict:
    """open_clip's model_cfg of an architecture name or a ``local-dir:``/``hf-hub:`` folder."""
    import open_clip

    register_architectures()
    config = open_clip.get_model_config(name)
    if config is None:
        raise ConfigError(f"open_clip has no model config for {name!r} (open_clip.list_models() lists them)")
    return config


def folder_files(model: nn.Module, model_cfg: dict, card: str) -> dict[str, bytes]:
    """The folder's files as bytes, the config last (it is what a reader opens first)."""
    from safetensors.torch import save

    weights = {k: v.contiguous() for k, v in export_state_dict(model).items()}
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_config(model).items()}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    return {WEIGHTS_NAME: save(weights), CARD_NAME: card.encode(),
            CONFIG_NAME: (json.dumps(config, indent=2) + "\n").encode()}


def model_card(name: str, metrics: dict[str, float] | None = None, source: str | None = None) -> str:
    """A short model card: what the model is, how to load it, and its evaluation figures if known."""
    lines = ["---", "tags:", "- clip", "- counting", "library_name: open_clip",
             "pipeline_tag: zero-shot-image-classification", "---",
             f"# {name}, fine-tuned with countclip", "",
             "An open_clip model fine-tuned with countclip: counting-contrastive fine-tuning, "
             "L = L_clip + λ·L_count (Paiss et al., *Teaching CLIP to Count to Ten*, ICCV 2023).",
             *([f"Exported from `{source}`."] if source else []), "",
             "## Use", "", "```python", "import open_clip", "",
             'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:THIS_FOLDER")',
             'tokenizer = open_clip.get_tokenizer("local-dir:THIS_FOLDER")', "```", "",
             "CLIP_benchmark: `clip_benchmark eval --model local-dir:THIS_FOLDER --dataset ...`.", ""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items()]
        lines.append("")
    else:
        lines += ["## Evaluation", "", "Not evaluated at export time.", ""]
    return "\n".join(lines)


def write_open_clip_folder(model: nn.Module, out: str | Path, model_cfg: dict, name: str,
                           metrics: dict[str, float] | None = None, source: str | None = None,
                           overwrite: bool = False) -> str:
    """Write ``model`` as an open_clip folder at ``out`` (local, whole or not at all; or s3://); a local
    folder holding files countclip did not write is refused unless ``overwrite`` (they are then kept)."""
    storage.write_folder(out, folder_files(model, model_cfg, model_card(name, metrics, source)), overwrite=overwrite)
    return str(out)


def export_folder(checkpoint: str, arch: str, out: str | Path, metrics: dict[str, float] | None = None,
                  overwrite: bool = False) -> str:
    """Load a checkpoint (file, s3://, tag or folder) of ``arch`` and write its open_clip folder."""
    cfg = ModelConfig(arch=arch, pretrained=checkpoint)
    model, _, _ = create_model(cfg)
    name = open_clip_name(cfg)
    return write_open_clip_folder(model, out, model_config(name), arch if name == arch else Path(name).name,
                                  metrics, source=checkpoint, overwrite=overwrite)
