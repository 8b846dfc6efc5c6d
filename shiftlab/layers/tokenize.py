"""Polyphase tokenization and a shift-equivariant position encoding for vision transformers.

A vision transformer cuts the image into ``p x p`` patches with a stride-``p`` convolution (its patch embedding):
of the ``p * p`` offset grids of the image it always keeps the one at ``(0, 0)``, so a shift by one pixel
changes every token. Polyphase (adaptive) tokenization (Ding et al. 2023; Rojas-Gomez et al. 2024) keeps, for
each sample, the offset grid of largest L2 norm instead: it rolls the image circularly so that this grid sits at
the origin, then embeds the patches as before. The choice is :func:`~shiftlab.layers.aps_phase` at stride ``p``
(the same exact, rounding-proof rule as APS, ties to the lowest offset; see :mod:`shiftlab.layers.aps`), so
under a circular shift ``d`` of an input whose height and width are multiples of ``p`` the chosen offset moves
by ``d`` modulo ``p`` and the rolled image moves by whole patches: the tokens are the same tokens, circularly
rolled on the token grid.

What follows the patch embedding must then be equivariant to that roll of the token grid. Self-attention, the
MLPs and the layer norms act on a set of tokens and are; an absolute position embedding (a learned vector per
grid position) is not. :func:`conv_position_encoding` / :class:`ConvPositionEncoding` is a circular depthwise
convolution on the token grid, added residually to the tokens (a conditional position encoding, as in CPVT's
PEG, but circular): it commutes with every roll of the token grid, and a zero-initialised one is the identity,
so a converted model starts as the model without absolute position embeddings.

- :func:`polyphase_offset`: the offset index each sample keeps.
- :func:`polyphase_tokenize` / :class:`PolyphaseTokenize`: the input rolled so that the kept grid is at the origin.
- :class:`PolyphasePatchEmbed`: an existing patch embedding (timm's ``PatchEmbed``, a ``Conv2d``) after that roll,
  with its weights, and optionally a :class:`ConvPositionEncoding` on its tokens.
- :func:`conv_position_encoding` / :class:`ConvPositionEncoding`.

Exactness is claimed for inputs whose height and width are multiples of ``p`` (other sizes are padded circularly
for the choice, as APS does, and the patch embedding drops what does not fill a patch).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from shiftlab._checks import check_bchw, check_float, check_int
from shiftlab.errors import InputError, ShapeError
from shiftlab.layers.aps import aps_phase

__all__ = ["polyphase_offset", "polyphase_tokenize", "PolyphaseTokenize", "PolyphasePatchEmbed",
           "conv_position_encoding", "ConvPositionEncoding", "patch_size_of"]


def _check_patch_size(patch_size) -> int:
    return check_int("patch_size", patch_size, 1)


def polyphase_offset(x: Tensor, patch_size: int) -> Tensor:
    """Which of the ``p x p`` offset grids of each sample has the largest L2 norm (over channels and positions).

    Exactly :func:`~shiftlab.layers.aps_phase` with ``stride=p``: the energies are quantised and summed exactly,
    so rounding cannot decide between equal norms, and exact ties go to the lowest offset in row-major order.

    Shape:
        Input: (B, C, H, W). Output: (B,) int64 in ``[0, p * p)``; offset ``k`` is the grid starting at row
        ``k // p``, column ``k % p``.

    >>> x = torch.zeros(1, 1, 4, 4); x[..., 1, 2] = 1.0
    >>> polyphase_offset(x, 2).tolist()
    [2]
    """
    check_float(check_bchw(x))
    return aps_phase(x, stride=_check_patch_size(patch_size))


def _roll_back(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """``torch.roll(x[b], (-dy[b], -dx[b]), (-2, -1))`` for every sample at once (a gather: differentiable)."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None]) % h
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None]) % w
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def polyphase_tokenize(x: Tensor, patch_size: int, return_offset: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Roll each sample circularly so that its offset grid of largest norm (:func:`polyphase_offset`) starts at
    the origin: a patch embedding of the result sees the same patches whatever circular shift the input had, in
    an order rolled on the token grid.

    Args:
        x: input batch.
        patch_size: ``p``; there are ``p * p`` offset grids.
        return_offset: also return the offset index kept for each sample.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W); offset (B,) int64.

    >>> x = torch.zeros(1, 1, 4, 4); x[..., 1, 2] = 1.0
    >>> y, k = polyphase_tokenize(x, 2, return_offset=True)
    >>> k.tolist(), y[0, 0].nonzero().tolist()  # offset (1, 0): the pixel moves onto the origin grid
    ([2], [[0, 2]])
    """
    p = _check_patch_size(patch_size)
    offset = polyphase_offset(x, p)
    offset = offset.to(x.device)
    out = _roll_back(x, offset // p, offset % p)
    return (out, offset) if return_offset else out


class PolyphaseTokenize(nn.Module):
    """Module form of :func:`polyphase_tokenize`.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W).

    >>> PolyphaseTokenize(4)(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 3, 8, 8])
    """

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = _check_patch_size(patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return polyphase_tokenize(x, self.patch_size)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}"


def _check_kernel(kernel_size) -> int:
    k = check_int("kernel_size", kernel_size, 1)
    if k % 2 == 0:
        raise InputError(f"kernel_size must be odd (a centred circular convolution), got {k}")
    return k


def conv_position_encoding(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x + depthwise_conv(x)`` with circular padding: a position encoding that commutes with every circular roll
    of the token grid.

    Args:
        x: the tokens as a map, one channel per embedding dimension.
        weight: (C, 1, k, k) depthwise kernel, ``k`` odd.
        bias: (C,) or None.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W).

    >>> x = torch.randn(1, 4, 3, 3)
    >>> torch.equal(conv_position_encoding(x, torch.zeros(4, 1, 3, 3)), x)
    True
    """
    check_float(check_bchw(x))
    c = x.shape[1]
    if not isinstance(weight, Tensor) or weight.ndim != 4 or weight.shape[:2] != (c, 1) \
            or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ShapeError(f"weight must be a ({c}, 1, k, k) depthwise kernel with k odd, got "
                         f"{tuple(getattr(weight, 'shape', ()))}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (c,)):
        raise ShapeError(f"bias must have shape ({c},), got {tuple(getattr(bias, 'shape', ()))}")
    r = weight.shape[-1] // 2
    padded = F.pad(x, (r, r, r, r), mode="circular") if r else x
    return x + F.conv2d(padded, weight, bias, groups=c)


class ConvPositionEncoding(nn.Module):
    """Module form of :func:`conv_position_encoding`: a learned circular depthwise convolution on the token grid,
    added to the tokens. Initialised to zero (``init="zeros"``, the identity: a converted model starts as the model
    without absolute position embeddings) or to small normal values (``init="normal"``, std ``1e-3``).

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W).

    >>> ConvPositionEncoding(8)(torch.randn(2, 8, 4, 4)).shape
    torch.Size([2, 8, 4, 4])
    """

    def __init__(self, channels: int, kernel_size: int = 3, bias: bool = True, init: str = "zeros",
                 device=None, dtype=None) -> None:
        super().__init__()
        self.channels = check_int("channels", channels, 1)
        self.kernel_size = _check_kernel(kernel_size)
        if init not in ("zeros", "normal"):
            raise InputError(f"init must be 'zeros' or 'normal', got {init!r}")
        like = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.zeros(channels, 1, self.kernel_size, self.kernel_size, **like))
        self.bias = nn.Parameter(torch.zeros(channels, **like)) if bias else None
        if init == "normal":
            with torch.no_grad():
                self.weight.normal_(0.0, 1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return conv_position_encoding(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, circular, bias={self.bias is not None}"


def patch_size_of(embed: nn.Module) -> int:
    """The square patch size of a patch embedding: timm's ``patch_size``, else its (or its ``proj``'s) stride.

    Raises :class:`~shiftlab.errors.InputError` for a non-square patch or an embedding whose patch size is unknown.
    """
    size = getattr(embed, "patch_size", None)
    if size is None:
        conv = embed if isinstance(embed, nn.Conv2d) else getattr(embed, "proj", None)
        size = conv.stride if isinstance(conv, nn.Conv2d) else None
    if size is None:
        raise InputError(f"cannot tell the patch size of {type(embed).__name__}: pass patch_size")
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    if len(sizes) != 2 or sizes[0] != sizes[1]:
        raise InputError(f"polyphase tokenization needs square patches, {type(embed).__name__} has {sizes}")
    return _check_patch_size(int(sizes[0]))


#: attributes of the wrapped patch embedding that timm's models read and :class:`PolyphasePatchEmbed` passes on
_PASSED_ON = ("img_size", "grid_size", "num_patches", "flatten", "output_fmt", "dynamic_img_pad", "strict_img_size",
              "feat_ratio", "dynamic_feat_size", "set_input_size")


class PolyphasePatchEmbed(nn.Module):
    """A patch embedding after polyphase tokenization: ``embed(polyphase_tokenize(x, p))``, then an optional
    :class:`ConvPositionEncoding` of its tokens on their grid.

    ``embed`` keeps its weights (it is this module's child ``embed``); its output may be tokens (B, N, D) with
    ``N = (H // p) * (W // p)`` (timm's ``PatchEmbed``), a map (B, D, H / p, W / p) (a ``Conv2d``) or (B, H / p, W / p,
    D) (timm's ``output_fmt="NHWC"``), and is returned in the same layout. The attributes timm reads from a patch
    embedding (``grid_size``, ``num_patches``, ``feat_ratio``, ...) are passed on, and ``patch_size`` is ``(p, p)``.

    Shape:
        Input: (B, C, H, W). Output: that of ``embed``.

    >>> embed = nn.Conv2d(3, 8, 4, stride=4)
    >>> PolyphasePatchEmbed(embed, position=ConvPositionEncoding(8))(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 8, 2, 2])
    """

    def __init__(self, embed: nn.Module, patch_size: int | None = None, position: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(embed, nn.Module):
            raise InputError(f"embed must be a torch.nn.Module, got {type(embed).__name__}")
        p = patch_size_of(embed) if patch_size is None else _check_patch_size(patch_size)
        self.embed = embed
        self.position = position
        self.patch_size = (p, p)
        self.stride = (p, p)  # what shiftlab.inspect reads: the token grid's stride
        fmt = getattr(embed, "output_fmt", None)
        self._layout = str(getattr(fmt, "value", fmt)) if fmt is not None else None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _PASSED_ON and "embed" in self._modules:
                return getattr(self._modules["embed"], name)
            raise

    def _encode(self, t: Tensor, grid: tuple[int, int]) -> Tensor:
        """The position encoding of the tokens ``t`` in the embedding's own layout."""
        if t.ndim == 3:
            b, n, d = t.shape
            if n != grid[0] * grid[1]:
                raise ShapeError(f"the patch embedding gave {n} tokens, the {grid[0]}x{grid[1]} grid of the input "
                                 "needs as many (a dynamically padded embedding is not supported)")
            mapped = self.position(t.transpose(1, 2).reshape(b, d, *grid))
            return mapped.reshape(b, d, n).transpose(1, 2)
        if t.ndim == 4 and self._layout == "NHWC":
            return self.position(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if t.ndim == 4:
            return self.position(t)
        raise ShapeError(f"the patch embedding's output must be (B, N, D) tokens or a map, got {tuple(t.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size[0]
        t = self.embed(polyphase_tokenize(x, p))
        if self.position is None:
            return t
        return self._encode(t, (x.shape[-2] // p, x.shape[-1] // p))

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size[0]}, polyphase"
