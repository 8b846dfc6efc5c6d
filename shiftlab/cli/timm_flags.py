"""The flags a user of timm's ``validate.py`` types, with timm's meanings, where they fit shiftlab's.

``--num-classes N`` and ``--in-chans C`` build the timm (torchvision: classes only) model with N classes and C
input channels, so a 5-class or 1-channel checkpoint loads (images are converted to C channels: 1 grey, 3 RGB);
``--input-size C H W`` sets both the input channels and the model input size (H != W allowed: the engine takes
(H, W)); ``--img-size``, ``-b`` and ``-j`` are aliases of ``--image-size``, ``--batch-size`` and ``--workers``
(declared with those flags); ``--amp-dtype`` chooses the autocast dtype of ``--amp``; ``--channels-last`` runs
the model and its inputs in channels-last memory format; ``--torchcompile [BACKEND]`` compiles the model. timm's
``--checkpoint`` (a weights file) is shiftlab's ``--weights``: ``--checkpoint`` on ``audit`` is the resume folder,
and a file passed there is refused with one line that names ``--weights``.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_build_arguments(parser); add_execution_arguments(parser)
>>> args = parser.parse_args(["--input-size", "1", "32", "48", "--torchcompile"])
>>> input_size(args), args.torchcompile
((1, (32, 48)), 'inductor')
"""

from __future__ import annotations

import argparse

from shiftlab.cli.arguments import positive_int

__all__ = ["add_checkpoint_hint", "add_build_arguments", "add_execution_arguments", "build_kwargs", "input_size", "AMP_DTYPE_CHOICES"]

#: --amp-dtype's choices (timm's validate.py)
AMP_DTYPE_CHOICES = ("float16", "bfloat16")


class _WeightsNotCheckpoint(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"--checkpoint {values}: timm's --checkpoint (a weights file) is --weights {values} here")


def add_checkpoint_hint(parser: argparse.ArgumentParser) -> None:
    """A hidden --checkpoint on commands that have none of their own: timm's meaning (a weights file), answered
    with one line that names --weights."""
    parser.add_argument("--checkpoint", action=_WeightsNotCheckpoint, help=argparse.SUPPRESS)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """--num-classes, --in-chans: how the model named by --model is built (they change which model is measured)."""
    parser.add_argument("--num-classes", type=positive_int, metavar="N",
                        help="build the timm/torchvision model with N classes (timm's meaning), e.g. so that a "
                             "5-class checkpoint given by --weights fits")
    parser.add_argument("--in-chans", type=positive_int, metavar="C",
                        help="build the timm model with C input channels (torchvision: 3 only); images are "
                             "converted to C channels (1: grey, 3: RGB)")


def build_kwargs(args: argparse.Namespace) -> dict:
    """--num-classes / --in-chans as keyword arguments of the model loader (only those given)."""
    from shiftlab.models.loading import given_build_options

    return given_build_options(args)


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """--input-size, --amp-dtype, --channels-last, --torchcompile (timm's validate.py meanings)."""
    parser.add_argument("--input-size", type=positive_int, nargs=3, metavar=("C", "H", "W"),
                        help="timm's input size: sets --in-chans C and the model input H x W (H != W allowed)")
    parser.add_argument("--amp-dtype", choices=AMP_DTYPE_CHOICES, default=None,
                        help="the autocast dtype of --amp (default float16; bfloat16 needs a GPU that has it)")
    parser.add_argument("--channels-last", action="store_true", default=None,
                        help="model and inputs in channels-last memory format (the same results within float "
                             "tolerance; default: the engine's choice)")
    parser.add_argument("--torchcompile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile the model (default backend inductor; e.g. eager)")


def input_size(args: argparse.Namespace) -> tuple[int | None, int | tuple[int, int] | None]:
    """(in_chans, image size) from --in-chans, --image-size and --input-size C H W: the image size is an int for a
    square input, (H, W) otherwise. --input-size beside a different --in-chans or --image-size is refused."""
    from shiftlab.errors import InputError

    in_chans, image_size = getattr(args, "in_chans", None), getattr(args, "image_size", None)
    given = getattr(args, "input_size", None)
    if given is None:
        return in_chans, image_size
    c, h, w = given
    if in_chans is not None and in_chans != c:
        raise InputError(f"--input-size {c} {h} {w} and --in-chans {in_chans} disagree; give one of them")
    if image_size is not None and (h, w) != (image_size, image_size):
        raise InputError(f"--input-size {c} {h} {w} and --image-size {image_size} disagree; give one of them")
    if in_chans is None and not _buildable(getattr(args, "model", None), getattr(args, "weights", None)):
        c = None  # a model built as it is (a fixed checkpoint, your own file): its first convolution sets the channels
    return c, (h if h == w else (h, w))


def _buildable(spec, weights) -> bool:
    """Whether --in-chans can build ``spec``: a timm / torchvision name whose weights are not a fixed checkpoint."""
    from pathlib import Path

    from shiftlab.models.fixed_checkpoint import read_fixed
    from shiftlab.models.loading import build_options

    if not build_options(spec, {"in_chans": 1}):
        return False
    path = Path(weights).expanduser() if weights is not None else None
    return path is None or not path.is_file() or read_fixed(path) is None
