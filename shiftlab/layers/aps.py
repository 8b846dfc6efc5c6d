"""Adaptive polyphase sampling (Chaman & Dokmanic 2021).

Subsampling by ``s`` keeps one of the ``s * s`` polyphase components ``x[..., i::s, j::s]``. Fixed
subsampling always keeps ``(0, 0)``, so shifting the input by one pixel changes which samples survive. APS
keeps, for each sample of the batch, the component of largest L2 norm over channels and positions. The
norms of the components of a circularly shifted map are the same norms permuted, so the kept component
moves with the shift: with circular padding everywhere, every stride replaced by APS and global average
pooling, a network is exactly invariant to circular integer shifts.

Choosing exactly. Rounding must not decide which component is kept: norms that are equal in exact
arithmetic (a constant map, an all-zero map after a ReLU, components that are shifts of one another) would
otherwise be ordered by the summation order, which changes with a shift, the batch size or the number of
threads. So the choice uses a quantised energy summed in exact arithmetic: each square ``x**2`` is
scaled by ``L / max(x**2)`` (``max`` over the sample) and rounded down to an integer, with ``L`` chosen so
that no partial sum exceeds the floating-point integer range (``L = 2**24 // C`` in float32, then float64
sums; ``L = 2**53 // (C * H * W / s**2)`` in float64). Integer sums are exact in any order, so the energy
of a component depends only on the values it holds, not on where they sit: the choice moves with any
circular shift, bit for bit. The energy is the squared L2 norm to ``1 / L`` of the largest square per
element (float32, 64 channels: 2**18 levels), so the kept component is the one of largest norm unless two
norms agree to about that resolution.

Fast path. The exact energies cost several passes over the map, so they are computed only where they are
needed: the plain component energies decide every sample whose largest energy beats the second by
more than 1e-4 relative, a margin that float rounding (~1e-6) cannot cross; ties and near-ties go to
the exact rule. The choice therefore still moves with any shift, unless a sample's margin sits within
rounding of 1e-4 itself. On CPU the plain energies are computed in blocks of whole samples of about 4 MiB,
so the squares of a block stay in cache rather than filling a temporary the size of the input: this halves
the cost of the choice (``benchmarks/bench_aps.py``: about 2.2x a plain stride-2 slice in all, from 3.9x).

Tie rule: among components of exactly equal energy the lowest phase index wins, in row-major order
``(0, 0), (0, 1), ...``. Exact ties occur for components holding the same values (then keeping either
changes nothing downstream but an integer shift), or for components of a symmetric map (a map symmetric
under transposition, say), where the index rule does not move with the shift: such inputs are of measure
zero, and for them exact invariance is not claimed.

Sharing one choice between layers. In a residual block the main branch and the shortcut each subsample;
they must keep the same component or the two branches misalign. :class:`SharedPhase` chooses the phase
once from a module's input (a forward pre-hook on the block) and every :class:`APSPool2d` built with
``shared=`` that object uses it during that forward pass. The choice lives in a context variable, so
concurrent threads never see each other's choice and the modules keep no per-call state. (While
``torch.compile`` or ``torch.export`` traces a model, which they cannot do through a context variable, the
phase is kept on the :class:`SharedPhase` object instead, for the duration of the block's forward pass.)

Graph capture. Under ``torch.export``, ``torch.compile``, ``torch.jit.trace`` and the ONNX exporters
(:func:`~shiftlab.layers.blur_pool.in_graph_capture`) the two paths cannot branch on the data, so both are
computed for every sample and combined with ``torch.where``: the plain energies and their margin, the exact
quantised energies, and the exact rule's choice where the margin is not clear. Each sample's energies depend
only on that sample, so this is the choice the eager code makes, phase for phase; the component is then
taken with a ``gather`` over the ``s * s`` components. The exact energies need float64 sums (integers up to
``2**53``), which the exported graph therefore holds.

Odd sizes are made a multiple of the stride by circular padding at the bottom and right (the extra rows
are the first rows again). This keeps shapes at ``ceil(H / s)``, but exact invariance is then only claimed
for sizes that are multiples of the stride.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_float
from shiftlab.errors import ArgumentShapeError, ShapeError
from shiftlab.layers.blur_pool import (
    _BLOCK_BYTES,
    _check_padding_mode,
    _check_stride,
    blur_pool2d,
    check_filter_size,
    in_graph_capture,
)

__all__ = ["polyphase_norms", "polyphase_energies", "aps_phase", "aps_pool2d", "APSPool2d", "SharedPhase"]

# id(SharedPhase) -> the phase chosen in the forward pass under way; replaced, never mutated.
_ACTIVE_PHASES: ContextVar[dict[int, Tensor]] = ContextVar("shiftlab_active_phases", default={})


def _pad_to_multiple(x: Tensor, stride: int) -> Tensor:
    """Circularly extend H and W at the bottom and right to multiples of ``stride``."""
    h, w = x.shape[-2:]
    extra_h, extra_w = (-h) % stride, (-w) % stride
    if extra_h:
        x = x.index_select(-2, torch.arange(h + extra_h, device=x.device) % h)
    if extra_w:
        x = x.index_select(-1, torch.arange(w + extra_w, device=x.device) % w)
    return x


def _components(x: Tensor, stride: int) -> Tensor:
    """View of ``x`` (H, W multiples of ``stride``) as (B, C, H/s, s, W/s, s)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // stride, stride, w // stride, stride)


def _check_aps_input(x: Tensor) -> Tensor:
    check_float(check_bchw(x))
    if x.shape[1] == 0:
        raise ShapeError(f"x must have at least one channel for APS to compare components, got shape {tuple(x.shape)}")
    return x


def _quantised_energies(x: Tensor, stride: int) -> Tensor:
    """The body of :func:`_energies`, without autograd handling (``x`` holds no gradient)."""
    b, c, h, w = x.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    squares = work.square()
    top = squares.amax(dim=(1, 2, 3), keepdim=True)
    if work.dtype == torch.float64:
        levels = float(max(2**53 // (c * (h // stride) * (w // stride)), 1))
    else:
        levels = float(max(2**24 // c, 1))
    scale = torch.where(top > 0, levels / top, torch.zeros_like(top))
    quantised = squares.mul_(scale).floor_().reshape(b, c, h // stride, stride, w)  # squares is a fresh tensor
    per_position = quantised.sum(dim=1)  # integers below 2**24 (float32) or 2**53 (float64): exact
    grid = per_position.to(torch.float64).reshape(b, h // stride, stride, w // stride, stride)
    return grid.sum(dim=(1, 3)).flatten(1)


def _energies(x: Tensor, stride: int) -> Tensor:
    """Quantised energy of each component (B, s*s), summed exactly (see the module docstring)."""
    with torch.no_grad():  # the choice is discrete: no gradient flows through it
        return _quantised_energies(x, stride)


def polyphase_norms(x: Tensor, stride: int = 2) -> Tensor:
    """L2 norm (over channels and positions, in float64) of each polyphase component of ``x``.

    Component ``i * stride + j`` is ``x[..., i::stride, j::stride]`` after circular padding to a multiple
    of ``stride``. For inspection; the choice itself uses :func:`polyphase_energies`. Summed over a contiguous
    copy, so the result does not depend on the input's memory layout (the order of a float sum would).

    Shape:
        Input: (B, C, H, W). Output: (B, stride * stride), float64.
    """
    _check_aps_input(x)
    _check_stride(stride)
    x = _pad_to_multiple(x, stride).contiguous()
    return torch.linalg.vector_norm(_components(x, stride), dim=(1, 2, 4), dtype=torch.float64).flatten(1)


def polyphase_energies(x: Tensor, stride: int = 2) -> Tensor:
    """The quantised, exactly summed energy of each polyphase component, which APS maximises.

    Each sample's squares are scaled to integers ``floor(x**2 * L / max(x**2))`` and summed exactly, so
    the result depends only on the values each component holds (see the module docstring).

    Shape:
        Input: (B, C, H, W). Output: (B, stride * stride), float64 holding integers.
    """
    _check_aps_input(x)
    _check_stride(stride)
    return _energies(_pad_to_multiple(x, stride), stride)


def _choose(energies: Tensor) -> Tensor:
    return energies.argmax(dim=1)  # the first maximal index: exact ties go to the lowest phase


# Relative margin between the two largest norms above which the fast float norms decide: rounding moves a
# norm by ~1e-7 relative in float32, so a clear winner cannot flip; closer calls use the exact energies.
_CLEAR_MARGIN = 1e-4


# On CPU the energies are computed in blocks of whole samples of about _BLOCK_BYTES (the blur's block size),
# so that the squares of a block stay in cache instead of filling a full-size temporary (benchmarks/bench_aps.py).


def _sample_energies(block: Tensor, stride: int) -> Tensor:
    """Float energies of the components of each sample of ``block``, (n, s*s); float32 for half inputs."""
    n, _, h, w = block.shape
    if block.dtype not in (torch.float32, torch.float64):
        block = block.float()  # half-precision sums would round by ~1e-3, far above the clear margin
    per_position = block.square().sum(dim=1)  # (n, H, W); faster than one strided 6-D reduction
    grid = per_position.reshape(n, h // stride, stride, w // stride, stride)
    return grid.sum(dim=(1, 3)).flatten(1)


def _plain_energies(x: Tensor, stride: int) -> Tensor:
    """Float energies (squared L2 norms) of the components, (B, s*s), summed in ``x``'s dtype (or float32).

    On CPU the batch is processed in blocks of about ``_BLOCK_BYTES``; each sample's energies are the same
    whatever block it falls in (the sums run over that sample only).
    """
    b, c, h, w = x.shape
    per_sample = max(c * h * w * x.element_size(), 1)
    step = max(1, _BLOCK_BYTES // per_sample) if x.device.type == "cpu" else max(b, 1)
    parts = [_sample_energies(block, stride) for block in x.split(step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _unclear(energy: Tensor) -> Tensor:
    """(B,) bool: samples whose two largest energies are within ``_CLEAR_MARGIN`` (or NaN)."""
    top2 = energy.topk(2, dim=1).values
    return ~((top2[:, 0] - top2[:, 1]) > _CLEAR_MARGIN * top2[:, 0])  # NaN counts as close


def _phase_graph(x: Tensor, stride: int) -> Tensor:
    """:func:`_phase` without data-dependent control flow, for graph capture: the same choice, phase for phase.

    Both rules are evaluated for every sample and the exact one is kept where the margin is unclear.
    """
    x = x.detach()
    energy = _sample_energies(x, stride)
    phase = energy.argmax(dim=1)
    if stride * stride == 1:
        return phase
    return torch.where(_unclear(energy), _choose(_quantised_energies(x, stride)), phase)


def _phase(x: Tensor, stride: int) -> Tensor:
    """The APS choice for ``x`` (H, W multiples of ``stride``): a fast path and an exact one.

    The components' energies (squared norms) are summed in the input's dtype. A sample whose largest energy
    beats the second by more than ``_CLEAR_MARGIN`` (relative) keeps that component: rounding (~1e-6 for
    float32 cascade sums) cannot reorder such energies, so the choice still moves with any shift. The other
    samples (ties and near-ties) are decided by the exactly summed, quantised energies
    (:func:`polyphase_energies`) and the lowest-index tie rule.
    """
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=x.device)
    if in_graph_capture():
        return _phase_graph(x, stride)
    with torch.no_grad():
        energy = _plain_energies(x, stride)
        phase = energy.argmax(dim=1)
        if stride * stride > 1:
            close = _unclear(energy)
            if bool(close.any()):
                phase[close] = _choose(_energies(x[close], stride))
    return phase


def aps_phase(x: Tensor, stride: int = 2) -> Tensor:
    """The polyphase component APS keeps for each sample: the largest energy, ties to the lowest index.

    Shape:
        Input: (B, C, H, W). Output: (B,) int64 in ``[0, stride * stride)``; phase ``p`` is the offset
        ``(p // stride, p % stride)``.
    """
    _check_aps_input(x)
    _check_stride(stride)
    return _phase(_pad_to_multiple(x, stride), stride)


def _select(x: Tensor, stride: int, phase: Tensor) -> Tensor:
    if in_graph_capture():  # one gather over the s*s components (ONNX GatherElements)
        b, c, h, w = x.shape
        components = _components(x, stride).permute(0, 3, 5, 1, 2, 4).reshape(b, stride * stride, c, h // stride,
                                                                               w // stride)
        index = phase.to(x.device).reshape(b, 1, 1, 1, 1).expand(b, 1, c, h // stride, w // stride)
        return components.gather(1, index).squeeze(1)
    view = _components(x, stride)
    batch = torch.arange(x.shape[0], device=x.device)
    phase = phase.to(x.device)
    return view[batch, :, :, phase // stride, :, phase % stride]


def aps_pool2d(x: Tensor, stride: int = 2, filter_size: int = 1, padding_mode: str = "circular",
               return_phase: bool = False, *, phase: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Adaptive polyphase sampling: keep, per sample, the polyphase component of largest norm.

    Args:
        x: input batch.
        stride: subsampling factor ``s``; there are ``s * s`` components.
        filter_size: if above 1, blur with the binomial filter of this size (at stride 1, ``padding_mode``)
            before choosing (APS with a low-pass filter).
        padding_mode: padding of that blur: ``"circular"`` (needed for exact invariance), ``"reflect"``,
            ``"replicate"`` or ``"zeros"``.
        return_phase: also return the phase kept for each sample.
        phase: (B,) int64 phases to use instead of choosing (to share one choice between layers). Their values
            are checked eagerly, not under graph capture (the check would depend on the data).

    Shape:
        Input: (B, C, H, W). Output: (B, C, ceil(H / s), ceil(W / s)); phase (B,) int64.

    >>> x = torch.zeros(1, 1, 4, 4); x[..., 1, 3] = 1.0
    >>> y, p = aps_pool2d(x, return_phase=True)
    >>> p.tolist(), y.sum().item()
    ([3], 1.0)
    """
    _check_aps_input(x)
    _check_stride(stride)
    check_filter_size(filter_size)
    _check_padding_mode(padding_mode)
    if filter_size > 1:
        x = blur_pool2d(x, filter_size, 1, padding_mode)
    x = _pad_to_multiple(x, stride)
    if phase is None:
        phase = _phase(x, stride)
    else:
        if not isinstance(phase, Tensor) or phase.shape != (x.shape[0],) or phase.dtype != torch.int64:
            raise ShapeError(f"phase must be an int64 tensor of shape ({x.shape[0]},), got "
                             f"{getattr(phase, 'dtype', type(phase).__name__)} {tuple(getattr(phase, 'shape', ()))}")
        if phase.numel() and not in_graph_capture() and not bool(((phase >= 0) & (phase < stride * stride)).all()):
            raise ShapeError(f"phase values must lie in [0, {stride * stride}), got {phase.tolist()}")
    out = _select(x, stride, phase)
    return (out, phase) if return_phase else out


def _compiling() -> bool:
    """Whether torch.compile or torch.export is tracing (not ``torch.jit.trace``, which runs plain Python)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


class SharedPhase:
    """One APS phase per sample, chosen from a module's input and used by several :class:`APSPool2d`.

    ``shared.attach(block)`` registers a forward pre-hook on ``block`` that chooses the phase from the
    block's input (:func:`aps_phase`) and a forward hook that forgets it when the block returns (also on
    an exception). During the block's forward pass every ``APSPool2d(..., shared=shared)`` keeps that
    component; called outside it, such a layer chooses from its own input.

    >>> block = nn.Identity(); shared = SharedPhase(stride=2); shared.attach(block)
    >>> pool = APSPool2d(shared=shared)
    """

    def __init__(self, stride: int = 2) -> None:
        self.stride = _check_stride(stride)
        # the phase of the pass under way while torch.compile / torch.export trace the model, which cannot
        # trace a context variable; eager passes never use it
        self._compiling_phase: Tensor | None = None

    def attach(self, module: nn.Module) -> None:
        module.register_forward_pre_hook(self._record)
        module.register_forward_hook(self._release, always_call=True)

    def current(self) -> Tensor | None:
        """The phase chosen for the forward pass under way, or None outside it."""
        if _compiling():
            return self._compiling_phase
        return _ACTIVE_PHASES.get().get(id(self))

    def _record(self, module: nn.Module, args: tuple) -> None:
        if not args or not isinstance(args[0], Tensor):
            raise ShapeError(f"{type(module).__name__} must take the feature map as its first argument to share an "
                             "APS phase")
        phase = aps_phase(args[0], self.stride)
        if _compiling():
            self._compiling_phase = phase
            return
        _ACTIVE_PHASES.set({**_ACTIVE_PHASES.get(), id(self): phase})

    def _release(self, module: nn.Module, args: tuple, output) -> None:
        if _compiling():
            self._compiling_phase = None
            return
        active = dict(_ACTIVE_PHASES.get())
        active.pop(id(self), None)
        _ACTIVE_PHASES.set(active)

    def __repr__(self) -> str:
        return f"SharedPhase(stride={self.stride})"


class APSPool2d(nn.Module):
    """Module form of :func:`aps_pool2d`, optionally sharing its phase through a :class:`SharedPhase`.

    Shape:
        Input: (B, C, H, W). Output: (B, C, ceil(H / stride), ceil(W / stride)).

    >>> APSPool2d(stride=2)(torch.randn(2, 3, 6, 6)).shape
    torch.Size([2, 3, 3, 3])
    """

    def __init__(self, stride: int = 2, filter_size: int = 1, padding_mode: str = "circular",
                 shared: SharedPhase | None = None) -> None:
        super().__init__()
        self.stride = _check_stride(stride)
        self.filter_size = check_filter_size(filter_size)
        self.padding_mode = _check_padding_mode(padding_mode)
        if shared is not None and not isinstance(shared, SharedPhase):
            raise ArgumentShapeError(f"shared must be a SharedPhase or None, got {type(shared).__name__}")
        if shared is not None and shared.stride != stride:
            raise ArgumentShapeError(f"shared phase has stride {shared.stride}, layer has stride {stride}")
        self.shared = shared

    def forward(self, x: Tensor) -> Tensor:
        phase = self.shared.current() if self.shared is not None else None
        if phase is not None and phase.shape[0] != x.shape[0]:
            raise ShapeError(f"shared phase is for a batch of {phase.shape[0]}, the input has {x.shape[0]}")
        return aps_pool2d(x, self.stride, self.filter_size, self.padding_mode, phase=phase)

    def extra_repr(self) -> str:
        shared = ", shared" if self.shared is not None else ""
        return f"stride={self.stride}, filter_size={self.filter_size}, padding_mode={self.padding_mode!r}{shared}"
