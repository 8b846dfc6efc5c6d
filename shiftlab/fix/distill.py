"""Distillation, the training step of :func:`shiftlab.finetune`: the stream of views, the losses, batch norm.

- The stream: sample ``p`` of the training stream is image ``perm_e[p % N]`` of epoch ``e = p // N``, each epoch a
  seeded permutation of the images; micro-batch ``u`` of rank ``r`` (of ``W`` processes) holds the stream
  positions ``(u W + r) B ... + B - 1``, so that the views depend only on the seed and the sample's place.
- The losses: ``kl * T^2 KL(softmax(teacher / T) || softmax(student / T))``, the symmetric consistency term
  between the two views of an image, cross-entropy where the data has labels in the model's classes.
- :class:`_Distiller`: one micro-batch (views, the teacher under ``torch.inference_mode``, the student's loss and
  its backward pass), returning its statistics for the log as one tensor on the device.
- Batch norm (``BATCH_NORM_MODES``): ``"frozen"`` keeps the running statistics (the layers stay in eval mode),
  ``"train"`` uses batch statistics, ``"reestimate"`` trains as frozen and then estimates the running
  statistics afresh (:func:`_reestimate`).
- Parameter groups: AdamW's weight decay on weight matrices and kernels only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.errors import ShapeError

__all__ = ["BATCH_NORM_MODES"]

BATCH_NORM_MODES = ("frozen", "train", "reestimate")
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64), for per-epoch generators."""
    z = 0x9E3779B97F4A7C15
    for v in values:
        z = (z ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return z & 0x7FFFFFFFFFFFFFFF


class _Stream(torch.utils.data.Dataset):
    """Sample ``p`` of the training stream: image ``perm_e[p % N]`` of epoch ``e = p // N``, with its label.

    Each epoch is a seeded permutation of the images (one kept in memory at a time, per worker). Labels are
    already in the model's classes (-1: none).
    """

    def __init__(self, source, seed: int, labels: torch.Tensor | None, classes: int):
        from shiftlab.data.sources import ImageSource

        self.source, self.seed, self.labels, self.classes = source, int(seed), labels, int(classes)
        self.n = len(source)
        self.image_source = isinstance(source, ImageSource)
        self._epoch, self._perm = None, None

    def __len__(self) -> int:
        return 1 << 62

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.n)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._perm, self._epoch = torch.randperm(self.n, generator=generator), epoch
        return int(self._perm[offset])

    def __getitem__(self, position: int):
        i = self.index(position)
        if self.image_source:
            image = self.source.load(i)
            label = -1 if self.labels is None else int(self.labels[i])
        else:
            item = self.source[i]
            image, label = (item[0], int(item[1])) if isinstance(item, (tuple, list)) else (item, -1)
            if self.labels is None and not 0 <= label < self.classes:
                label = -1
        return image, label


class _Positions:
    """The batch sampler: micro-batch ``u`` of this rank holds stream positions ``(u W + r) B ... + B - 1``."""

    def __init__(self, start: int, stop: int, world: int, rank: int, batch: int):
        self.start, self.stop, self.world, self.rank, self.batch = start, stop, world, rank, batch

    def __iter__(self):
        for u in range(self.start, self.stop):
            base = (u * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _loader(stream: _Stream, sizing, start: int, stop: int, world, batch: int, workers: int, pin: bool):
    """Micro-batches ``start`` to ``stop - 1`` of this rank, decoded and sized by ``workers`` processes."""
    from shiftlab.measure.loader import PreparedImages, collate

    kwargs = {}
    if workers > 0:
        from shiftlab._runtime import loader_worker_allocator

        kwargs = {"prefetch_factor": 2, "persistent_workers": False, "worker_init_fn": loader_worker_allocator}
    # a private generator: creating the loader must not draw from the global random state (dropout's), or a
    # resumed run would diverge from an uninterrupted one
    return torch.utils.data.DataLoader(PreparedImages(stream, sizing),
                                       batch_sampler=_Positions(start, stop, world.size, world.rank, batch),
                                       num_workers=int(workers), collate_fn=collate, pin_memory=bool(pin),
                                       generator=torch.Generator().manual_seed(0), **kwargs)


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), mean over samples."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def _symmetric_kl(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    la = F.log_softmax(a.float() / temperature, dim=-1)
    lb = F.log_softmax(b.float() / temperature, dim=-1)
    return 0.5 * (F.kl_div(lb, la, log_target=True, reduction="batchmean")
                  + F.kl_div(la, lb, log_target=True, reduction="batchmean")) * temperature ** 2


def _loss(out, target, labels, config, k: int):
    """The weighted loss of a micro-batch and its three terms (kl, consistency, labels); ``k`` views per image."""
    zero = out.new_zeros((), dtype=torch.float32)
    kl = _kl(out, target, config.temperature) if config.kl > 0 else zero
    cons = zero
    if config.consistency > 0 and k == 2:
        a, b = out.chunk(2)
        cons = _symmetric_kl(a, b, config.temperature)
    ce = zero
    if config.labels > 0:
        known = labels >= 0
        ce = F.cross_entropy(out.float(), labels.clamp(min=0), reduction="none").mul(known).sum() / known.sum().clamp(
            min=1)
    loss = config.kl * kl + config.consistency * cons + config.labels * ce
    return loss, (kl, cons, ce)


def _set_batch_norm(model: nn.Module, mode: str) -> None:
    """Train mode everywhere (dropout), except batch norms under ``"frozen"``/``"reestimate"``."""
    model.train()
    if mode != "train":
        for m in model.modules():
            if isinstance(m, _BN_TYPES):
                m.eval()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on weight matrices and kernels; none on biases, norms and the scoring layers of LPS/TIPS (as their
    authors train them)."""
    from shiftlab.layers import scoring_parameters

    scoring = {id(p) for p in scoring_parameters(model)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in scoring else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _forward(model, x):
    """The model's class scores (B, K) for ``x``."""
    from shiftlab.models import select_output

    out = select_output(model(x))
    if out.ndim != 2:
        raise ShapeError(f"fine-tuning needs class scores (B, K); the model returns shape {tuple(out.shape)}")
    return out


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _autocast(amp: bool):
    return torch.autocast(device_type="cuda", dtype=torch.float16) if amp else _nothing()


class _Distiller:
    """One micro-batch of fine-tuning: the views, the teacher's softmax (``inference_mode``), the student's loss
    and its backward pass. Returns the micro-batch's statistics for the log (a tensor on the device:
    loss, kl, consistency, labels, agreeing views, views, 1), so that nothing waits for the device."""

    def __init__(self, teacher, net, config, views, copies: int, amp: bool, scaler,
                 teacher_dtype: torch.dtype | None = None):
        from shiftlab.layers import TIPSShiftTerm, has_learned_subsampling
        from shiftlab.measure.prepare import model_dtype

        self.teacher, self.net, self.config, self.views, self.copies = teacher, net, config, views, copies
        self.amp, self.scaler = amp, scaler
        self.teacher_dtype = model_dtype(teacher) if teacher_dtype is None else teacher_dtype
        # TIPS's own training term on the student's TIPS layers (their invariance is learned from it)
        self.shift_term = (TIPSShiftTerm(net, config.tips_alpha, generator=torch.Generator().manual_seed(config.seed))
                           if has_learned_subsampling(net)["tips"] and config.tips_alpha > 0 else None)

    def __call__(self, images: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor,
                 sync: bool = True) -> torch.Tensor:
        x = self.views(images, positions)
        labels = labels.to(x.device).repeat(self.copies)
        net = self.net
        context = net.no_sync() if not sync and hasattr(net, "no_sync") else _nothing()
        with context:
            with _autocast(self.amp):
                with torch.inference_mode():
                    target = _forward(self.teacher, x if self.amp else x.to(self.teacher_dtype))
                target = target.clone()  # a normal tensor: usable in the autograd graph
                out = _forward(net, x)
            loss, parts = _loss(out, target, labels, self.config, self.copies)
            if self.shift_term is not None:
                loss = loss + self.shift_term.loss()
            scaled = loss / self.config.accumulate
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        with torch.no_grad():
            agree = (out.argmax(1) == target.argmax(1)).sum()
            return torch.stack([loss.detach().double(), *(p.detach().double() for p in parts), agree.double(),
                                torch.tensor(float(out.shape[0]), dtype=torch.float64, device=out.device),
                                torch.ones((), dtype=torch.float64, device=out.device)])


def _reestimate(student, stream, sizing, views, dev, dtype, config, world) -> None:
    """Running statistics of every batch norm afresh: the cumulative average over ``bn_batches`` batches of
    views that follow the training stream (each process its slice; the means and variances are then averaged)."""
    norms = [m for m in student.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    begin = config.steps * config.accumulate
    data_loader = _loader(stream, sizing, begin, begin + config.bn_batches, world, config.batch_size, 0, False)
    student.eval()
    for m in norms:
        m.train()
    try:
        with torch.no_grad():
            for loaded in data_loader:
                if loaded.images is not None:
                    _forward(student, views(loaded.images.to(dev, dtype), torch.as_tensor(loaded.indices)))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    if world.size > 1:
        from shiftlab.measure.distributed import gather

        for m in norms:
            for buf in (m.running_mean, m.running_var):
                buf.copy_(torch.stack(gather(buf.cpu())).mean(0).to(buf.device))
