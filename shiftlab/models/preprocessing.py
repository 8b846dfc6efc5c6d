"""What a model expects as input: size, resize, interpolation and normalisation.

Every transform in shiftlab acts on images in pixel space ([0, 1], (B, C, H, W)); a model's normalisation
is applied last, by :meth:`Preprocessing.normalize`. The numbers come from a timm-style
``model.pretrained_cfg`` when the model has one, ImageNet defaults otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shiftlab._checks import check_bchw, check_finite, check_float
from shiftlab._sizes import DEFAULT_INPUT_SIDE, INPUT_SIZE_RULE
from shiftlab.data.images import INTERPOLATIONS, resize_and_crop
from shiftlab.errors import InputError, ShapeError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_INPUT_SIDE", "DEFAULT_INPUT_SIDE", "INPUT_SIZE_RULE", "Preprocessing",
           "check_input_size", "prepare", "preprocessing", "undeclared_input_side"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # 224 / 256
#: the largest model input side accepted (px). One 3 x 4096 x 4096 float32 input is 201 MB and the first
#: 64-channel stride-2 map of a CNN 1.07 GB per copy; 100,000 px would need 120 GB for the input alone. Models
#: are trained at 32-1024 px; PIL's own decompression-bomb limit (89 M pixels) sits at about 9,500 px square.
MAX_INPUT_SIDE = 4096


def check_input_size(size, what: str = "input size", *, error: type[InputError] = InputError) -> tuple[int, int]:
    """``size`` (an int or (H, W)) as a pair of ints in [1, :data:`MAX_INPUT_SIDE`]; else InputError naming ``what``.

    The one checker of input sizes; ``error`` may name a subclass of InputError to raise instead.

    >>> check_input_size(224)
    (224, 224)
    """
    if isinstance(size, bool):
        raise error(f"{what} must be a positive int or (H, W), got {size!r}")
    try:
        pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    except TypeError:  # neither an int nor a sequence
        raise error(f"{what} must be a positive int or (H, W), got {size!r}") from None
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in pair):
        raise error(f"{what} must be a positive int or (H, W), got {size!r}")
    if max(pair) > MAX_INPUT_SIDE:
        raise error(f"{what} {max(pair)} px is over the {MAX_INPUT_SIDE}-px limit (one {max(pair)}x{max(pair)} "
                         f"input alone would take {3 * 4 * max(pair) ** 2 / 1e9:.3g} GB); use a smaller size")
    return int(pair[0]), int(pair[1])


def undeclared_input_side(common: int | None, stride: int = 1) -> tuple[int, str]:
    """The input side of a model that declares no input size (:data:`INPUT_SIZE_RULE`) and the words that say how
    it was chosen: ``common`` (the images' common side, None when they differ) or :data:`DEFAULT_INPUT_SIDE`,
    rounded up to a multiple of the model's total ``stride``.

    >>> undeclared_input_side(None, 32), undeclared_input_side(None, 5)[0], undeclared_input_side(30, 8)[0]
    ((224, 'default 224, a multiple of total stride 32'), 225, 32)
    """
    base = DEFAULT_INPUT_SIDE if common is None else int(common)
    stride = max(1, int(stride))
    side = -(-base // stride) * stride
    what = f"default {DEFAULT_INPUT_SIDE}" if common is None else f"the images' common size {base}"
    if side == base:
        return side, f"{what}, a multiple of total stride {stride}"
    return side, f"{what} rounded up to {side}, a multiple of total stride {stride}"


@dataclass(frozen=True)
class Preprocessing:
    """Input size and normalisation a model expects.

    Attributes:
        mean, std: per-channel normalisation, applied as ``(x - mean) / std`` to [0, 1] images.
        input_size: (H, W) of the centre crop fed to the model.
        resize_size: the shorter side is resized to this before the centre crop (256 for a 224 crop).
        interpolation: ``"bilinear"`` or ``"bicubic"`` (or ``"nearest"``, ``"area"``).
        fixed_size: the model was made for ``input_size`` (it says so in its configuration); ``False`` when
            the numbers are defaults, so images may be measured at their own size.
        source: where the numbers come from (for the record).
        stride: the model's total stride when a probe found it (``shiftlab.measure.inspect_notes``), else 1: the
            input-size rule of a model that declares no size rounds up to a multiple of it
            (:func:`undeclared_input_side`).

    >>> p = Preprocessing()
    >>> p.input_size, p.resize_size
    ((224, 224), 256)
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: tuple[int, int] = (224, 224)
    resize_size: int = 256
    interpolation: str = "bilinear"
    fixed_size: bool = True
    source: str = "ImageNet defaults"
    stride: int = 1

    def __post_init__(self):
        if len(self.mean) != len(self.std):
            raise InputError(f"mean and std must have the same length, got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"std must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        if self.resize_size < max(self.input_size):
            raise InputError(f"resize_size {self.resize_size} is smaller than input_size {self.input_size}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise InputError(f"mean and std must be finite, got {self.mean} and {self.std}")

    @property
    def crop_pct(self) -> float:
        """``input size / resize size`` (0.875 for 224 of 256)."""
        return max(self.input_size) / self.resize_size

    def with_overrides(self, mean=None, std=None, interpolation=None, crop_pct=None, input_size=None) -> "Preprocessing":
        """A copy with the given fields replaced (``None`` keeps a field); ``source`` says what was overridden.

        ``crop_pct`` in (0, 1] sets ``resize_size = floor(input / crop_pct)``; ``input_size`` an int or (H, W).
        """
        fields = {"mean": self.mean, "std": self.std, "interpolation": self.interpolation,
                  "input_size": self.input_size, "fixed_size": self.fixed_size}
        changed = [name for name, value in (("mean", mean), ("std", std), ("interpolation", interpolation),
                                            ("crop_pct", crop_pct), ("input_size", input_size)) if value is not None]
        if mean is not None:
            fields["mean"] = tuple(float(v) for v in mean)
        if std is not None:
            fields["std"] = tuple(float(v) for v in std)
        if interpolation is not None:
            fields["interpolation"] = interpolation
        pct = self.crop_pct
        if crop_pct is not None:
            if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
                raise InputError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
            pct = float(crop_pct)
        if input_size is not None:
            fields["input_size"], fields["fixed_size"] = check_input_size(input_size, "input_size"), True
        resize = max(max(fields["input_size"]), int(math.floor(max(fields["input_size"]) / pct + 1e-9)))
        source = self.source if not changed else f"{self.source}; given: {', '.join(changed)}"
        return Preprocessing(resize_size=resize, source=source, stride=self.stride, **fields)

    def to_dict(self) -> dict:
        """The values, as written in an audit's JSON."""
        return {"input_size": list(self.input_size), "resize_size": self.resize_size,
                "crop_pct": round(self.crop_pct, 6), "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std), "fixed_size": self.fixed_size, "source": self.source}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel, for images in [0, 1].

        Shape:
            Input: (B, C, H, W) floating, C = len(mean). Output: same shape and dtype.

        >>> Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3).normalize(torch.ones(1, 3, 2, 2)).unique()
        tensor([1.])
        """
        check_bchw(x, channels=len(self.mean))
        check_float(x)
        check_finite(x)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def prepare(self, image) -> torch.Tensor:
        """Resize the shorter side to ``resize_size`` and centre-crop to ``input_size``, in pixel space.

        Accepts what :func:`prepare` accepts. Shape: Output: (B, 3, H, W) float32 in [0, 1].
        """
        return prepare(image, self.input_size, self.resize_size, self.interpolation)

    def __call__(self, image) -> torch.Tensor:
        """``normalize(prepare(image))``: ready to feed the model."""
        return self.normalize(self.prepare(image))


def _unwrap(model: nn.Module) -> nn.Module:
    # a SelectOutput wrapper (shiftlab.models.loading) keeps the wrapped model as .model
    while not hasattr(model, "pretrained_cfg") and hasattr(model, "model") and isinstance(model.model, nn.Module):
        model = model.model
    return model


def preprocessing(model: nn.Module | None = None) -> Preprocessing:
    """The input preprocessing ``model`` expects.

    In order: a :class:`Preprocessing` stored on the model as ``shiftlab_preprocessing`` (what
    :func:`~shiftlab.models.load_model` records from torchvision's weight metadata); a timm-style
    ``model.pretrained_cfg`` dict (``mean``, ``std``, ``input_size`` as (C, H, W), ``crop_pct``,
    ``interpolation``); else ImageNet defaults (mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), resize
    256, centre crop 224, bilinear) with ``fixed_size=False``. ``resize_size`` is ``floor(H / crop_pct)``, as
    timm computes it.

    >>> preprocessing(nn.Identity()).mean
    (0.485, 0.456, 0.406)
    """
    if model is not None:
        stored = getattr(model, "shiftlab_preprocessing", None)
        inner = _unwrap(model)
        stored = stored if isinstance(stored, Preprocessing) else getattr(inner, "shiftlab_preprocessing", None)
        if isinstance(stored, Preprocessing):
            return stored
    cfg = getattr(_unwrap(model), "pretrained_cfg", None) if model is not None else None
    if not isinstance(cfg, dict):
        return Preprocessing(fixed_size=False, source="ImageNet defaults (the model declares no preprocessing)")
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    size = tuple(int(v) for v in cfg.get("input_size", (3, 224, 224)))
    input_size = size[-2:] if len(size) >= 2 else (size[0], size[0])
    source = "timm pretrained_cfg"
    built = getattr(getattr(_unwrap(model), "patch_embed", None), "img_size", None)  # a transformer's own size
    if isinstance(built, (tuple, list)) and len(built) == 2 and tuple(built) != tuple(input_size):
        input_size, source = (int(built[0]), int(built[1])), "timm pretrained_cfg; input size: patch_embed.img_size"
    crop_pct = float(cfg.get("crop_pct") or DEFAULT_CROP_PCT)
    resize_size = max(max(input_size), int(math.floor(max(input_size) / crop_pct)))
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        interpolation = "bicubic" if "cubic" in str(interpolation) else "bilinear"
    return Preprocessing(mean=mean, std=std, input_size=input_size, resize_size=resize_size,
                         interpolation=interpolation, fixed_size=True, source=source)


def torchvision_preprocessing(name: str) -> Preprocessing | None:
    """The preprocessing of torchvision model ``name``'s default weights (crop, resize, mean, std), if any."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        t = weights.transforms()
    except (ValueError, KeyError, AttributeError, TypeError):
        return None
    crop = getattr(t, "crop_size", None)
    resize = getattr(t, "resize_size", None)
    if not crop or not resize:
        return None
    crop = int(crop[0]) if isinstance(crop, (list, tuple)) else int(crop)
    resize = int(resize[0]) if isinstance(resize, (list, tuple)) else int(resize)
    mode = str(getattr(t, "interpolation", "bilinear")).lower()
    interpolation = "bicubic" if "cubic" in mode else "bilinear"
    return Preprocessing(mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std),
                         input_size=(crop, crop), resize_size=max(crop, resize), interpolation=interpolation,
                         fixed_size=True, source=f"torchvision {type(weights).__name__} metadata")


def _as_batch(image) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise ShapeError(f"an image array must be (H, W) or (H, W, C), got shape {array.shape}")
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        elif np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ShapeError("image contains NaN or Inf")
            if array.size and array.max() > 1.0 + 1e-6:
                raise ShapeError(f"float image arrays must be in [0, 1], got values up to {array.max():.3g}; "
                                 f"pass uint8 0-255 or divide by 255")
        x = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32).permute(2, 0, 1)[None]
    elif isinstance(image, torch.Tensor):
        x = image
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ShapeError(f"an image tensor must be (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
    else:
        raise ShapeError(f"image must be a numpy array or a torch.Tensor, got {type(image).__name__}")
    check_float(x, "image")
    check_finite(x, "image")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] != 3:
        raise ShapeError(f"image must have 1, 3 or 4 channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    return x


def prepare(image, size=224, resize_size: int | None = None, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize the shorter side and centre-crop to ``size``, in pixel space [0, 1] (no normalisation).

    ``image`` may be a numpy array (H, W) or (H, W, C) (uint8 0-255, or float in [0, 1]; becomes float32)
    or a tensor (C, H, W) or (B, C, H, W) (uint8, or floating: its dtype is kept).
    Grey images become 3 channels; an alpha channel is dropped.
    ``resize_size`` defaults to ``floor(size / 0.875)`` (256 for 224). Images are upscaled when smaller.

    Shape:
        Output: (B, 3, h, w) with (h, w) = size.

    >>> prepare(np.zeros((300, 451, 3))).shape
    torch.Size([1, 3, 224, 224])
    """
    x = _as_batch(image)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if resize_size is None:
        resize_size = int(math.floor(max(h, w) / DEFAULT_CROP_PCT))
    return resize_and_crop(x, (h, w), resize_size=resize_size, interpolation=interpolation)
