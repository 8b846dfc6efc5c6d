"""What :func:`shiftlab.inspect` says beside its findings: whether the input size keeps the stride-multiple
guarantee (and the nearest sizes that do), which layers a conversion by ``shiftlab fix`` / ``finetune`` put in,
and the total stride of a model probed at the default input size (for the input-size rule of a model that
declares none, :data:`shiftlab.models.preprocessing.INPUT_SIZE_RULE`).

The guarantee: circular shifts by multiples of the total stride ``s`` commute with every subsampling layer only
when every map is a whole number of subsampling periods, that is when the input size is a multiple of ``s``. At
60x60 with ``s = 8`` the maps are 30, 15 and 8 (padded) pixels: a shift by 8 input pixels is not a whole shift of
the 15-pixel map, and the statement does not hold.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from shiftlab.models.preprocessing import DEFAULT_INPUT_SIDE, Preprocessing

__all__ = ["nearest_valid_sizes", "size_warnings", "converted_layers", "probed_stride", "with_probed_stride",
           "with_model_stride", "undeclared_size"]


def nearest_valid_sizes(input_size: tuple[int, int], total_stride: tuple[int, int]) -> list[tuple[int, int]]:
    """The sizes nearest ``input_size`` (the largest below, the smallest above) that are multiples of
    ``total_stride`` on both axes; empty when ``input_size`` is one already.

    >>> nearest_valid_sizes((60, 60), (8, 8)), nearest_valid_sizes((30, 30), (32, 32))
    ([(56, 56), (64, 64)], [(32, 32)])
    """
    if all(n % s == 0 for n, s in zip(input_size, total_stride)):
        return []
    below = tuple((n // s) * s for n, s in zip(input_size, total_stride))
    above = tuple(-(-n // s) * s for n, s in zip(input_size, total_stride))
    return ([below] if min(below) > 0 else []) + [above]


def size_warnings(input_size: tuple[int, int], total_stride: tuple[int, int]) -> list[str]:
    """One warning when ``input_size`` is not a multiple of ``total_stride`` (none when it is)."""
    nearest = nearest_valid_sizes(input_size, total_stride)
    if not nearest:
        return []
    (h, w), (sy, sx) = input_size, total_stride
    sizes = " or ".join(f"{a}x{b}" for a, b in nearest)
    return [f"input size {h}x{w} is not a multiple of the total stride {sy}x{sx}: the stride-multiple guarantee "
            f"(circular shifts by multiples of the total stride commute with every subsampling layer) does not hold "
            f"at this size; the nearest sizes where it does: {sizes}"]


def converted_layers(model: nn.Module, findings) -> dict | None:
    """The layers a conversion (``shiftlab fix`` / ``finetune``, :func:`shiftlab.antialias`) put in, with their
    kinds, in data-flow order: ``{"fix": ..., "file": ..., "layers": [{"name", "module_type", "kind"}]}``; None
    for a model that was not converted. A layer is listed when a finding names it and its class is shiftlab's."""
    conversion = getattr(model, "shiftlab_fix", None)
    if not isinstance(conversion, dict):
        return None
    source = getattr(model, "shiftlab_source", None)
    source = source if isinstance(source, dict) else {}
    fix = source.get("fix") or conversion.get("method")
    modules = dict(model.named_modules())
    layers, seen = [], set()
    for f in findings:
        module = modules.get(f.name)
        if module is None or not type(module).__module__.startswith("shiftlab.") or (f.name, f.kind) in seen:
            continue
        seen.add((f.name, f.kind))
        layers.append({"name": f.name, "module_type": f.module_type, "kind": f.kind})
    return {"fix": None if fix is None else str(fix), "file": source.get("weights"), "layers": layers}


def probed_stride(model: nn.Module, side: int = DEFAULT_INPUT_SIDE) -> int | None:
    """The model's total stride (the larger of its two axes) from one :func:`~shiftlab.measure.inspect.inspect`
    pass at ``side`` x ``side``; None when the model cannot take that size or hides its layers."""
    from shiftlab.measure.inspect import inspect

    try:
        result = inspect(model, (side, side))
    except Exception:  # noqa: BLE001 - a model that cannot take this size: its stride is unknown, the rule uses 1
        return None
    return max(result.total_stride)


def with_model_stride(images, model: nn.Module):
    """``images`` (:class:`~shiftlab.measure.inputs.Images`) with the model's probed total stride in their
    preprocessing, only where the input-size rule uses it: images read from files, no size asked for, and a model
    that declares none. Elsewhere ``images`` unchanged, and no probe pass is paid."""
    if not images.from_files or images.wanted_size is not None or images.preprocessing.fixed_size:
        return images
    return dataclasses.replace(images, preprocessing=with_probed_stride(images.preprocessing, model))


def with_probed_stride(prep: Preprocessing, model: nn.Module) -> Preprocessing:
    """``prep`` with the model's probed total stride recorded (``prep.stride``), when the model declares no input
    size (``prep.fixed_size`` False): the input-size rule rounds its size up to a multiple of it."""
    if prep.fixed_size:
        return prep
    stride = probed_stride(model)
    return prep if stride is None else dataclasses.replace(prep, stride=int(stride))


def undeclared_size(model: nn.Module, source, sample: int = 64) -> tuple[int, str]:
    """The input side of a model that declares no input size on the images of ``source`` (an ImageSource), by
    :data:`~shiftlab.models.preprocessing.INPUT_SIZE_RULE`, and the words that say how it was chosen: the common
    (shorter) side when the first ``sample`` readable images all have one size, else 224; rounded up to a multiple
    of the model's total stride. For plans made before any audit runs (the report's)."""
    from shiftlab.measure.inputs import MIN_IMAGE_SIDE, image_hw
    from shiftlab.models.preprocessing import undeclared_input_side

    sizes = {hw for hw in (image_hw(source, i) for i in range(min(len(source), sample)))
             if hw is not None and min(hw) >= MIN_IMAGE_SIDE}
    common = min(next(iter(sizes))) if len(sizes) == 1 else None
    return undeclared_input_side(common, probed_stride(model) or 1)
