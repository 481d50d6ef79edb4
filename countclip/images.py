"""Images in: the one place that opens, checks and decodes image bytes or files, and preprocesses them.

Every image the system reads (a fetched download, a shard row, a benchmark file, a file or request
given to a served model) goes through ``decode_image``: its format is read from the magic bytes, the
pixel count is checked on the header before anything is decoded (a 140 KB PNG can hold 144 megapixels),
EXIF orientation is applied and the result is RGB. Failures are ``ImageError`` with a machine-readable
``reason`` (empty, not_an_image, too_many_pixels, corrupt_image), never PIL's own exception types.

``ImagePreprocess`` is the model's own preprocessing (open_clip's transform for its preprocess config:
aspect-preserving resize and centre crop, or RandomResizedCrop for training), split in two: the
geometry on PIL images (``to_pixels``: uint8, run where images are decoded, e.g. a Ray Data stage),
and ``normalize`` on uint8 batches (run where the batch is used, e.g. on the GPU after the copy).
Training, evaluation and the predictor all use it; ``preprocess(image)`` equals open_clip's
``preprocess(image)`` bit for bit.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from countclip import storage

MAX_PIXELS = 40_000_000
"""Default cap on width x height of any image decoded (the fetch stage's default too)."""

_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"BM", "BMP"))


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` says why in one word."""

    def __init__(self, reason: str, message: str | None = None):
        super().__init__(message or reason.replace("_", " "))
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """The PIL format named by the file's magic bytes (JPEG, PNG, GIF, WEBP, BMP), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, draft_side: int | None = None) -> Image.Image:
    """Checked RGB image, upright per EXIF; refuses too many pixels before decoding them.

    draft_side: a JPEG may be decoded at 1/2..1/8 scale when that still covers this many pixels.
    """
    if not data:
        raise ImageError("empty", "the image is empty (0 bytes)")
    fmt = sniff_format(bytes(data[:16]))
    if fmt is None:
        raise ImageError("not_an_image", "not an image (no JPEG, PNG, GIF, WEBP or BMP signature)")
    try:
        with warnings.catch_warnings():  # PIL warns of large images; the cap below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError:
        raise ImageError("too_many_pixels", f"the image has more than {max_pixels:,} pixels") from None
    except Exception:
        raise ImageError("corrupt_image", f"a corrupt {fmt} image") from None
    if image.width * image.height > max_pixels:
        raise ImageError("too_many_pixels", f"the image has {image.width}x{image.height} pixels, "
                                            f"more than the {max_pixels:,} allowed")
    try:
        if fmt == "JPEG" and draft_side:
            image.draft("RGB", (draft_side, draft_side))
        image.load()  # a full decode: truncated data raises here (LOAD_TRUNCATED_IMAGES is off)
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright image
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception:  # decoders of untrusted bytes fail in many ways; all mean the same to us
        raise ImageError("corrupt_image", f"a corrupt {fmt} image") from None


def read_image_file(path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = 64 * 2**20) -> Image.Image:
    """``decode_image`` of a regular file's bytes; FileNotFoundError when there is no such file.

    Only regular files are opened (a FIFO or device would block or never end), and at most
    ``max_bytes`` are read.
    """
    try:
        data = storage.read_local_file(path, max_bytes)
    except (FileNotFoundError, storage.NotARegularFile):
        raise FileNotFoundError(f"image {path} does not exist or is not a regular file") from None
    except storage.FileTooLarge:
        raise ImageError("too_large", f"image {path} is larger than {max_bytes:,} bytes") from None
    return decode_image(data, max_pixels)


def open_image(item, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB image from encoded bytes, a file path or a PIL image; ValueError naming what is wrong."""
    if isinstance(item, Image.Image):
        if item.width * item.height > max_pixels:
            raise ImageError("too_many_pixels", f"the image has more than {max_pixels:,} pixels")
        return item.convert("RGB")
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            return decode_image(bytes(item), max_pixels)
        except ImageError as exc:
            raise ImageError(exc.reason, f"<{len(item)} bytes> is not a readable image: {exc}") from None
    if isinstance(item, (str, Path)):
        try:
            return read_image_file(item, max_pixels)
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        except ImageError as exc:
            raise ImageError(exc.reason, f"{item} is not a readable image: {exc}") from None
    raise ValueError(f"an image must be bytes, a path or a PIL image, got {type(item).__name__}")


def normalize(pixels: np.ndarray | torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32, standardised with mean/std in [0, 1] units.

    The arithmetic of torchvision's ToTensor + Normalize (x / 255, then (x - mean) / std), so a batch
    normalised here equals open_clip's preprocess of the same pixels exactly.
    """
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels) if pixels.flags.writeable else pixels.copy())
    pixels = pixels.permute(0, 3, 1, 2).float().div(255)
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean_t) / std_t


@dataclass(frozen=True)
class ImagePreprocess:
    """A model's preprocessing: geometry (uint8 pixels out) and normalisation, as open_clip defines them.

    ``config`` is open_clip's preprocess config of the model (size, mean, std, interpolation,
    resize_mode, fill_color); ``train_scale`` set to (low, high) makes the geometry open_clip's train
    transform, RandomResizedCrop with that scale range, drawn from ``seed`` given per image.
    """

    config: dict = field(hash=False)
    train_scale: tuple[float, float] | None = None

    @classmethod
    def from_model(cls, model: torch.nn.Module, train_scale: tuple[float, float] | None = None) -> ImagePreprocess:
        import open_clip

        return cls(dict(open_clip.get_model_preprocess_cfg(model)), train_scale)

    @property
    def size(self) -> tuple[int, int]:
        size = self.config["size"]
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.config["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.config["std"])

    @cached_property
    def _geometry(self):
        """open_clip's transform without its ToTensor and Normalize: PIL in, PIL out."""
        from open_clip.transform import MaybeToTensor, PreprocessCfg, image_transform_v2
        from torchvision.transforms import Compose, Normalize

        known = {k: v for k, v in self.config.items() if k in PreprocessCfg.__dataclass_fields__}
        aug = {"scale": tuple(self.train_scale)} if self.train_scale else None
        transform = image_transform_v2(PreprocessCfg(**known), is_train=self.train_scale is not None, aug_cfg=aug)
        *geometry, to_tensor, normalise = transform.transforms
        if not (isinstance(to_tensor, MaybeToTensor) and isinstance(normalise, Normalize)):
            raise RuntimeError(f"unexpected open_clip transform layout: {transform}")
        return Compose(geometry)

    def to_pixels(self, image: Image.Image, seed: int | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB at the model's size; ``seed`` fixes a training crop."""
        if self.train_scale is None or seed is None:
            out = self._geometry(image)
        else:
            with torch.random.fork_rng(devices=[]):  # RandomResizedCrop draws from torch's global RNG
                torch.manual_seed(seed)
                out = self._geometry(image)
        return np.array(out if out.mode == "RGB" else out.convert("RGB"))

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 model input."""
        return normalize(pixels, self.mean, self.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """(3, H, W) float32 model input of one image (what open_clip's preprocess returns)."""
        return self.normalize(self.to_pixels(image)[None])[0]


__all__ = ["MAX_PIXELS", "ImageError", "ImagePreprocess", "decode_image", "normalize", "open_image", "read_image_file",
           "sniff_format"]
