"""The input-size rule of a model that declares no input size, in one place: the words ``audit --help`` and
``report --help`` print (one constant, so both state it identically) and the default side. Torch-free, so that
``--help`` stays fast; :func:`shiftlab.models.preprocessing.undeclared_input_side` applies the rule."""

from __future__ import annotations

__all__ = ["DEFAULT_INPUT_SIDE", "INPUT_SIZE_RULE"]

#: the input side of a model that declares none, when its images differ in size (the ImageNet convention)
DEFAULT_INPUT_SIDE = 224
#: the input-size rule for a model that declares no input size, as ``audit --help`` and ``report --help`` state it
INPUT_SIZE_RULE = ("a model that declares no input size (no timm pretrained_cfg, no torchvision weights) is measured "
                   "at the images' common size when the first 64 images all have one size, else at 224 px (the "
                   "ImageNet convention), rounded up to a multiple of the model's total stride")
