"""LoRA adapters on open_clip models through ``peft``, and their merge back into stock weights.

``add_lora`` injects peft's LoRA layers into the named modules of both towers (peft's low-level
``inject_adapter_in_model``: the model stays an open_clip ``CLIP`` with the same methods, so the
training loop, FSDP2 wrapping and evaluation see the same object) and freezes everything else.
``merged_model`` folds every adapter into the weight it adapts (peft's own ``merge``) and removes
the peft layers, so an export is a plain open_clip state dict that loads with
``open_clip.create_model_and_transforms(arch, pretrained=path)`` and no peft installed.

Which modules can be targets. open_clip's residual blocks hold ``mlp.c_fc`` and ``mlp.c_proj``
(``nn.Linear``, called through their ``forward``) and ``attn`` (``nn.MultiheadAttention``, whose
q/k/v projection is the ``in_proj_weight`` parameter, not a Linear). So:

- ``c_fc``, ``c_proj`` (the default): peft's LoRA Linear; works in one process, under DDP and
  under FSDP2 (2-rank gloo runs match one process).
- ``attn``: peft's experimental MultiheadAttention layer (LoRA on in_proj and out_proj; it merges
  the adapters into the weights before each forward and unmerges after). Works in one process and
  under DDP; FSDP2's ``fully_shard`` rejects it ("Some parameters are not in the module tree"), so
  the training job refuses ``attn`` with strategy fsdp before any worker starts.
- ``out_proj`` is refused: ``nn.MultiheadAttention`` reads ``out_proj.weight`` directly and never
  calls its forward, so an adapter there would silently never train (peft's docs say the same).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

from torch import nn

from countclip.config import ConfigBase, ConfigError, require

ADAPTER = "default"  # peft's adapter name; one adapter per model here


@dataclass
class LoraConfig(ConfigBase):
    rank: int = 8
    """Rank r of each adapter (B @ A with A: r x in, B: out x r)."""
    alpha: float = 16.0
    """LoRA alpha: the update is scaled by alpha / rank."""
    targets: list[str] = field(default_factory=lambda: ["c_fc", "c_proj"])
    """Module names (the last part of a dotted name, or a longer suffix) to adapt in both towers:
    c_fc and c_proj (the MLP Linears of every residual block), attn (nn.MultiheadAttention through
    peft's experimental layer: not under FSDP2), or any Linear/Conv2d/Embedding by name."""

    def __post_init__(self) -> None:
        require(self.rank >= 1, f"model.lora.rank must be >= 1, got {self.rank}")
        require(self.alpha > 0, f"model.lora.alpha must be positive, got {self.alpha}")
        require(bool(self.targets) and all(isinstance(t, str) and t.strip() for t in self.targets),
                "model.lora.targets must list module names, e.g. [c_fc, c_proj]")
        require(not any(t == "out_proj" or t.endswith(".out_proj") for t in self.targets),
                "model.lora.targets: out_proj is never called by nn.MultiheadAttention (it reads the weight "
                "directly), so its adapter would not train; target attn to adapt attention")


def _supported_types() -> tuple[type, ...]:
    return (nn.Linear, nn.MultiheadAttention, nn.Conv2d, nn.Embedding)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # peft's rule for a list of target names


def resolve_targets(model: nn.Module, cfg: LoraConfig) -> dict[str, list[str]]:
    """Each target -> the full names of the modules it adapts; ConfigError for a target that names
    no module, or a module LoRA cannot adapt. Works on a meta-device skeleton (no weights needed)."""
    modules = dict(model.named_modules())
    resolved = {}
    for target in cfg.targets:
        hits = [name for name in modules if name and _matches(name, target)]
        if not hits:
            leaves = sorted({name.rsplit(".", 1)[-1] for name, m in modules.items()
                             if name and isinstance(m, _supported_types())} - {"out_proj"})
            raise ConfigError(f"model.lora.targets: {target!r} names no module of this model; "
                              f"module names LoRA can adapt here: {leaves}")
        wrong = [f"{name} ({type(modules[name]).__name__})" for name in hits if not isinstance(modules[name], _supported_types())]
        if wrong:
            raise ConfigError(f"model.lora.targets: {target!r} names modules LoRA cannot adapt: {wrong[:4]}; "
                              "targets must be Linear, MultiheadAttention, Conv2d or Embedding modules")
        resolved[target] = hits
    return resolved


def attention_targets(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """The nn.MultiheadAttention modules the targets adapt (what FSDP2 cannot shard)."""
    modules = dict(model.named_modules())
    return [name for hits in resolve_targets(model, cfg).values() for name in hits
            if isinstance(modules[name], nn.MultiheadAttention)]


def add_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject LoRA adapters (B initialised to 0: the model's function is unchanged) and freeze every
    other parameter; returns the same model object."""
    resolve_targets(model, cfg)
    import peft

    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.targets), lora_dropout=0.0)
    return peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)


def _tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost peft layers (a MultiheadAttention layer holds a LoRA out_proj inside it)."""
    if "peft" not in sys.modules:  # nothing imported peft, so no model holds its layers
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    names = [name for name, _ in layers]
    return [(name, m) for name, m in layers if not any(name.startswith(other + ".") for other in names)]


def has_lora(model: nn.Module) -> bool:
    return bool(_tuner_layers(model))


def merged_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter merged into its base weight and the peft layers gone:
    a stock open_clip module tree (the model itself is left as it is)."""
    plain = copy.deepcopy(model)
    for name, layer in _tuner_layers(plain):
        if hasattr(layer, "unload_and_optionally_merge_module"):  # peft's MultiheadAttention layer
            base = layer.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        else:
            layer.merge()
            base = layer.get_base_layer()
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, child, base)
    return plain


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; the base weights under an adapter count once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
