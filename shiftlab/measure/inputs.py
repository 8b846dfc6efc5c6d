"""The images a run measures: where they come from, which are used, their channels and typical size, and the
one rule that sets the model's input size from them.

Audit (:mod:`shiftlab.measure.prepare`) and fine-tuning (:mod:`shiftlab.fix.finetune`) take their first look at
the data here, so both size and check images the same way: the input size is never taken from one image alone,
tiny images never set it, and a channel mismatch with the model's first convolution is refused before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from shiftlab.errors import InputError, ShapeError, ShiftlabError
from shiftlab.measure import loader
from shiftlab.measure.protocols import Protocol
from shiftlab.models.preprocessing import MAX_INPUT_SIDE, Preprocessing, check_input_size, undeclared_input_side

__all__ = ["IMAGE_SIZE_ARG", "MIN_IMAGE_SIDE", "SIZE_SAMPLE", "Images", "look_at_images", "select_indices", "as_source",
           "first_conv_channels", "parse_preprocessing", "InputSizes", "input_sizes", "image_hw", "typical_size"]

#: how ``image_size`` is named in its errors
IMAGE_SIZE_ARG = "image_size (CLI: --image-size)"
MIN_IMAGE_SIDE = 8  # image files with a shorter side under this are skipped (and counted), never measured or sized from
SIZE_SAMPLE = 64  # images whose common size (if they share one) sets the input of a model that declares none
_COMMON = "the common size"  # how typical_size names a sample whose images all have one size


@dataclass
class Images:
    """The data after a first look: the source and its description, the (sorted) indices used, whether the
    images come from files, whether tensors share one size, a readable probe image (C, H, W), the typical
    size (H, W) and the words that say how it was found, the channels the model gets, the preprocessing (with
    ``image_size`` applied) and the input size asked for."""

    source: object
    description: str
    indices: np.ndarray
    from_files: bool
    uniform: bool
    probe: torch.Tensor
    own_size: tuple[int, int]
    size_basis: str
    channels: int
    preprocessing: Preprocessing
    wanted_size: tuple[int, int] | None

    def input_sizes(self, protocol: Protocol, resize: bool | None) -> InputSizes:
        """The sizes of a run of ``protocol`` on these images (:func:`input_sizes`)."""
        return input_sizes(protocol, self.preprocessing, self.own_size, self.wanted_size, resize, self.from_files,
                           self.uniform, self.size_basis)

    def sizing(self, sizes: InputSizes) -> loader.Sizing:
        """How the loader's workers size each image for a run of these sizes (tiny files skipped and counted)."""
        return loader.Sizing(sizes.source, sizes.short_side, self.preprocessing.interpolation, sizes.resize,
                             self.channels, MIN_IMAGE_SIDE if self.from_files else 0)


def look_at_images(data, preprocessing: Preprocessing, first_conv: int | None, *, indices=None, image_size=None,
                   sample_sizes: bool | None = None, purpose: str = "audit") -> Images:
    """The first look at ``data`` before any work: the source, the indices, a probe image, the channels the
    model's first convolution (``first_conv`` in-channels) takes, the typical size.

    ``sample_sizes``: find the typical size from a sample of the files (default: when neither ``image_size``
    nor the model sets the input size). ``purpose`` names the run in the error for empty data.
    """
    from shiftlab.data.masks import TensorMasks
    from shiftlab.data.sources import TensorImages

    src, description = as_source(data)
    chosen = select_indices(len(src), indices, purpose)
    in_memory = isinstance(src, (TensorImages, TensorMasks))  # tensors: resized only when their sizes differ
    from_files = not in_memory
    uniform = src.uniform if in_memory else False
    wanted_size = None if image_size is None else check_input_size(image_size, IMAGE_SIZE_ARG)
    probe = loader.first_readable_image(src, chosen, description)
    own, basis = tuple(int(v) for v in probe.shape[-2:]), "the images' own size"
    if from_files:  # the size never comes from one image, and a tiny image is never the probe
        sample = (image_size is None and not preprocessing.fixed_size) if sample_sizes is None else sample_sizes
        probe, own, basis = typical_size(src, chosen, description, probe, sample=sample)
    channels = int(probe.shape[0])
    if first_conv is not None and first_conv != channels and not (
            from_files and channels in (1, 3, 4) and first_conv in (1, 3)):
        raise ShapeError(f"the model's first convolution takes {first_conv} channels, but the images have {channels}")
    channels = first_conv if (first_conv is not None and from_files) else channels
    if wanted_size is not None and tuple(preprocessing.input_size) != wanted_size:
        preprocessing = preprocessing.with_overrides(input_size=wanted_size)  # the resize follows (same crop_pct)
    return Images(src, description, chosen, from_files, uniform, probe, own, basis, channels, preprocessing,
                  wanted_size)


def select_indices(n_total: int, indices, purpose: str) -> np.ndarray:
    """The sorted dataset indices a run uses (all of them by default); duplicates and strays refused."""
    if n_total == 0:
        raise InputError(f"no images to {purpose}")
    if indices is None:
        return np.arange(n_total)
    chosen = np.asarray(list(indices), dtype=np.int64)
    if chosen.ndim != 1 or len(chosen) == 0:
        raise InputError("indices selects no images")
    if chosen.min() < 0 or chosen.max() >= n_total:
        raise InputError(f"indices must lie in [0, {n_total - 1}]")
    if len(np.unique(chosen)) != len(chosen):
        raise InputError("indices contain duplicates")
    return np.sort(chosen)


def as_source(data):
    """Any accepted ``data`` -> an ImageSource (or a map-style Dataset of images) and its description."""
    from shiftlab.data import ImageDataset
    from shiftlab.data.sources import ImageSource, TensorImages, open_images

    if isinstance(data, (str, os.PathLike)) or data is None:
        return open_images(data), str(data if data is not None else "photos")
    if isinstance(data, ImageSource):
        return data, data.description or type(data).__name__
    if isinstance(data, ImageDataset):
        space = "imagenet" if data.source == "photos" else None
        return TensorImages(data.images, data.labels, data.names, data.class_names, space,
                            description=data.source or "ImageDataset"), data.source or "ImageDataset"
    if isinstance(data, torch.Tensor) or isinstance(data, list):
        return TensorImages(data), "tensor"
    if isinstance(data, tuple) and len(data) == 2:
        images, labels = data
        return TensorImages(images, labels), "tensor"
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return data, type(data).__name__
    raise InputError(f"data must be a (N, C, H, W) tensor, (images, labels), a dataset or a data spec string, "
                     f"got {type(data).__name__}")


def first_conv_channels(model: torch.nn.Module) -> int | None:
    """In-channels of the first ``Conv2d`` of ``model`` (None when it has none)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    return None


def parse_preprocessing(prep: Preprocessing, override) -> Preprocessing:
    """``prep`` with ``override`` applied: a Preprocessing replaces it, a dict overrides some of its fields."""
    if override is None:
        return prep
    if isinstance(override, Preprocessing):
        return override
    if isinstance(override, dict):
        unknown = set(override) - {"mean", "std", "interpolation", "crop_pct", "input_size"}
        if unknown:
            raise InputError(f"unknown preprocessing field(s) {', '.join(sorted(unknown))}; use mean, std, "
                             f"interpolation, crop_pct, input_size")
        return prep.with_overrides(**override)
    raise InputError(f"preprocessing must be a Preprocessing or a dict of overrides, got {type(override).__name__}")


@dataclass(frozen=True)
class InputSizes:
    """The sizes of a run: the model's input (H, W), the source size each image is cut to before the protocol
    makes its copies (input + the protocol's extent), the shorter side images are resized to, whether they are
    resized, a note for the user, and the rule that chose the input size."""

    model_in: tuple[int, int]
    source: tuple[int, int]
    short_side: int
    resize: bool
    note: str | None
    rule: str = ""  # where model_in comes from, in words (recorded as preprocessing.input_size_rule)


def input_sizes(protocol: Protocol, prep: Preprocessing, own: tuple[int, int], image_size, resize, from_files: bool,
                uniform: bool, basis: str = "the images' own size") -> InputSizes:
    """The model input, source size and resize of an audit.

    The input size follows one stated rule: the protocol's crop size (``crop:S:M``); else ``image_size``; else
    the size the model declares (its configuration); else, for data read from files,
    :data:`~shiftlab.models.preprocessing.INPUT_SIZE_RULE`: the images' common size when a sample of them shares
    one (``own``, ``basis`` says so; images under :data:`MIN_IMAGE_SIDE` left out), else 224, rounded up to a
    multiple of the model's total stride (``prep.stride``); for tensors, their common size (the model's default
    when their sizes differ).
    """
    ey, ex = protocol.extent
    wanted = None if image_size is None else (
        (int(image_size),) * 2 if isinstance(image_size, int) else tuple(int(v) for v in image_size))
    default_in = tuple(int(v) for v in prep.input_size)
    note = None
    own_based = False
    if protocol.size is not None:
        model_in, rule = (protocol.size, protocol.size), f"the protocol's crop size ({protocol.spec()})"
    elif wanted is not None:
        model_in, rule = wanted, "image_size (CLI: --image-size)"
    elif from_files:
        if prep.fixed_size:
            model_in, rule = default_in, f"the model's own ({prep.source})"
        else:  # no input size declared: INPUT_SIZE_RULE (the images' common size, else 224; a stride multiple)
            common = basis.startswith(_COMMON)
            fit = min(own[0] - ey, own[1] - ex) if min(own[0] - ey, own[1] - ex) >= 8 else min(own)
            side, words = undeclared_input_side(fit if common else None, prep.stride)
            model_in, own_based = (side, side), common
            rule = f"{words}; the model declares none ({basis}: {own[0]}x{own[1]})"
            note = (f"the model declares no input size: images measured at {side}x{side} ({words}; {basis}: "
                    f"{own[0]}x{own[1]}); --image-size to choose")
    elif bool(resize) or not uniform or (own[0] >= default_in[0] + ey and own[1] >= default_in[1] + ex):
        model_in = default_in  # the standard evaluation: e.g. 224 centre crop of a 256 image
        rule = f"the model's own ({prep.source})"
    else:
        side = min(own[0] - ey, own[1] - ex)  # smaller images: the largest square input they allow
        model_in, own_based = (side, side), True
        rule = f"the images' common size ({own[0]}x{own[1]}) less the protocol's extent"
    if min(model_in) < 1:
        raise ShapeError(f"images of {own[0]}x{own[1]} are too small for {protocol.spec()!r}")
    source = (model_in[0] + ey, model_in[1] + ex)
    if max(source) > MAX_INPUT_SIDE:
        raise InputError(f"{protocol.spec()!r} at a {model_in[0]}x{model_in[1]} input needs {source[0]}x{source[1]} "
                         f"px, over the {MAX_INPUT_SIDE}-px limit; use a smaller --image-size or protocol")
    do_resize = from_files if resize is None else bool(resize)
    if not from_files and resize is None:
        do_resize = not uniform
    if own_based:
        short_side = max(source)
    else:  # the usual evaluation resize (256 for a 224 input), scaled to the input size; never below the source
        short_side = max(max(source), round(prep.resize_size * model_in[0] / default_in[0]))
    if not do_resize and (own[0] < source[0] or own[1] < source[1]):
        raise ShapeError(f"images are {own[0]}x{own[1]} but {protocol.spec()!r} needs at least "
                         f"{source[0]}x{source[1]}; resize them (CLI: --resize; Python: resize=True) or use a "
                         f"smaller protocol")
    return InputSizes(model_in, source, int(short_side), do_resize, note, rule)


def image_hw(src, i: int) -> tuple[int, int] | None:
    """(H, W) of image ``i``: from the file's header for image files, the array's shape for arrays, else by
    loading it; None when it cannot be read."""
    from shiftlab.data.sources import ImageSource

    paths = getattr(src, "paths", None)
    if isinstance(src, ImageSource) and isinstance(paths, list):
        from PIL import Image

        try:
            with Image.open(paths[i]) as im:
                w, h = im.size
            return int(h), int(w)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None
    array = getattr(src, "array", None)
    if isinstance(src, ImageSource) and isinstance(array, np.ndarray) and array.ndim == 4:
        return tuple(int(v) for v in (array.shape[1:3] if getattr(src, "channels_last", False) else array.shape[2:4]))
    try:
        item = src.load(i) if isinstance(src, ImageSource) else src[i]
    except ShiftlabError:
        return None
    image = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        return None
    return int(image.shape[-2]), int(image.shape[-1])


def typical_size(src, indices: np.ndarray, data_desc: str, probe: torch.Tensor, sample: bool):
    """A probe image that is not tiny, and the data's typical (H, W) with the words that say how it was found.

    With ``sample``, the typical size is the median (by shorter side, then longer) of the first
    :data:`SIZE_SAMPLE` readable images whose shorter side is at least :data:`MIN_IMAGE_SIDE`: one stray image
    sorted first never sets the size. Tiny images are skipped by the loader and counted; when every sampled image
    is tiny the audit is refused.
    """
    from shiftlab.data.sources import ImageSource

    if not sample and min(probe.shape[-2:]) >= MIN_IMAGE_SIDE:
        return probe, tuple(int(v) for v in probe.shape[-2:]), "the first image's size"
    sizes, tiny = [], []
    for i in indices[:SIZE_SAMPLE]:
        hw = image_hw(src, int(i))
        if hw is None:
            continue
        (sizes if min(hw) >= MIN_IMAGE_SIDE else tiny).append((min(hw), max(hw), hw, int(i)))
        if not sample and sizes:
            break
    if not sizes:
        some = f" (e.g. {tiny[0][2][0]}x{tiny[0][2][1]})" if tiny else ""
        raise InputError(f"every readable image among the first {min(len(indices), SIZE_SAMPLE)} of {data_desc} is "
                         f"under {MIN_IMAGE_SIDE} px on its shorter side{some}: too small to measure")
    sizes.sort(key=lambda s: (s[0], s[1], s[3]))
    _, _, hw, index = sizes[(len(sizes) - 1) // 2]
    if min(probe.shape[-2:]) < MIN_IMAGE_SIDE:
        item = src.load(index) if isinstance(src, ImageSource) else src[index]
        probe = item[0] if isinstance(item, (tuple, list)) else item
    kind = _COMMON if len({s[2] for s in sizes}) == 1 else "the median size"
    basis = (f"{kind} of {len(sizes)} sampled images" + (f" ({len(tiny)} under {MIN_IMAGE_SIDE} px left out)"
                                                         if tiny else ""))
    return probe, hw, basis
