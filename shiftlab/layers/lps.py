"""Learned polyphase subsampling: LPS (Rojas-Gomez et al. 2022) and TIPS (Saha & Gokhale 2025).

Both split a map into its ``s * s`` polyphase components ``x[..., i::s, j::s]`` (phase ``i * s + j``, as for
:mod:`~shiftlab.layers.aps`) and learn which of them to keep.

LPS. A small scoring network shared across components (3x3 conv ``C -> h``, ReLU, 3x3 conv ``h -> h``, both
with circular padding, then the mean over channels and positions) gives one logit per component. In training
mode the output is the mixture ``sum_k p_k x_k`` with ``p = gumbel_softmax(logits, temperature)``; the
temperature is a buffer that the user anneals (:class:`TemperatureSchedule`). In evaluation mode each sample
keeps the one component of largest logit. The scoring network is a circular convolution followed by a global
mean, so a component's logit depends only on the values it holds, not on where they sit: the choice moves
with any circular shift, and a network with circular padding, LPS at every stride and global pooling is
exactly invariant to circular integer shifts, as with APS. That guarantee is structural: it holds for any
learned weights.

Energy prior. The logit of component ``k`` is ``prior_scale * log(E_k / max E) + score_k``, where ``E_k`` is
the component's energy (squared L2 norm, the quantity APS maximises) and ``score_k`` the learned network's
output, whose last convolution starts at zero. A freshly converted model therefore chooses exactly as the
APS-converted one: a sample whose top two logits are closer than ``1.1e-4 * (prior_scale + |top logit|)``
(every sample APS itself would call a near-tie, and exact ties such as an all-zero map) is decided by the
APS rule (:func:`~shiftlab.layers.aps_phase`, exact and shift-invariant); the others keep the largest logit,
which at initialisation is the largest energy. Rounding (about 1e-7 relative in float32, 1e-16 in float64)
cannot cross that margin, so trained choices move with shifts too. ``prior_scale=0`` gives plain LPS.

Sharing. In a residual block the main branch and the shortcut subsample different maps and must keep the
same phase: :class:`LearnedPhase` scores the block's input (a forward pre-hook) and every
``LPSPool2d(shared=...)`` inside the block uses that choice (one phase per sample in evaluation, one mixture
per sample in training). The choice is readable during the block's forward pass through
:meth:`LearnedPhase.current`, as :class:`~shiftlab.layers.SharedPhase` does for APS, and
``lps_pool2d(..., return_phase=True)`` returns it for a later layer (an unpooling layer of a decoder).

TIPS. Per channel, a convex mixture of the components with weights ``softmax`` over the ``s * s`` positions of
(depthwise 1x1 conv of ``AdaptiveAvgPool2d(s)`` of ``ReLU(depthwise 3x3 conv of x)``). The adaptive pooling
averages quadrants of the map, which move under a shift: **TIPS's invariance is learned, not guaranteed**.
Its training adds :func:`tips_shift_loss` (the mean squared difference between the layer's output for a
shifted input and the shifted output, for zero-filled shifts of up to ``max_shift`` output pixels).
Measure a TIPS model with ``shiftlab.audit``; ``certify`` does not claim exactness for it.

Export. The LPS choice falls back to the APS rule for near-ties, a branch on the data, so LPS layers refuse graph
capture (``torch.export``, ``torch.compile``, ``torch.jit.trace``, ONNX) rather than record one branch silently;
TIPS layers are plain tensor operations and export.
"""

from __future__ import annotations

import math
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_float, check_int
from shiftlab.errors import ArgumentShapeError, InputError, ShapeError
from shiftlab.layers.aps import _components, _pad_to_multiple, _phase, _plain_energies, _select
from shiftlab.layers.blur_pool import _check_padding_mode, _check_stride, check_filter_size, in_graph_capture

__all__ = ["PolyphaseScorer", "lps_logits", "lps_pool2d", "LPSPool2d", "LearnedPhase", "TemperatureSchedule",
           "set_temperature", "tips_weights", "tips_pool2d", "TIPSPool2d", "tips_shift_loss", "TIPSShiftTerm",
           "scoring_parameters", "parameter_groups", "has_learned_subsampling"]

# id(LearnedPhase) -> the phase (eval, (B,) int64) or mixture weights (train, (B, s*s)) of the pass under way
_ACTIVE: ContextVar[dict[int, Tensor]] = ContextVar("shiftlab_active_lps", default={})
# relative margin under which the exact APS rule decides (APS's own near-tie margin is 1e-4 of the energy,
# which is log(1 / (1 - 1e-4)) ~ 1.0001e-4 in log energy)
_LPS_MARGIN = 1.1e-4
_LOG_FLOOR = math.log(1e-300)


def _components_stacked(x: Tensor, stride: int) -> Tensor:
    """(B, C, H, W), H and W multiples of ``stride`` -> (B, s*s, C, H/s, W/s), phase-major."""
    b, c, h, w = x.shape
    return _components(x, stride).permute(0, 3, 5, 1, 2, 4).reshape(b, stride * stride, c, h // stride, w // stride)


class PolyphaseScorer(nn.Module):
    """The LPS scoring network: one logit per polyphase component.

    3x3 conv ``in_channels -> hidden``, ReLU, 3x3 conv ``hidden -> hidden`` (circular padding, so the logit of a
    component does not depend on where its values sit), mean over channels and positions. The last conv
    starts at zero (``zero_init=True``), so a new scorer gives 0 for every component.

    Shape:
        Input: (N, C, H, W) components. Output: (N,).
    """

    def __init__(self, in_channels: int, hidden: int = 8, zero_init: bool = True) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden", hidden)):
            check_int(name, value, 1)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, padding_mode="circular")
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, padding_mode="circular")
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, components: Tensor) -> Tensor:
        weight = self.conv1.weight
        z = self.conv2(F.relu(self.conv1(components.to(weight.dtype))))
        return z.mean(dim=(1, 2, 3))

    def phase_scores(self, x: Tensor, stride: int) -> Tensor:
        """The score of every polyphase component of ``x`` (H, W multiples of ``stride``) without stacking them.

        A 3x3 conv of component ``(i, j)`` with circular padding 1 is the 3x3 conv of ``x`` dilated by
        ``stride`` with circular padding ``stride``, read at positions ``(i::s, j::s)``; so both convs run once
        on the full map and the mean is taken per phase. The same function as :meth:`forward` on each component.

        Shape:
            Input: (B, C, H, W). Output: (B, stride * stride).
        """
        b, _, h, w = x.shape
        z = x.to(self.conv1.weight.dtype)
        for conv, relu in ((self.conv1, True), (self.conv2, False)):
            z = F.conv2d(F.pad(z, (stride,) * 4, mode="circular"), conv.weight, conv.bias, dilation=stride)
            if relu:
                z = F.relu(z)
        grid = z.reshape(b, z.shape[1], h // stride, stride, w // stride, stride)
        return grid.mean(dim=(1, 2, 4)).flatten(1)


def _prior(x: Tensor, stride: int) -> Tensor:
    """log(E_k / max E) in float64, (B, s*s); 0 for every component of an all-zero sample."""
    with torch.no_grad():
        energy = _plain_energies(x, stride).to(torch.float64)
        top = energy.amax(dim=1, keepdim=True)
        ratio = torch.where(top > 0, energy / top.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(energy))
        return ratio.clamp_min(1e-300).log().clamp_min(_LOG_FLOOR)


def lps_logits(x: Tensor, scorer: nn.Module, stride: int = 2, prior_scale: float = 1.0) -> Tensor:
    """The LPS logit of each polyphase component: ``prior_scale * log(E_k / max E) + scorer(x_k)``.

    ``x`` is circularly extended to a multiple of ``stride`` first. Gradients flow into ``scorer``; the energy
    prior is a constant.

    Shape:
        Input: (B, C, H, W). Output: (B, stride * stride), in ``x``'s dtype (float32 for half inputs).
    """
    check_float(check_bchw(x))
    _check_stride(stride)
    x = _pad_to_multiple(x, stride)
    return _logits(x, scorer, stride, prior_scale)


def _logits(x: Tensor, scorer: nn.Module, stride: int, prior_scale: float) -> Tensor:
    b = x.shape[0]
    if isinstance(scorer, PolyphaseScorer):
        score = scorer.phase_scores(x, stride)
    else:
        stacked = _components_stacked(x, stride)
        score = scorer(stacked.reshape(b * stride * stride, *stacked.shape[2:])).reshape(b, stride * stride)
    if prior_scale:
        score = score + (prior_scale * _prior(x, stride)).to(score.dtype)
    return score


def _eval_phase(x: Tensor, scorer: nn.Module, stride: int, prior_scale: float) -> Tensor:
    """The phase kept in evaluation: the largest logit, or the APS rule where the top two are close."""
    if in_graph_capture():
        raise InputError("LPS layers cannot be exported or compiled yet (their near-tie rule branches on the data); "
                         "export an APS- or blur-converted model instead")
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=x.device)
    with torch.no_grad():
        logits = _logits(x, scorer, stride, prior_scale).to(torch.float64)
        phase = logits.argmax(dim=1)
        if stride * stride > 1:
            top2 = logits.topk(2, dim=1).values
            margin = _LPS_MARGIN * (prior_scale + top2[:, 0].abs())
            close = ~((top2[:, 0] - top2[:, 1]) > margin)  # NaN counts as close
            if bool(close.any()):
                phase[close] = _phase(x[close], stride)
    return phase


def _train_weights(x: Tensor, scorer: nn.Module, stride: int, prior_scale: float, temperature: float) -> Tensor:
    logits = _logits(x, scorer, stride, prior_scale)
    return F.gumbel_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                            tau=temperature, hard=False, dim=1)


def _mix(x: Tensor, stride: int, weights: Tensor) -> Tensor:
    stacked = _components_stacked(x, stride)
    return torch.einsum("bk,bkchw->bchw", weights.to(stacked.dtype), stacked)


def _check_temperature(temperature) -> float:
    if isinstance(temperature, Tensor):
        temperature = float(temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise InputError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def lps_pool2d(x: Tensor, scorer: nn.Module, stride: int = 2, *, training: bool = False, temperature: float = 1.0,
               prior_scale: float = 1.0, return_phase: bool = False, phase: Tensor | None = None,
               weights: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Learnable polyphase sampling.

    Args:
        x: input batch.
        scorer: the scoring network (:class:`PolyphaseScorer`), applied to every component.
        stride: subsampling factor ``s``.
        training: mix the components with Gumbel-softmax weights (differentiable); otherwise keep the component
            of largest logit (near-ties by the APS rule; see the module docstring).
        temperature: the Gumbel-softmax temperature (> 0), used in training only.
        prior_scale: weight of the energy prior ``log(E_k / max E)`` (0: plain LPS).
        return_phase: also return the phase kept (evaluation) or the mixture weights (training).
        phase: (B,) int64 phases to keep instead of choosing (evaluation; to share one choice).
        weights: (B, s*s) mixture weights to use instead of choosing (training; to share one mixture).

    Shape:
        Input: (B, C, H, W). Output: (B, C, ceil(H / s), ceil(W / s)); phase (B,) int64 or weights (B, s*s).

    >>> scorer = PolyphaseScorer(1)
    >>> x = torch.zeros(1, 1, 4, 4); x[..., 1, 3] = 1.0
    >>> y, p = lps_pool2d(x, scorer, return_phase=True)
    >>> p.tolist(), y.sum().item()
    ([3], 1.0)
    """
    check_float(check_bchw(x))
    _check_stride(stride)
    if x.shape[1] == 0:
        raise ShapeError(f"x must have at least one channel, got shape {tuple(x.shape)}")
    x = _pad_to_multiple(x, stride)
    if training:
        temperature = _check_temperature(temperature)
        if weights is None:
            weights = _train_weights(x, scorer, stride, prior_scale, temperature)
        elif weights.shape != (x.shape[0], stride * stride):
            raise ShapeError(f"weights must have shape ({x.shape[0]}, {stride * stride}), got {tuple(weights.shape)}")
        out = _mix(x, stride, weights)
        return (out, weights) if return_phase else out
    if phase is None:
        phase = _eval_phase(x, scorer, stride, prior_scale)
    elif not isinstance(phase, Tensor) or phase.shape != (x.shape[0],) or phase.dtype != torch.int64:
        raise ShapeError(f"phase must be an int64 tensor of shape ({x.shape[0]},)")
    out = _select(x, stride, phase)
    return (out, phase) if return_phase else out


class TemperatureSchedule:
    """Geometric annealing of the LPS temperature: ``max(floor, start * factor ** (step // every))``.

    The LPS authors decay by 0.85 every 10 epochs to a floor of 0.025-0.5, or by 0.97 every epoch to 0.1.
    ``schedule.apply(model, step)`` sets every LPS layer of ``model`` and returns the value.
    """

    def __init__(self, start: float = 1.0, factor: float = 0.97, every: int = 1, floor: float = 0.1) -> None:
        self.start = _check_temperature(start)
        self.floor = _check_temperature(floor)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise InputError(f"factor must be in (0, 1], got {factor!r}")
        self.factor, self.every = float(factor), check_int("every", every, 1)

    def value(self, step: int) -> float:
        return max(self.floor, self.start * self.factor ** (max(int(step), 0) // self.every))

    def apply(self, model: nn.Module, step: int) -> float:
        value = self.value(step)
        set_temperature(model, value)
        return value

    def __repr__(self) -> str:
        return (f"TemperatureSchedule(start={self.start}, factor={self.factor}, every={self.every}, "
                f"floor={self.floor})")


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the Gumbel-softmax temperature of every LPS layer in ``model``; return how many were set."""
    temperature = _check_temperature(temperature)
    count = 0
    for module in model.modules():
        if isinstance(module, (LPSPool2d, LearnedPhase)):
            module.temperature.fill_(temperature)
            count += 1
    return count


class LearnedPhase(nn.Module):
    """One LPS choice per sample, scored from a block's input and used by several :class:`LPSPool2d`.

    ``shared.attach(block)`` registers it as the child ``lps_phase`` of ``block`` (so its scorer trains with
    the block and is saved with it) and hooks the block: before the block runs, the choice is made from the
    block's input (a phase per sample in evaluation, Gumbel-softmax weights in training); every
    ``LPSPool2d(shared=shared)`` inside uses it; it is released when the block returns.
    """

    def __init__(self, in_channels: int, stride: int = 2, hidden: int = 8, prior_scale: float = 1.0,
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.stride = _check_stride(stride)
        self.prior_scale = float(prior_scale)
        self.scorer = PolyphaseScorer(in_channels, hidden)
        self.register_buffer("temperature", torch.tensor(_check_temperature(temperature), dtype=torch.float64))

    def attach(self, block: nn.Module) -> None:
        block.add_module("lps_phase", self)
        block.register_forward_pre_hook(self._record)
        block.register_forward_hook(self._release, always_call=True)

    def choose(self, x: Tensor) -> Tensor:
        """The phase (evaluation, (B,)) or the mixture weights (training, (B, s*s)) for ``x``."""
        check_float(check_bchw(x))
        x = _pad_to_multiple(x, self.stride)
        if self.training:
            return _train_weights(x, self.scorer, self.stride, self.prior_scale, float(self.temperature))
        return _eval_phase(x, self.scorer, self.stride, self.prior_scale)

    def current(self) -> Tensor | None:
        """The choice of the forward pass under way, or None outside it."""
        return _ACTIVE.get().get(id(self))

    def _record(self, module: nn.Module, args: tuple) -> None:
        if not args or not isinstance(args[0], Tensor):
            raise ShapeError(f"{type(module).__name__} must take the feature map as its first argument to share an "
                             "LPS choice")
        choice = self.choose(args[0])
        _ACTIVE.set({**_ACTIVE.get(), id(self): choice})

    def _release(self, module: nn.Module, args: tuple, output) -> None:
        active = dict(_ACTIVE.get())
        active.pop(id(self), None)
        _ACTIVE.set(active)

    def forward(self, x: Tensor) -> Tensor:  # the choice as a module call, for completeness
        return self.choose(x)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, prior_scale={self.prior_scale}"


class LPSPool2d(nn.Module):
    """Module form of :func:`lps_pool2d`, with its own scorer or a :class:`LearnedPhase` shared with a block.

    ``temperature`` is a buffer (saved with the weights); anneal it with :class:`TemperatureSchedule`.
    ``padding_mode`` is the padding of the optional blur before choosing (``filter_size > 1``).

    Shape:
        Input: (B, C, H, W). Output: (B, C, ceil(H / stride), ceil(W / stride)).

    >>> LPSPool2d(3)(torch.randn(2, 3, 6, 6)).shape
    torch.Size([2, 3, 3, 3])
    """

    def __init__(self, in_channels: int | None = None, stride: int = 2, hidden: int = 8, prior_scale: float = 1.0,
                 temperature: float = 1.0, filter_size: int = 1, padding_mode: str = "circular",
                 shared: LearnedPhase | None = None) -> None:
        super().__init__()
        self.stride = _check_stride(stride)
        self.filter_size = check_filter_size(filter_size)
        self.padding_mode = _check_padding_mode(padding_mode)
        if shared is not None and not isinstance(shared, LearnedPhase):
            raise ArgumentShapeError(f"shared must be a LearnedPhase or None, got {type(shared).__name__}")
        if shared is not None and shared.stride != stride:
            raise ArgumentShapeError(f"shared choice has stride {shared.stride}, layer has stride {stride}")
        if shared is None and in_channels is None:
            raise InputError("LPSPool2d needs in_channels (for its scorer) or shared=LearnedPhase(...)")
        self._shared = (shared,)  # not a child: the block owns the shared scorer
        self.prior_scale = float(prior_scale)
        self.scorer = PolyphaseScorer(in_channels, hidden) if shared is None else None
        self.register_buffer("temperature", torch.tensor(_check_temperature(temperature), dtype=torch.float64))

    @property
    def shared(self) -> LearnedPhase | None:
        return self._shared[0]

    def forward(self, x: Tensor) -> Tensor:
        if self.filter_size > 1:
            from shiftlab.layers.blur_pool import blur_pool2d

            x = blur_pool2d(x, self.filter_size, 1, self.padding_mode)
        choice = self.shared.current() if self.shared is not None else None
        if choice is not None and choice.shape[0] != x.shape[0]:
            raise ShapeError(f"shared choice is for a batch of {choice.shape[0]}, the input has {x.shape[0]}")
        if self.shared is not None and choice is None:  # called outside its block: choose from its own input
            choice = self.shared.choose(x)
        scorer = self.scorer if self.scorer is not None else self.shared.scorer
        if self.training:
            return lps_pool2d(x, scorer, self.stride, training=True, temperature=float(self.temperature),
                              prior_scale=self.prior_scale, weights=choice)
        return lps_pool2d(x, scorer, self.stride, prior_scale=self.prior_scale, phase=choice)

    def extra_repr(self) -> str:
        shared = ", shared" if self.shared is not None else ""
        return (f"stride={self.stride}, prior_scale={self.prior_scale}, filter_size={self.filter_size}, "
                f"temperature={float(self.temperature):.4g}{shared}")


def tips_weights(x: Tensor, spatial: nn.Conv2d, mix: nn.Conv2d, stride: int = 2) -> Tensor:
    """TIPS mixture weights: per channel, softmax over the ``s * s`` cells of
    ``mix(AdaptiveAvgPool(s)(ReLU(spatial(x))))`` (``spatial`` a depthwise 3x3 conv, ``mix`` a depthwise 1x1).

    Shape:
        Input: (B, C, H, W). Output: (B, C, s * s), each row summing to 1.
    """
    pooled = F.adaptive_avg_pool2d(F.relu(spatial(x)), stride)
    return torch.softmax(mix(pooled).flatten(2), dim=-1)


def tips_pool2d(x: Tensor, spatial: nn.Conv2d, mix: nn.Conv2d, stride: int = 2) -> Tensor:
    """Translation invariant polyphase sampling: a learned, per-channel convex mixture of the components.

    Invariance is learned, not guaranteed (the weights come from quadrant averages, which move with a shift).

    Shape:
        Input: (B, C, H, W). Output: (B, C, ceil(H / s), ceil(W / s)).
    """
    check_float(check_bchw(x))
    _check_stride(stride)
    x = _pad_to_multiple(x, stride)
    weights = tips_weights(x, spatial, mix, stride)  # (B, C, K)
    stacked = _components_stacked(x, stride)  # (B, K, C, h, w)
    return torch.einsum("bck,bkchw->bchw", weights.to(stacked.dtype), stacked)


class TIPSPool2d(nn.Module):
    """Module form of :func:`tips_pool2d`. A new layer mixes the components equally (its ``mix`` conv starts at
    zero), that is a 2x2 average before subsampling; training moves the weights. Not exactly invariant: see the
    module docstring.

    Shape:
        Input: (B, C, H, W) with C = ``channels``. Output: (B, C, ceil(H / stride), ceil(W / stride)).

    >>> TIPSPool2d(3)(torch.randn(2, 3, 6, 6)).shape
    torch.Size([2, 3, 3, 3])
    """

    def __init__(self, channels: int, stride: int = 2, padding_mode: str = "circular") -> None:
        super().__init__()
        channels = check_int("channels", channels, 1)
        self.stride = _check_stride(stride)
        padding_mode = _check_padding_mode(padding_mode)
        self.spatial = nn.Conv2d(channels, channels, 3, padding=1, groups=channels,
                                 padding_mode="zeros" if padding_mode == "zeros" else padding_mode)
        self.mix = nn.Conv2d(channels, channels, 1, groups=channels)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, x: Tensor) -> Tensor:
        check_bchw(x, channels=self.spatial.in_channels)
        return tips_pool2d(x, self.spatial, self.mix, self.stride)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def _zero_shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """Shift the last two dims by (dy, dx), filling with zeros."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def tips_shift_loss(layer: TIPSPool2d, x: Tensor, max_shift: int = 1, generator: torch.Generator | None = None
                    ) -> Tensor:
    """TIPS's shift-equivariance training term for one layer: ``mean((layer(T_s x) - T layer(x))**2)``.

    ``T`` is a zero-filled shift by a random ``(dy, dx)`` of at most ``max_shift`` output pixels, ``T_s`` the
    matching shift of the input by ``stride * (dy, dx)`` (so the output should move by whole pixels). The
    comparison leaves out the border rows and columns that the shift fills with zeros.
    """
    max_shift = check_int("max_shift", max_shift, 1)
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    s = layer.stride
    out = layer(x)
    moved = layer(_zero_shift(x, s * dy, s * dx))
    expected = _zero_shift(out, dy, dx)
    h, w = out.shape[-2:]
    pad = 1  # the border row/column whose window saw the zero fill
    rows = slice(max(dy, 0) + pad, h + min(dy, 0) - pad)
    cols = slice(max(dx, 0) + pad, w + min(dx, 0) - pad)
    diff = (moved - expected)[..., rows, cols]
    return diff.square().mean() if diff.numel() else out.new_zeros(())


def _scoring_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (PolyphaseScorer, TIPSPool2d))]


def scoring_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every LPS scorer and TIPS mixing layer in ``model`` (each once)."""
    seen, out = set(), []
    for module in _scoring_modules(model):
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimiser parameter groups: the scoring parameters of LPS/TIPS layers without weight decay (as the LPS
    authors train them), every other trainable parameter with ``weight_decay``. Empty groups are left out."""
    scoring = {id(p) for p in scoring_parameters(model)}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in scoring]
    learned = [p for p in model.parameters() if p.requires_grad and id(p) in scoring]
    groups = [{"params": rest, "weight_decay": weight_decay}] if rest else []
    return groups + ([{"params": learned, "weight_decay": 0.0}] if learned else [])


def has_learned_subsampling(model: nn.Module) -> dict:
    """``{"lps": n, "tips": m}``: how many LPS and TIPS layers ``model`` holds."""
    return {"lps": sum(isinstance(m, (LPSPool2d, LearnedPhase)) for m in model.modules()),
            "tips": sum(isinstance(m, TIPSPool2d) for m in model.modules())}


class TIPSShiftTerm:
    """TIPS's auxiliary training term for a whole model: ``alpha`` times the mean of :func:`tips_shift_loss`
    over the TIPS layers, on the inputs they received in the last training forward pass.

    Use as a context manager around training; after each forward, add ``term.loss()`` to the task loss::

        with TIPSShiftTerm(model, alpha=0.35) as term:
            loss = criterion(model(x), y) + term.loss()
    """

    def __init__(self, model: nn.Module, alpha: float = 0.35, max_shift: int = 1,
                 generator: torch.Generator | None = None) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise InputError(f"alpha must be a finite number >= 0, got {alpha!r}")
        self.alpha, self.max_shift, self.generator = float(alpha), max_shift, generator
        self.layers = [m for m in model.modules() if isinstance(m, TIPSPool2d)]
        self._inputs: list[tuple[TIPSPool2d, Tensor]] = []
        self._measuring = False
        self._handles = [layer.register_forward_pre_hook(self._keep) for layer in self.layers]

    def _keep(self, layer: nn.Module, args: tuple) -> None:
        if layer.training and not self._measuring and args and isinstance(args[0], Tensor):
            self._inputs.append((layer, args[0]))

    def loss(self) -> Tensor | float:
        """The term for the inputs seen since the last call (0.0 when there were none); clears them."""
        kept, self._inputs = self._inputs, []
        if not kept or self.alpha == 0:
            return 0.0
        self._measuring = True
        try:
            terms = [tips_shift_loss(layer, x, self.max_shift, self.generator) for layer, x in kept]
        finally:
            self._measuring = False
        return self.alpha * torch.stack(terms).mean()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._inputs = [], []

    def __enter__(self) -> "TIPSShiftTerm":
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False
