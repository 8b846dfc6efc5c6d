"""Metrics of dense outputs (B, K, H, W): pixel-level shift consistency (mASSC), mIoU and disagreement maps.

The audit's per-image rows of segmentation and image-to-image networks, computed through the one engine
(:mod:`shiftlab.measure.engine` calls :meth:`DenseRows.add` for every forward pass of a dense model):

- ``massc``: mean segmentation shift consistency (mASSC, the LPS code's metric). For each compared pair (i, j)
  of copies of an image (``Protocol.layer_pairs``) with relative content shift d, pixel p of copy i's per-pixel
  top-1 (argmax over K) is compared with pixel p + d of copy j's. Under circular protocols p + d wraps (every
  pixel is compared); under crop, zero-padded or canvas shifts only pixels whose p + d lies inside the map (the
  overlapping region, the part of the scene both views contain) are compared. Pixels whose mask (copy i's) is
  the ignore index are left out. Per image: agreeing pixels / compared pixels; the metric pools the pixels of
  all images, with an image-level interval (:func:`~shiftlab.measure.metrics.clustered_proportion_value`):
  ``n`` counts pixels, ``images`` images. A map of another size than the input is compared at the stride
  s = input / output (masks sampled at every s-th pixel, from the first) where s divides d; other pairs are
  counted in ``unrepresentable``. Fractional grids (subpixel, halfpixel, fractional) are refused.
- ``miou`` (data that is a :class:`~shiftlab.data.masks.MaskedImages`): the mIoU of copy 0 (the protocol's
  first view) against its mask, moved with the image: per class the intersection and union summed over images,
  averaged over the classes whose union is positive; ignore pixels excluded. Its interval is a percentile
  bootstrap over images (1,000 resamples, fixed seed 0), so it stays in [0, 1]. Rows are per-class
  (intersection, union) counts per image: memory grows as images x classes.
- maps: for the first ``maps`` images of the selection (at most :data:`MAX_MAPS`), the per-pixel disagreement
  map of the protocol's first compared pair in copy i's frame (1: the top-1 differs, 0: it agrees, -1: not
  compared) and copy 0's top-1 map, kept as per-image series so that shards and processes merge as the rest.

>>> import torch
>>> a = torch.tensor([[[0, 1], [2, 3]]])
>>> agree, compared, _ = segmentation_agreement(a, a.roll(1, -1), torch.tensor([0]), torch.tensor([1]), True)
>>> agree.tolist(), compared.tolist()
([4], [4])
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from shiftlab._checks import check_int
from shiftlab.errors import InputError, ShapeError
from shiftlab.measure import metrics as M
from shiftlab.measure.statistics import reduce_rows

__all__ = ["DENSE_METRICS", "MAX_MAPS", "BOOTSTRAP_RESAMPLES", "segmentation_agreement", "iou_counts",
           "miou_from_counts", "massc_value", "miou_value", "dense_value", "collect_maps", "size_mask",
           "has_masks", "check_dense_requests", "choose_dense_metrics", "DenseRows"]

#: the metrics of dense outputs besides ``equivariance``
DENSE_METRICS = ("massc", "miou")
#: at most this many images keep their disagreement maps
MAX_MAPS = 16
#: resamples of the mIoU's percentile bootstrap over images (seed 0)
BOOTSTRAP_RESAMPLES = 1000


def has_masks(source) -> bool:
    """Whether the audited data carries per-pixel masks (a :class:`~shiftlab.data.masks.MaskedImages`)."""
    return bool(getattr(source, "has_masks", False))


def _fractional(protocol) -> bool:
    from shiftlab.measure.grid_protocols import FractionalShiftGrid

    return isinstance(protocol, FractionalShiftGrid)


def _massc_reason(protocol) -> str | None:
    """Why mASSC is not defined for ``protocol`` (None: it is)."""
    if not protocol.shifts:
        return f"massc compares shifted copies; {protocol.spec()!r} does not shift"
    if _fractional(protocol):
        return (f"massc compares top-1 pixels moved back by whole pixels; {protocol.spec()!r} shifts by fractions "
                f"of a pixel (use circular, crop, diagonal, sequence, grid, intgrid or cropattack)")
    return None


def _mask_reason(protocol) -> str | None:
    """Why masks cannot follow ``protocol``'s copies exactly (None: they can)."""
    if not protocol.shifts:
        return f"masks follow shifts only; {protocol.spec()!r} resamples the image"
    if getattr(protocol, "mode", None) == "canvas":
        return f"masks cannot follow {protocol.spec()!r}: the canvas protocol resizes the image into the canvas"
    return None


def check_dense_requests(names, protocol, source, maps: int) -> None:
    """The checks the arguments alone decide, before the model runs: ``miou`` without masks, ``massc`` or maps on
    a protocol that does not shift by whole pixels, masks under a protocol they cannot follow."""
    names = list(names or [])
    if "miou" in names and not has_masks(source):
        raise InputError("miou needs per-pixel masks, but the data has none (use a MaskedImages, e.g. TensorMasks)")
    if "massc" in names and _massc_reason(protocol):
        raise InputError(_massc_reason(protocol))
    if maps and _massc_reason(protocol):
        raise InputError("maps are massc's disagreement maps: " + _massc_reason(protocol))
    if "miou" in names and _mask_reason(protocol):
        raise InputError(_mask_reason(protocol))
    if has_masks(source) and "massc" in names and _mask_reason(protocol):
        raise InputError(_mask_reason(protocol))


def choose_dense_metrics(names, protocol, source, kind: str, classes: int, maps: int):
    """The metrics of a dense output (and those left out, with why), or ``None`` when the classifier's own
    choice applies; refuses masks, ``massc``, ``miou`` or maps with a classifier and masks whose class count
    differs from the model's channels."""
    asked = [m for m in (names or []) if m in DENSE_METRICS]
    if kind != "dense":
        if asked or has_masks(source) or maps:
            what = (f"{', '.join(asked)} need" if asked else "maps need" if maps else "data with masks needs")
            raise InputError(f"{what} a dense output (B, K, H, W), but the model gives class scores (B, K)")
        return None
    if has_masks(source) and source.num_classes != classes:
        raise InputError(f"the masks have {source.num_classes} classes but the model outputs {classes} channels")
    bad = [m for m in (names or []) if m not in ("equivariance", *DENSE_METRICS)]
    if bad:
        raise InputError(f"{', '.join(bad)} need class scores (B, K), but the model output is a dense map "
                         f"(B, K, H, W); use equivariance, massc or miou")
    if not protocol.shifts and getattr(protocol, "spec_name", "") != "rotate":
        raise InputError(f"equivariance of a dense output needs a shift or rotation protocol, not {protocol.spec()!r}")
    omitted: dict[str, str] = {}
    if names is not None:
        return tuple(dict.fromkeys(names)), omitted
    chosen = ["equivariance"]
    massc_reason = _massc_reason(protocol) or (_mask_reason(protocol) if has_masks(source) else None)
    if massc_reason:
        omitted["massc"] = massc_reason
    else:
        chosen.append("massc")
    if has_masks(source):
        if _mask_reason(protocol):
            omitted["miou"] = _mask_reason(protocol)
        else:
            chosen.append("miou")
    return tuple(chosen), omitted


def size_mask(mask: torch.Tensor, sizing) -> torch.Tensor:
    """A (H, W) mask cut as :func:`~shiftlab.measure.loader.size_image` cuts its image: the same resizes, by
    nearest neighbour (never interpolated), and the same centre crop.

    Shape:
        Input: (H, W) int64. Output: (h, w) int64, the sizing's source size.
    """
    h, w = mask.shape
    sh, sw = sizing.source
    m = mask[None, None].to(torch.float64)

    def shorter_to(m, size):
        hh, ww = m.shape[-2:]
        if min(hh, ww) == size:
            return m
        new = (size, max(1, round(ww * size / hh))) if hh <= ww else (max(1, round(hh * size / ww)), size)
        return F.interpolate(m, size=new, mode="nearest")

    if sizing.resize:
        m = shorter_to(m, sizing.short_side)
        if m.shape[-2] < sh or m.shape[-1] < sw:
            m = shorter_to(m, max(sh, sw))
    h, w = m.shape[-2:]
    top, left = (h - sh) // 2, (w - sw) // 2
    return m[0, 0, top:top + sh, left:left + sw].round().to(torch.int64).contiguous()


def segmentation_agreement(top1_a: torch.Tensor, top1_b: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                           circular: bool, keep: torch.Tensor | None = None):
    """Pixel-level agreement of two top-1 maps whose content is displaced by (dy, dx) from a to b.

    Pixel p of ``top1_a`` is compared with pixel p + d of ``top1_b``: wrapped around when ``circular``, else
    only where p + d lies inside the map (the overlapping region). ``keep`` (B, H, W) bool leaves pixels of a
    out (ignore-index pixels).

    Returns:
        agreeing pixels (B,), compared pixels (B,), and the map (B, H, W) int8 in a's frame: 1 where the top-1
        differs, 0 where it agrees, -1 where nothing is compared.

    Shape:
        Input: top1_a, top1_b (B, H, W) integers; dy, dx (B,) integers (map pixels). Output: (B,), (B,),
        (B, H, W).
    """
    if top1_a.ndim != 3 or top1_a.shape != top1_b.shape:
        raise ShapeError(f"top-1 maps must both be (B, H, W), got {tuple(top1_a.shape)} and {tuple(top1_b.shape)}")
    B, H, W = top1_a.shape
    dev = top1_a.device
    dy, dx = dy.to(dev, torch.int64).reshape(B), dx.to(dev, torch.int64).reshape(B)
    rows = torch.arange(H, device=dev)[None] + dy[:, None]  # (B, H)
    cols = torch.arange(W, device=dev)[None] + dx[:, None]  # (B, W)
    if circular:
        valid = torch.ones((B, H, W), dtype=torch.bool, device=dev)
    else:
        valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    b = torch.arange(B, device=dev)[:, None, None]
    moved = top1_b[b, torch.remainder(rows, H)[:, :, None], torch.remainder(cols, W)[:, None, :]]
    if keep is not None:
        valid = valid & keep.to(dev)
    same = (top1_a == moved) & valid
    out = torch.where(valid, (~same).to(torch.int8), torch.full_like(same, -1, dtype=torch.int8))
    return same.sum((1, 2)), valid.sum((1, 2)), out


def iou_counts(top1: torch.Tensor, mask: torch.Tensor, num_classes: int, ignore_index: int):
    """Per image and class, the intersection and union of the predicted and true regions (ignore pixels out).

    Shape:
        Input: top1, mask (B, H, W) integers. Output: intersection, union (B, num_classes) int64, labelled pixels
        (B,) int64.

    >>> i, u, n = iou_counts(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]), 2, 255)
    >>> i.tolist(), u.tolist(), n.tolist()
    ([[1, 0]], [[2, 1]], [2])
    """
    if top1.ndim != 3 or top1.shape != mask.shape:
        raise ShapeError(f"top-1 and mask must both be (B, H, W), got {tuple(top1.shape)} and {tuple(mask.shape)}")
    B, C = top1.shape[0], int(num_classes)
    mask = mask.to(top1.device, torch.int64)
    valid = (mask != ignore_index).reshape(B, -1)
    pred, true = top1.reshape(B, -1).to(torch.int64), mask.reshape(B, -1)
    base = torch.arange(B, device=top1.device)[:, None] * C

    def count(cls, keep):
        flat = (base + cls.clamp(0, C - 1))[keep]
        return torch.bincount(flat, minlength=B * C).reshape(B, C)

    pred_n, true_n = count(pred, valid), count(true, valid)
    inter = count(true, valid & (pred == true))
    return inter, pred_n + true_n - inter, valid.sum(1)


def miou_from_counts(intersection: np.ndarray, union: np.ndarray) -> tuple[float, int]:
    """mIoU of summed counts: the mean of I/U over classes with U > 0, and how many classes that is."""
    inter, uni = np.asarray(intersection, np.float64), np.asarray(union, np.float64)
    present = uni > 0
    if not present.any():
        return math.nan, 0
    return math.fsum((inter[present] / uni[present]).tolist()) / int(present.sum()), int(present.sum())


def massc_value(chunks, skipped_chunks, confidence: float, extra: dict) -> M.MetricValue:
    """mASSC from rows (agreeing, compared) per compared pair: pooled over images, image-level interval."""
    idx, val = reduce_rows(chunks, 2)
    extra = dict(extra)
    if skipped_chunks:
        _, sk = reduce_rows(skipped_chunks, 1)
        extra["unrepresentable"] = int(sk[:, 0].sum())
    if len(idx) == 0:
        return M.clustered_proportion_value("massc", [], [], confidence, **extra)
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    hits, trials = np.add.reduceat(val[:, 0], starts), np.add.reduceat(val[:, 1], starts)
    extra["pairs"] = int(len(idx))
    return M.clustered_proportion_value("massc", hits.astype(np.int64), trials.astype(np.int64), confidence, **extra)


def miou_value(chunks, confidence: float, extra: dict) -> M.MetricValue:
    """mIoU from per-image rows (intersection per class, union per class, labelled pixels); its interval a
    percentile bootstrap over images with a fixed seed (0) and :data:`BOOTSTRAP_RESAMPLES` resamples."""
    if not chunks:
        return M.MetricValue("miou", math.nan, (math.nan, math.nan), 0, {**extra, "images": 0, "pixels": 0,
                                                                        "classes": 0})
    width = chunks[0][2].shape[1]
    C = (width - 1) // 2
    idx, val = reduce_rows(chunks, width)
    inter, union, pixels = val[:, :C], val[:, C:2 * C], val[:, 2 * C]
    value, present = miou_from_counts(inter.sum(0), union.sum(0))
    n_img = len(idx)
    extra = {**extra, "images": int(n_img), "pixels": int(pixels.sum()), "classes": present,
             "interval": f"percentile bootstrap over images ({BOOTSTRAP_RESAMPLES} resamples, seed 0)"}
    ci = (math.nan, math.nan)
    if n_img >= 2 and present:
        rng = np.random.default_rng(0)
        weights = rng.multinomial(n_img, np.full(n_img, 1.0 / n_img), size=BOOTSTRAP_RESAMPLES).astype(np.float64)
        bi, bu = weights @ inter, weights @ union
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(bu > 0, bi / np.where(bu > 0, bu, 1.0), np.nan)
        reps = np.nanmean(ratio, axis=1)
        alpha = (1.0 - confidence) / 2
        lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
        ci = (float(min(max(lo, 0.0), value)), float(max(min(hi, 1.0), value)))
    return M.MetricValue("miou", float(value), ci, int(pixels.sum()), extra)


def dense_value(name: str, series: dict, confidence: float, extra: dict) -> M.MetricValue:
    """The value of a dense metric (``massc`` or ``miou``) from an audit's series."""
    if name == "massc":
        return massc_value(series.get(("metric", "massc"), []), series.get(("metric", "massc.skip"), []),
                           confidence, extra)
    return miou_value(series.get(("metric", "miou"), []), confidence, extra)


def collect_maps(series: dict, count: int) -> dict | None:
    """The kept maps of the first ``count`` images (index order): ``index``, ``shape`` (h, w), ``pair``,
    ``disagreement`` (N, h, w) int8 (1 differs, 0 agrees, -1 not compared) and ``prediction`` (N, h, w) int64
    (copy 0's top-1); ``None`` when none were kept."""
    shape_rows = series.get(("map", "shape"), [])
    if not count or not shape_rows:
        return None
    idx, shape = reduce_rows(shape_rows, 4)
    keep = min(count, len(idx))
    h, w = int(shape[0, 0]), int(shape[0, 1])
    _, dis = reduce_rows(series[("map", "disagreement")], h * w)
    _, pred = reduce_rows(series[("map", "prediction")], h * w)
    return {"index": idx[:keep].astype(np.int64), "shape": (h, w), "pair": (int(shape[0, 2]), int(shape[0, 3])),
            "disagreement": dis[:keep].reshape(keep, h, w).astype(np.int8),
            "prediction": pred[:keep].reshape(keep, h, w).astype(np.int64)}


class DenseRows:
    """The rows of the dense metrics for each forward pass of a dense model (called by the engine)."""

    def __init__(self, protocol, wanted, source, seed: int, maps: int, selection: np.ndarray):
        self.protocol, self.seed = protocol, seed
        self.massc, self.miou = "massc" in wanted, "miou" in wanted
        self.masked = has_masks(source)
        self.num_classes = int(source.num_classes) if self.masked else None
        self.ignore = int(source.ignore_index) if self.masked else None
        self.mapped = set(np.sort(np.asarray(selection, np.int64))[:check_int("maps", maps, 0)].tolist())
        self.first_pair = protocol.layer_pairs[0] if protocol.layer_pairs else None
        self.copy0_done: set[int] = set()

    @classmethod
    def from_prepared(cls, prepared) -> DenseRows | None:
        maps = getattr(prepared.options, "maps", 0)
        if prepared.output.kind != "dense" or not (set(prepared.metrics) & set(DENSE_METRICS) or maps):
            return None
        return cls(prepared.protocol, prepared.metrics, prepared.images.source, prepared.options.seed, maps,
                   prepared.images.indices)

    def mask_copies(self, masks, index_tensor, copies, device) -> torch.Tensor | None:
        """Each copy's mask (len(copies), B, H, W), moved by the protocol exactly as its image."""
        if masks is None:
            return None
        m = masks.to(device)[:, None].to(torch.float64)
        if _fractional(self.protocol):  # only copy 0 (the image itself) is used: miou
            out = m[None, :, 0].expand(len(copies), -1, -1, -1)
        else:
            made = self.protocol.make(m, index_tensor, self.seed, copies=copies).inputs
            out = made.reshape(len(copies), m.shape[0], *made.shape[-2:])
        return out.round().to(torch.int64)

    def add(self, ctx, number: int, idx: np.ndarray, index_tensor, copies, pairs, out: torch.Tensor, shifts,
            masks, input_hw) -> None:
        """Rows of one forward pass: ``out`` (len(copies) * B, K, h, w), ``shifts`` (B, len(copies), 2),
        ``masks`` (B, H, W) or None, ``pairs`` (pair number, position i, position j) of this group."""
        idx = np.asarray(idx, np.int64)
        B, (H, W), (h, w) = len(idx), tuple(input_hw), tuple(out.shape[-2:])
        top1 = out.reshape(len(copies), B, *out.shape[1:]).argmax(2)  # (k, B, h, w)
        stride = (H // h, W // w) if H % h == 0 and W % w == 0 else None
        mcopies = self.mask_copies(masks, index_tensor, copies, out.device)
        if mcopies is not None and stride is not None:
            mcopies = mcopies[..., ::stride[0], ::stride[1]]
        keep_of = (lambda pos: None) if mcopies is None else (lambda pos: mcopies[pos] != self.ignore)
        if 0 in copies and number not in self.copy0_done:
            self.copy0_done.add(number)
            self._copy0(ctx, idx, top1[copies.index(0)], None if mcopies is None else mcopies[copies.index(0)],
                        (H, W), (h, w))
        if not (self.massc or self.mapped) or not pairs:
            return
        shifts = shifts.cpu()
        agree = np.zeros((B, len(pairs), 2))
        skipped = np.zeros(B)
        for p, (number_p, i, j) in enumerate(pairs):
            d = shifts[:, j] - shifts[:, i]
            ok = torch.ones(B, dtype=torch.bool) if stride is not None else torch.zeros(B, dtype=torch.bool)
            if stride is not None:
                ok = (torch.remainder(d[:, 0], stride[0]) == 0) & (torch.remainder(d[:, 1], stride[1]) == 0)
            steps = torch.div(d, torch.tensor(stride or (1, 1)), rounding_mode="floor").long()
            a, c, dmap = segmentation_agreement(top1[i], top1[j], steps[:, 0], steps[:, 1], self.protocol.circular,
                                                keep_of(i))
            agree[:, p, 0], agree[:, p, 1] = a.cpu().numpy(), c.cpu().numpy()
            agree[~ok.numpy(), p] = np.nan
            skipped += (~ok).numpy()
            if self.mapped and (copies[i], copies[j]) == self.first_pair:
                self._maps(ctx, idx, dmap.masked_fill(~ok.to(dmap.device)[:, None, None], -1), (h, w))
        if self.massc:
            rows = ~np.isnan(agree[..., 0]).reshape(-1)
            ctx.add(("metric", "massc"), np.repeat(idx, len(pairs))[rows], agree.reshape(-1, 2)[rows])
            ctx.add(("metric", "massc.skip"), idx, skipped.reshape(-1, 1))

    def _copy0(self, ctx, idx, top1, mask, input_hw, out_hw) -> None:
        """Copy 0's rows: its mIoU counts and, for mapped images, its top-1 map."""
        if self.miou:
            if tuple(out_hw) != tuple(input_hw):
                raise InputError(f"miou compares the output with the mask pixel by pixel; the model's map is "
                                 f"{out_hw[0]}x{out_hw[1]} for a {input_hw[0]}x{input_hw[1]} input")
            inter, union, pixels = iou_counts(top1, mask, self.num_classes, self.ignore)
            ctx.add(("metric", "miou"), idx, torch.cat([inter, union, pixels[:, None]], 1).cpu().numpy())
        sel = np.asarray([int(i) in self.mapped for i in idx], dtype=bool)
        if sel.any():
            ctx.add(("map", "prediction"), idx[sel], top1.reshape(len(idx), -1).cpu().numpy()[sel])

    def _maps(self, ctx, idx, dmap, out_hw) -> None:
        sel = np.asarray([int(i) in self.mapped for i in idx], dtype=bool)
        if sel.any():
            ctx.add(("map", "disagreement"), idx[sel], dmap.reshape(len(idx), -1).cpu().numpy()[sel])
            shape = np.asarray([[out_hw[0], out_hw[1], *self.first_pair]] * int(sel.sum()), np.float64)
            ctx.add(("map", "shape"), idx[sel], shape)
