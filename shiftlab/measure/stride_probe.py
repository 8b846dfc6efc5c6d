"""The total stride of a model that declares no input size, probed by one :func:`~shiftlab.measure.inspect.inspect`
pass, for the input-size rule (:data:`shiftlab.models.preprocessing.INPUT_SIZE_RULE`): such a model is measured at
the images' common size, else 224 px, rounded up to a multiple of its total stride, so that layer errors compare
whole strides. The probe is paid only where the rule uses it."""

from __future__ import annotations

import dataclasses

from torch import nn

from shiftlab.measure.inspect import inspect
from shiftlab.models.preprocessing import DEFAULT_INPUT_SIDE, Preprocessing

__all__ = ["probed_stride", "with_probed_stride", "with_model_stride", "undeclared_size"]


def probed_stride(model: nn.Module, side: int = DEFAULT_INPUT_SIDE) -> int | None:
    """The model's total stride (the larger of its two axes) from one :func:`~shiftlab.measure.inspect.inspect`
    pass at ``side`` x ``side``; None when the model cannot take that size or hides its layers."""
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
