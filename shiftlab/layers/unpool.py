"""Upsampling for decoders that moves with the encoder: APS-U, LPU and blurred upsampling.

An encoder that subsamples adaptively (APS, LPS) keeps, per sample, one polyphase component ``x[..., i::s, j::s]``
(phase ``p = i * s + j``). A decoder that upsamples at a fixed phase (a ``ConvTranspose2d`` puts its values at
``(0, 0)``, an interpolation assumes it) puts the values back at the wrong place when the input moved by one pixel.
APS-U (Chaman & Dokmanic 2021) puts every value back at the phase the matching encoder layer chose, zeros
elsewhere, then blurs: ``aps_unpool2d(aps_pool2d(x))`` keeps the component ``x`` kept, in place. LPS's learned
upsampling (LPU, Rojas-Gomez et al. 2022) does the same with LPS's choice: one-hot in evaluation (APS-U with the
learned phase), and in training each component position weighted by its Gumbel-softmax probability.

Pairing. The decoder layer must get the phase its encoder layer chose in the same forward pass. A
:class:`PhaseLink` carries it: ``link.attach(pool)`` hooks an :class:`~shiftlab.layers.APSPool2d` or
:class:`~shiftlab.layers.LPSPool2d` so that every forward pass of that layer records its choice (and the size of its
input) in the link; ``APSUnpool2d(link)`` / ``LPSUnpool2d(link)`` / :class:`UnpoolConvTranspose2d` read it.
``link.scope(model)`` bounds the record to one forward pass of ``model`` (it is forgotten when the model returns,
also on an exception). The record lives in a context variable, as :class:`~shiftlab.layers.SharedPhase`'s choice
does, so concurrent threads never see each other's choices and the layers keep no per-call state. An encoder
layer sharing its phase through a ``SharedPhase`` or a ``LearnedPhase`` records that shared choice. An APS layer
is read by recomputing its choice from its input (the choice is a deterministic function of it, so it is the
same phase, at the cost of a second choice); an LPS layer in training draws Gumbel noise, so the link replays
the random generator's state to obtain the very weights the layer used. A decoder layer called when its
encoder layer has not run raises an :class:`~shiftlab.errors.InputError` naming the layer.

Blur. With ``filter_size > 1`` the unpooled map is blurred by the binomial filter (stride 1, ``padding_mode``) times
``s * s``, so that a constant map stays constant: filter 2 is nearest-neighbour hold, filter 3 linear
interpolation. :func:`blur_upsample2d` / :class:`BlurUpsample2d` is the BlurPool route's decoder: upsampling at a
fixed phase (nearest neighbour, or zero insertion) followed by that blur; it reduces aliasing and guarantees
nothing exactly.

Transposed convolutions. ``ConvTranspose2d(stride s)`` is zero insertion at phase 0 followed by a stride-1 conv
with the kernel flipped and its in/out channels swapped, padded ``(k - 1) * d - p`` before and ``p`` after.
:class:`UnpoolConvTranspose2d` is that identity with the insertion at the encoder's phase and the padding circular
(or zero): it holds the original's ``weight`` and ``bias`` unchanged (same names and shapes), and at phase 0 with
zero padding and no blur computes the original function exactly; with circular padding, exactly where the
border does not wrap. It needs ``d * (k - 1) + output_padding + 1 - 2 p = s`` (the original's output is ``s``
times its input, as in every U-Net), else it is refused.

Exactness. With circular padding everywhere, APS (or LPS) at every subsampling and these layers at every
upsampling, a network's output map moves with every circular integer shift of an input whose size is a multiple of
the total stride: ``f(roll(x, d)) = roll(f(x), d)``.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_float
from shiftlab.errors import ArgumentShapeError, InputError, ShapeError
from shiftlab.layers.aps import APSPool2d, _compiling, _pad_to_multiple, _phase
from shiftlab.layers.blur_pool import _check_padding_mode, _check_stride, blur_pool2d, check_filter_size
from shiftlab.layers.lps import LPSPool2d, _eval_phase, _train_weights

__all__ = ["PhaseLink", "aps_unpool2d", "APSUnpool2d", "lps_unpool2d", "LPSUnpool2d", "blur_upsample2d",
           "BlurUpsample2d", "transposed_conv_weight", "unpool_conv_transpose2d", "UnpoolConvTranspose2d",
           "UPSAMPLE_MODES"]

#: how :func:`blur_upsample2d` upsamples before blurring: nearest-neighbour hold or zero insertion at phase 0
UPSAMPLE_MODES = ("nearest", "zeros")

# id(PhaseLink) -> (choice, (H, W) of the encoder layer's input) of the forward pass under way
_RECORDS: ContextVar[dict[int, tuple[Tensor, tuple[int, int]]]] = ContextVar("shiftlab_phase_links", default={})


def _check_choice(choice, batch: int, stride: int) -> Tensor:
    """A (B,) int64 phase or (B, s*s) float weights, checked against the batch and stride."""
    if not isinstance(choice, Tensor):
        raise ShapeError(f"phase must be a tensor, got {type(choice).__name__}")
    if choice.dtype == torch.int64 and choice.shape == (batch,):
        if choice.numel() and not bool(((choice >= 0) & (choice < stride * stride)).all()):
            raise ShapeError(f"phase values must lie in [0, {stride * stride}), got {choice.tolist()}")
        return choice
    if choice.is_floating_point() and choice.shape == (batch, stride * stride):
        return choice
    raise ShapeError(f"phase must be (B,) = ({batch},) int64 phases or ({batch}, {stride * stride}) mixture weights, "
                     f"got {choice.dtype} {tuple(choice.shape)}")


def _place(x: Tensor, phase: Tensor, stride: int) -> Tensor:
    """Zeros of (B, C, h*s, w*s) with ``x[b]`` at offset ``(p // s, p % s)``, ``p = phase[b]``."""
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, h, stride, w, stride)
    batch = torch.arange(b, device=x.device)
    phase = phase.to(x.device)
    out[batch, :, :, phase // stride, :, phase % stride] = x
    return out.reshape(b, c, h * stride, w * stride)


def _place_soft(x: Tensor, weights: Tensor, stride: int) -> Tensor:
    """(B, C, h*s, w*s) with ``weights[b, p] * x[b]`` at the offset of phase ``p`` (LPU in training)."""
    b, c, h, w = x.shape
    grid = weights.to(x.dtype).reshape(b, 1, 1, stride, 1, stride)
    return (x[:, :, :, None, :, None] * grid).reshape(b, c, h * stride, w * stride)


def _blur_gain(y: Tensor, filter_size: int, stride: int, padding_mode: str) -> Tensor:
    """The binomial blur at stride 1 times ``s * s`` (a constant map stays constant after unpooling)."""
    if filter_size == 1:
        return y
    return blur_pool2d(y, filter_size, 1, padding_mode) * float(stride * stride)


def _crop(y: Tensor, output_size) -> Tensor:
    if output_size is None:
        return y
    h, w = (int(output_size[0]), int(output_size[1]))
    if not (0 < h <= y.shape[-2] and 0 < w <= y.shape[-1]):
        raise ShapeError(f"output_size {tuple(output_size)} must lie within the unpooled size {tuple(y.shape[-2:])}")
    return y[..., :h, :w]


def _unpool(x: Tensor, choice: Tensor, stride: int, filter_size: int, padding_mode: str) -> Tensor:
    choice = _check_choice(choice, x.shape[0], stride)
    y = _place(x, choice, stride) if choice.dtype == torch.int64 else _place_soft(x, choice, stride)
    return _blur_gain(y, filter_size, stride, padding_mode)


def _check_unpool_arguments(x: Tensor, stride, filter_size, padding_mode) -> None:
    check_float(check_bchw(x))
    _check_stride(stride)
    check_filter_size(filter_size)
    _check_padding_mode(padding_mode)


def aps_unpool2d(x: Tensor, phase: Tensor, stride: int = 2, filter_size: int = 1, padding_mode: str = "circular",
                 output_size=None) -> Tensor:
    """APS-U: put each sample's values back at the polyphase offset its encoder layer kept, zeros elsewhere.

    Args:
        x: the decoder's map at the encoder layer's output resolution.
        phase: (B,) int64, the phases the encoder kept (:func:`~shiftlab.layers.aps_pool2d` with
            ``return_phase=True``); phase ``p`` is the offset ``(p // stride, p % stride)``.
        stride: the encoder layer's stride ``s``.
        filter_size: if above 1, blur the unpooled map with the binomial filter of this size times ``s * s``.
        padding_mode: padding of that blur (``"circular"`` for exact equivariance).
        output_size: ``(H, W)`` to crop to (the encoder layer's input size, when it was not a multiple of ``s``).

    Shape:
        Input: (B, C, h, w). Output: (B, C, h * s, w * s), or ``output_size``.

    >>> x = torch.zeros(1, 1, 4, 4); x[..., 1, 3] = 5.0
    >>> from shiftlab.layers import aps_pool2d
    >>> y, p = aps_pool2d(x, return_phase=True)
    >>> bool((aps_unpool2d(y, p) == x).all())
    True
    """
    _check_unpool_arguments(x, stride, filter_size, padding_mode)
    if not isinstance(phase, Tensor) or phase.dtype != torch.int64:
        raise ShapeError(f"phase must be an int64 tensor of shape ({x.shape[0]},); for LPS mixture weights use "
                         "lps_unpool2d")
    return _crop(_unpool(x, phase, stride, filter_size, padding_mode), output_size)


def lps_unpool2d(x: Tensor, choice: Tensor, stride: int = 2, filter_size: int = 1, padding_mode: str = "circular",
                 output_size=None) -> Tensor:
    """LPU: :func:`aps_unpool2d` with LPS's choice: a (B,) int64 phase (evaluation: one-hot, APS-U with the learned
    phase) or (B, s*s) mixture weights (training: component position ``p`` holds ``weights[:, p] * x``).

    Shape:
        Input: (B, C, h, w); choice (B,) or (B, s * s). Output: (B, C, h * s, w * s), or ``output_size``.

    >>> w = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    >>> lps_unpool2d(torch.ones(1, 1, 1, 1), w).flatten().tolist()
    [0.25, 0.75, 0.0, 0.0]
    """
    _check_unpool_arguments(x, stride, filter_size, padding_mode)
    return _crop(_unpool(x, choice, stride, filter_size, padding_mode), output_size)


def blur_upsample2d(x: Tensor, stride: int = 2, filter_size: int = 3, padding_mode: str = "circular",
                    mode: str = "nearest") -> Tensor:
    """Upsample by ``stride`` at a fixed phase (``"nearest"`` hold or ``"zeros"`` insertion), then blur.

    The blur is the binomial filter at stride 1; after zero insertion it is scaled by ``s * s`` (a constant map
    stays constant). The BlurPool route's decoder: less aliasing, no exact guarantee.

    Shape:
        Input: (B, C, h, w). Output: (B, C, h * s, w * s).

    >>> blur_upsample2d(torch.ones(1, 2, 3, 3)).shape
    torch.Size([1, 2, 6, 6])
    """
    _check_unpool_arguments(x, stride, filter_size, padding_mode)
    if mode not in UPSAMPLE_MODES:
        raise ArgumentShapeError(f"mode must be one of {', '.join(UPSAMPLE_MODES)}; got {mode!r}")
    if mode == "zeros":
        return _unpool(x, torch.zeros(x.shape[0], dtype=torch.int64, device=x.device), stride, filter_size,
                       padding_mode)
    y = x.repeat_interleave(stride, dim=-2).repeat_interleave(stride, dim=-1)
    return blur_pool2d(y, filter_size, 1, padding_mode) if filter_size > 1 else y


class BlurUpsample2d(nn.Module):
    """Module form of :func:`blur_upsample2d`.

    Shape:
        Input: (B, C, h, w). Output: (B, C, h * stride, w * stride).
    """

    def __init__(self, stride: int = 2, filter_size: int = 3, padding_mode: str = "circular",
                 mode: str = "nearest") -> None:
        super().__init__()
        self.stride, self.filter_size = _check_stride(stride), check_filter_size(filter_size)
        self.padding_mode = _check_padding_mode(padding_mode)
        if mode not in UPSAMPLE_MODES:
            raise ArgumentShapeError(f"mode must be one of {', '.join(UPSAMPLE_MODES)}; got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return blur_upsample2d(x, self.stride, self.filter_size, self.padding_mode, self.mode)

    def extra_repr(self) -> str:
        return (f"stride={self.stride}, filter_size={self.filter_size}, padding_mode={self.padding_mode!r}, "
                f"mode={self.mode!r}")


def _rng_state(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class PhaseLink:
    """The choice of one encoder subsampling layer, read by its decoder layer in the same forward pass.

    ``link.attach(pool)`` (an :class:`~shiftlab.layers.APSPool2d` or :class:`~shiftlab.layers.LPSPool2d`) records,
    at every forward pass of ``pool``, the phase it kept ((B,) int64; for LPS in training, its (B, s*s) mixture
    weights) and its input's (H, W); :meth:`current` returns them. ``link.scope(model)`` forgets the record when
    ``model``'s forward pass ends (also on an exception). ``name`` names the pair in error messages.

    >>> link = PhaseLink(stride=2, name="down1"); pool = APSPool2d(); link.attach(pool)
    >>> y = pool(torch.randn(2, 3, 4, 4)); link.current()[0].shape
    torch.Size([2])
    """

    def __init__(self, stride: int = 2, name: str | None = None) -> None:
        self.stride = _check_stride(stride)
        self.name = name
        self._compiling_record: tuple[Tensor, tuple[int, int]] | None = None

    def attach(self, pool: nn.Module) -> None:
        """Record ``pool``'s choice at each of its forward passes."""
        if isinstance(pool, APSPool2d):
            hook = self._record_aps
        elif isinstance(pool, LPSPool2d):
            hook = self._record_lps
        else:
            raise InputError(f"a PhaseLink reads an APSPool2d or LPSPool2d, got {type(pool).__name__}")
        if pool.stride != self.stride:
            raise ArgumentShapeError(f"the link has stride {self.stride}, the layer has stride {pool.stride}")
        if isinstance(pool, LPSPool2d):
            pool.register_forward_pre_hook(self._remember_rng)
            pool.register_forward_hook(hook)
        else:
            pool.register_forward_pre_hook(hook)

    def scope(self, module: nn.Module) -> None:
        """Bound the record to each forward pass of ``module`` (forgotten when it returns)."""
        module.register_forward_pre_hook(lambda m, args: self.release())
        module.register_forward_hook(lambda m, args, out: self.release(), always_call=True)

    def record(self, choice: Tensor, size: tuple[int, int]) -> None:
        """Set the choice of the pass under way (what the hooks do; for functional code)."""
        entry = (choice, (int(size[0]), int(size[1])))
        if _compiling():
            self._compiling_record = entry
            return
        _RECORDS.set({**_RECORDS.get(), id(self): entry})

    def current(self) -> tuple[Tensor, tuple[int, int]] | None:
        """``(choice, (H, W))`` recorded in the pass under way, or None if the encoder layer has not run."""
        if _compiling():
            return self._compiling_record
        return _RECORDS.get().get(id(self))

    def release(self) -> None:
        """Forget the record."""
        if _compiling():
            self._compiling_record = None
            return
        records = dict(_RECORDS.get())
        if records.pop(id(self), None) is not None:
            _RECORDS.set(records)

    def _record_aps(self, pool: APSPool2d, args: tuple) -> None:
        x = check_bchw(args[0])
        shared = pool.shared.current() if pool.shared is not None else None
        if shared is None:
            y = blur_pool2d(x, pool.filter_size, 1, pool.padding_mode) if pool.filter_size > 1 else x
            shared = _phase(_pad_to_multiple(y.detach(), self.stride), self.stride)
        self.record(shared, x.shape[-2:])

    def _remember_rng(self, pool: LPSPool2d, args: tuple) -> None:
        x = args[0]
        self._rng = (x.device, _rng_state(x.device)) if pool.training else None

    def _record_lps(self, pool: LPSPool2d, args: tuple, output: Tensor) -> None:
        x = check_bchw(args[0])
        choice = pool.shared.current() if pool.shared is not None else None
        if choice is None:  # recompute the layer's own choice; in training, from the same Gumbel noise
            y = blur_pool2d(x, pool.filter_size, 1, pool.padding_mode) if pool.filter_size > 1 else x
            y = _pad_to_multiple(y, self.stride)
            after = None
            if pool.training and getattr(self, "_rng", None) is not None:
                device, before = self._rng
                after = _rng_state(device)
                _set_rng_state(device, before)
            try:
                if pool.shared is not None:
                    choice = pool.shared.choose(y)
                elif pool.training:
                    choice = _train_weights(y, pool.scorer, self.stride, pool.prior_scale, float(pool.temperature))
                else:
                    choice = _eval_phase(y, pool.scorer, self.stride, pool.prior_scale)
            finally:
                if after is not None:
                    _set_rng_state(self._rng[0], after)
        self.record(choice, x.shape[-2:])

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"PhaseLink(stride={self.stride}{name})"


def _read(link: PhaseLink, layer: str, x: Tensor, soft: bool) -> tuple[Tensor, tuple[int, int]]:
    """The choice the link holds for this pass, checked; InputError naming ``layer`` when there is none."""
    entry = link.current()
    if entry is None:
        encoder = f" {link.name}" if link.name else ""
        raise InputError(f"the decoder layer {layer} has no phase: its encoder layer{encoder} (PhaseLink stride "
                         f"{link.stride}) did not run before it in this forward pass; run the whole model, or record "
                         "a phase with link.record(...)")
    choice, size = entry
    if choice.shape[0] != x.shape[0]:
        raise ShapeError(f"{layer}: the encoder's phase is for a batch of {choice.shape[0]}, the input has "
                         f"{x.shape[0]}")
    if choice.dtype != torch.int64 and not soft:
        raise InputError(f"{layer}: its encoder layer is an LPS layer in training (mixture weights): use LPSUnpool2d")
    return choice, size


class APSUnpool2d(nn.Module):
    """Module form of :func:`aps_unpool2d`, reading the phase its encoder layer chose through a :class:`PhaseLink`.

    The output is cropped to the encoder layer's input size. ``name`` (the layer's name in its model) is used
    in error messages.

    Shape:
        Input: (B, C, h, w). Output: (B, C, H, W), the encoder layer's input size (``h * stride`` when it was a
        multiple of the stride).
    """

    _soft = False

    def __init__(self, link: PhaseLink, filter_size: int = 1, padding_mode: str = "circular",
                 name: str | None = None) -> None:
        super().__init__()
        if not isinstance(link, PhaseLink):
            raise InputError(f"link must be a PhaseLink, got {type(link).__name__}")
        self.link, self.stride = link, link.stride
        self.filter_size = check_filter_size(filter_size)
        self.padding_mode = _check_padding_mode(padding_mode)
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        check_float(check_bchw(x))
        choice, size = _read(self.link, self.name or type(self).__name__, x, self._soft)
        return _crop(_unpool(x, choice, self.stride, self.filter_size, self.padding_mode), size)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, filter_size={self.filter_size}, padding_mode={self.padding_mode!r}"


class LPSUnpool2d(APSUnpool2d):
    """Module form of :func:`lps_unpool2d` (LPU): the phase of an LPS encoder layer in evaluation, its mixture
    weights in training, read through a :class:`PhaseLink`.

    Shape:
        Input: (B, C, h, w). Output: (B, C, H, W), the encoder layer's input size.
    """

    _soft = True


def transposed_conv_weight(weight: Tensor, groups: int = 1) -> Tensor:
    """The ``conv2d`` weight equivalent to a ``conv_transpose2d`` weight: in/out channels swapped per group and the
    kernel flipped.

    Shape:
        Input: (C_in, C_out / groups, kH, kW). Output: (C_out, C_in / groups, kH, kW).
    """
    c_in, c_out_g, kh, kw = weight.shape
    w = weight.reshape(groups, c_in // groups, c_out_g, kh, kw).transpose(1, 2)
    return w.reshape(groups * c_out_g, c_in // groups, kh, kw).flip(-2, -1)


def _pads(kernel_size, stride, padding, output_padding, dilation) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of the stride-1 conv, or ArgumentShapeError if the identity cannot hold."""
    pads = []
    for k, s, p, op, d in zip(kernel_size, stride, padding, output_padding, dilation):
        if d * (k - 1) + op + 1 - 2 * p != s or d * (k - 1) - p < 0:
            raise ArgumentShapeError(f"a transposed conv with kernel {tuple(kernel_size)}, stride {tuple(stride)}, "
                                     f"padding {tuple(padding)}, output_padding {tuple(output_padding)}, dilation "
                                     f"{tuple(dilation)} does not upsample by exactly its stride, so it cannot "
                                     "become an unpooling at the encoder's phase")
        pads.append((d * (k - 1) - p, p))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def unpool_conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None, choice: Tensor, stride: int = 2,
                            padding=0, output_padding=0, dilation=1, groups: int = 1, filter_size: int = 1,
                            padding_mode: str = "circular") -> Tensor:
    """``conv_transpose2d`` with its zero insertion at the encoder's phase: unpool (:func:`lps_unpool2d`), blur,
    pad (``padding_mode``), then a stride-1 ``conv2d`` with :func:`transposed_conv_weight`.

    At phase 0, ``filter_size=1`` and ``padding_mode="zeros"`` this is ``F.conv_transpose2d`` exactly.

    Shape:
        Input: (B, C_in, h, w); weight (C_in, C_out / groups, kH, kW). Output: (B, C_out, h * s, w * s).
    """
    _check_unpool_arguments(x, stride, filter_size, padding_mode)
    two = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    pads = _pads(weight.shape[-2:], (stride, stride), two(padding), two(output_padding), two(dilation))
    y = _unpool(x, choice, stride, filter_size, padding_mode)
    y = F.pad(y, pads, mode="circular" if padding_mode == "circular" else "constant")
    return F.conv2d(y, transposed_conv_weight(weight, groups), bias, dilation=two(dilation), groups=groups)


class UnpoolConvTranspose2d(nn.ConvTranspose2d):
    """A ``ConvTranspose2d`` whose zero insertion follows the encoder's phase (APS-U / LPU), read through a
    :class:`PhaseLink`; the same parameters (``weight``, ``bias``) as the layer it replaces.

    Built by :meth:`from_conv_transpose` (keeping the original's parameter objects) or like a ``ConvTranspose2d``
    with ``link=``. ``pad_mode`` is ``"circular"`` (exact equivariance) or ``"zeros"`` (the original's border).

    Shape:
        Input: (B, C_in, h, w). Output: (B, C_out, h * stride, w * stride).
    """

    def __init__(self, *args, link: PhaseLink, filter_size: int = 1, pad_mode: str = "circular",
                 name: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(link, PhaseLink):
            raise InputError(f"link must be a PhaseLink, got {type(link).__name__}")
        if self.stride[0] != self.stride[1] or self.stride[0] != link.stride:
            raise ArgumentShapeError(f"the layer's stride {self.stride} must be square and equal the link's "
                                     f"{link.stride}")
        _pads(self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation)
        self.link, self.filter_size, self.name = link, check_filter_size(filter_size), name
        if pad_mode not in ("circular", "zeros"):
            raise ArgumentShapeError(f"pad_mode must be 'circular' or 'zeros', got {pad_mode!r}")
        self.pad_mode = pad_mode

    @classmethod
    def from_conv_transpose(cls, conv: nn.ConvTranspose2d, link: PhaseLink, filter_size: int = 1,
                            pad_mode: str = "circular", name: str | None = None) -> UnpoolConvTranspose2d:
        """The replacement of ``conv``, holding ``conv``'s own ``weight`` and ``bias`` parameters."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  output_padding=conv.output_padding, groups=conv.groups, bias=conv.bias is not None,
                  dilation=conv.dilation, link=link, filter_size=filter_size, pad_mode=pad_mode, name=name,
                  device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        check_float(check_bchw(x))
        choice, _ = _read(self.link, self.name or type(self).__name__, x, True)
        return unpool_conv_transpose2d(x, self.weight, self.bias, choice, self.stride[0], self.padding,
                                       self.output_padding, self.dilation, self.groups, self.filter_size,
                                       self.pad_mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, unpool at the encoder's phase, filter_size={self.filter_size}, " \
               f"pad_mode={self.pad_mode!r}"
