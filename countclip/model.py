"""open_clip models: create, load (pretrained tag, local file, s3:// object, open_clip folder), make FSDP-ready.

Any open_clip architecture works (ViT-B-32 with ``pretrained="openai"`` on a cluster with the hub in
reach). The small ``countclip-*`` architectures in ``model_configs/`` are registered here for
CountWorld; they use open_clip's own tokenizer. ``model.pretrained`` may also name an open_clip
folder, ``local-dir:DIR`` (what ``countclip export`` writes: it holds its own architecture, so
``model.arch`` is not used) or ``hf-hub:org/name`` (the same layout on the Hugging Face hub; needs
the internet, so only with COUNTCLIP_OFFLINE=0).

With ``lora`` set, ``create_model`` adds peft LoRA adapters after loading the weights (``lora.py``) and
``export_state_dict`` merges them back, so exported checkpoints stay stock open_clip.

Models are created with a 1-element ``logit_scale`` (open_clip's ``nonscalar_logit_scale``), because
FSDP rejects 0-dim parameters; ``export_checkpoint`` writes it back as a scalar, and open_clip's loader
reshapes either way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from countclip import storage
from countclip.config import ConfigBase, ConfigError, excerpt, one_line, require
from countclip.environment import offline_requested
from countclip.images import ImagePreprocess
from countclip.lora import LoraConfig, add_lora, has_lora, merged_model, resolve_targets

CONFIG_DIR = Path(__file__).parent / "model_configs"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
FOLDER_PREFIX, HUB_PREFIX = "local-dir:", "hf-hub:"  # open_clip's own schemas for a model folder


@dataclass
class ModelConfig(ConfigBase):
    arch: str = "countclip-tiny"
    """open_clip architecture name (open_clip.list_models()), e.g. ViT-B-32 or countclip-tiny."""
    pretrained: str | None = None
    """None for random weights, an open_clip pretrained tag (e.g. "openai"), a local checkpoint path,
    an s3:// URI of one, or an open_clip folder: local-dir:DIR (from `countclip export`) or
    hf-hub:org/name (internet needed: COUNTCLIP_OFFLINE=0); a folder brings its own architecture."""
    precision: str = "fp32"
    """Parameter precision at creation: fp32 for training (mixed precision is set by the trainer)."""
    lora: LoraConfig | None = None
    """LoRA adapters to train instead of the full model ({rank, alpha, targets}); null: full fine-tuning.
    The adapters are added after the pretrained weights load and merged into them at export."""

    def __post_init__(self) -> None:
        require(bool(self.arch), "model.arch must name an open_clip architecture, e.g. ViT-B-32")
        require(self.precision in ("fp32", "bf16", "fp16"), "model.precision must be fp32, bf16 or fp16")


def register_architectures() -> None:
    """Make the countclip-* architectures known to open_clip (idempotent)."""
    import open_clip

    if not set(known_architectures()) >= {p.stem for p in CONFIG_DIR.glob("*.json")}:
        open_clip.add_model_config(CONFIG_DIR)


def known_architectures() -> list[str]:
    import open_clip

    return open_clip.list_models()


def check_architecture(arch: str) -> None:
    """ConfigError naming similar known architectures unless open_clip knows ``arch``."""
    register_architectures()
    known = known_architectures()
    if arch not in known:
        close = [a for a in known if a.lower().startswith(arch.lower()[:5])][:8]
        raise ConfigError(f"unknown architecture {arch!r}; similar known ones: {close or known[:8]} "
                          "(open_clip.list_models() lists them all)")


def has_logit_bias(arch: str) -> bool:
    """Whether the architecture has SigLIP's learned logit bias (its config sets init_logit_bias)."""
    import open_clip

    check_architecture(arch)
    return (open_clip.get_model_config(arch) or {}).get("init_logit_bias") is not None


def skeleton(arch: str) -> nn.Module:
    """The architecture's module tree on the meta device: names and types, no weights, no memory."""
    import open_clip

    check_architecture(arch)
    logging.disable(logging.WARNING)  # open_clip warns "No pretrained weights loaded" for every random init
    try:
        with torch.device("meta"):
            return open_clip.create_model(arch, pretrained=None, device="meta")
    finally:
        logging.disable(logging.NOTSET)


def check_for_training(cfg: ModelConfig, contrastive: str) -> dict[str, list[str]]:
    """ConfigError, before anything trains, when the loss does not fit the model or a LoRA target
    names no module; returns the LoRA targets resolved to module names ({} without LoRA)."""
    check_architecture(cfg.arch)
    if contrastive == "siglip" and not has_logit_bias(cfg.arch):
        raise ConfigError(f"loss.contrastive siglip needs a model with a logit bias (a SigLIP architecture such as "
                          f"countclip-tiny-sigmoid or ViT-B-16-SigLIP); {cfg.arch} has none: use loss.contrastive=clip")
    return resolve_targets(skeleton(cfg.arch), cfg.lora) if cfg.lora is not None else {}


def preprocess_config(model: nn.Module) -> dict:
    """The model's own image preprocessing: size (h, w), mean, std, interpolation, resize_mode."""
    import open_clip

    return dict(open_clip.get_model_preprocess_cfg(getattr(model, "module", model)))  # DDP keeps it in .module


def image_size(model: nn.Module) -> int:
    """The (square) input side of the model's image tower, in pixels."""
    size = preprocess_config(model)["size"]
    return int(size if isinstance(size, int) else size[0])


# Pretrained weights shipped in the package, by alias: (architecture, file).
SHIPPED = {"countworld": ("countclip-tiny", Path(__file__).parent / "weights" / "countworld-clip-tiny.safetensors")}


def is_open_clip_folder(pretrained: str | None) -> bool:
    """Whether ``pretrained`` names an open_clip folder (``local-dir:DIR`` or ``hf-hub:org/name``)."""
    return isinstance(pretrained, str) and pretrained.startswith((FOLDER_PREFIX, HUB_PREFIX))


def resolve_folder(pretrained: str) -> str:
    """The open_clip model name of a folder: ``local-dir:`` with an absolute path that holds a config,
    or an ``hf-hub:`` name when the hub may be reached."""
    if pretrained.startswith(HUB_PREFIX):
        if offline_requested():
            raise ConfigError(f"model.pretrained={pretrained} is on the Hugging Face hub, and this run is offline; "
                              "set COUNTCLIP_OFFLINE=0 on a machine that reaches the hub, or `countclip export` "
                              "the model and use local-dir:DIR")
        return pretrained
    path = Path(pretrained.removeprefix(FOLDER_PREFIX)).expanduser().resolve()
    if not (path / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"{pretrained}: {path} holds no open_clip_config.json "
                                "(`countclip export CHECKPOINT --arch ARCH --out DIR` writes one)")
    return f"{FOLDER_PREFIX}{path}"


def open_clip_name(cfg: ModelConfig) -> str:
    """The name open_clip knows the model by: its folder (which holds the architecture) or ``arch``."""
    return resolve_folder(cfg.pretrained) if is_open_clip_folder(cfg.pretrained) else cfg.arch


def resolve_pretrained(arch: str, pretrained: str | None) -> str | None:
    """The tag, local file or folder to hand open_clip; s3:// objects are downloaded once into the cache;
    ``countworld`` is the stand-in CountWorld base shipped in countclip/weights (``SHIPPED``)."""
    import open_clip

    if is_open_clip_folder(pretrained):
        return resolve_folder(pretrained)
    if pretrained in SHIPPED:
        shipped_arch, path = SHIPPED[pretrained]
        if arch != shipped_arch:
            raise ConfigError(f"model.pretrained={pretrained} is the shipped CountWorld base, a {shipped_arch} "
                              f"checkpoint; it cannot load into {arch}: set model.arch={shipped_arch}")
        if not path.is_file():
            raise FileNotFoundError(f"the shipped CountWorld base {path} is missing: restore it from the repository "
                                    "or retrain it with `countclip world pretrain-base --out countclip/weights`")
        return str(path)
    if pretrained is None or pretrained in open_clip.list_pretrained_tags_by_model(arch):
        return pretrained
    if storage.is_s3(pretrained):
        try:
            return str(storage.local_copy(pretrained))
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {pretrained} does not exist") from None
    path = storage.local_path(pretrained)
    if path.is_file():
        return str(path)
    if path.exists():
        raise ValueError(f"checkpoint {path} is {'a folder' if path.is_dir() else 'not a regular file'}, "
                         "not a checkpoint file")
    if path.suffix in CHECKPOINT_SUFFIXES or "/" in pretrained:
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    raise ConfigError(
        f"model.pretrained={pretrained!r} is neither a pretrained tag of {arch} "
        f"(known: {tags or 'none'}) nor an existing checkpoint file"
    )


# What a bad open_clip folder (its config or weights) raises while loading; anything else is re-raised.
_FOLDER_LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, ValueError,
                       OSError, SafetensorError)


def create_model(cfg: ModelConfig, device: str | torch.device = "cpu"):
    """(model, its ImagePreprocess (evaluation geometry), tokenizer), with clear errors for bad names or files."""
    import open_clip

    if is_open_clip_folder(cfg.pretrained):
        name, pretrained = resolve_folder(cfg.pretrained), None
    else:
        check_architecture(cfg.arch)
        name, pretrained = cfg.arch, resolve_pretrained(cfg.arch, cfg.pretrained)
    try:
        with _random_init_notice_muted(name == cfg.arch and pretrained is None):
            model = open_clip.create_model(
                name, pretrained=pretrained, precision=cfg.precision, device=device, nonscalar_logit_scale=True
            )
    except Exception as exc:  # open_clip's loader fails in a dozen ways on odd files; say which one it is
        if pretrained and Path(pretrained).is_file():
            raise ValueError(f"checkpoint {cfg.pretrained} {checkpoint_problem(pretrained, cfg.arch, exc)}") from None
        if name != cfg.arch and isinstance(exc, _FOLDER_LOAD_ERRORS):
            raise ValueError(f"model.pretrained={cfg.pretrained} is not a loadable open_clip folder: "
                             f"{one_line(exc, 200)}") from None
        raise
        raise
    preprocess = ImagePreprocess.from_model(model)
    if cfg.lora is not None:
        model = add_lora(model, cfg.lora)
    return model, preprocess, open_clip.get_tokenizer(name)


class _RandomInitNotice(logging.Filter):
    """open_clip warns "No pretrained weights loaded ..." on the root logger at every random init;
    a model created here without weights is random on purpose (pretraining starts from it, or a
    checkpoint is loaded into it next)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _random_init_notice_muted(random_on_purpose: bool):
    notice = _RandomInitNotice()
    if random_on_purpose:
        logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


def checkpoint_problem(path: str | Path, arch: str, error: Exception) -> str:
    """Why a checkpoint file did not load into ``arch``, in one line: empty, not a readable file, not
    a state dict of tensors, or tensors of another architecture. Only runs after a failed load."""
    import open_clip

    if Path(path).stat().st_size == 0:
        return "is empty (0 bytes)"
    safetensors = str(path).endswith(".safetensors")
    try:
        if safetensors:
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except pickle.UnpicklingError as exc:  # weights_only names the global it refused ("unsupported GLOBAL os.mkdir")
        if "global" in str(exc).lower():
            return "holds pickled Python objects besides tensors: refused, as loading them could run code"
        return "is not a readable PyTorch (torch.save) file (not a pickle of tensors)"
    except Exception as exc:
        kind = "safetensors" if safetensors else "PyTorch (torch.save)"
        return f"is not a readable {kind} file ({type(exc).__name__}: {one_line(exc, 120)})"
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        return f"holds {'an empty mapping' if isinstance(state, dict) else 'a ' + type(state).__name__}, " \
               "not a state dict of named tensors"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return "holds a mapping that is not all named tensors, not a state dict"
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns that the reference model has random weights
    try:
        expected = {k: tuple(v.shape) for k, v in open_clip.create_model(arch, pretrained=None).state_dict().items()}
    finally:
        logging.disable(previous)
    given = {k.removeprefix("module."): tuple(v.shape) for k, v in state.items()}
    differ = sorted(k for k in set(expected) & set(given) if expected[k] != given[k]
                    and not (k in ("logit_scale", "logit_bias") and math.prod(expected[k]) == math.prod(given[k])))
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if differ or missing or unexpected:
        example = (f"e.g. {differ[0]} {list(given[differ[0]])} where {arch} has {list(expected[differ[0]])}" if differ
                   else f"e.g. {excerpt((missing or unexpected)[0], 60)} {'missing' if missing else 'unexpected'}")
        return (f"does not fit {arch}: {len(differ)} tensor(s) of other shapes, {len(missing)} missing, "
                f"{len(unexpected)} unexpected ({example}); was it saved from another architecture? "
                "Name that one (--arch, model.arch)")
    return f"could not be loaded into {arch} ({type(error).__name__}: {one_line(error, 120)})"


def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A stock open_clip state dict: CPU tensors, scalar logit_scale, LoRA adapters merged."""
    if has_lora(model):
        model = merged_model(model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for key in ("logit_scale", "logit_bias"):
        if key in state and state[key].numel() == 1:
            state[key] = state[key].reshape(())
    return state


def export_checkpoint(model: nn.Module | dict[str, torch.Tensor], uri: str | Path) -> None:
    """Write a checkpoint that ``open_clip.create_model_and_transforms(arch, pretrained=path)`` loads."""
    state = model if isinstance(model, dict) else export_state_dict(model)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
