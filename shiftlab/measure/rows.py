"""Per-copy rows: what each forward pass leaves behind (per-image statistics, never images or feature maps).

A :class:`RowCollector` knows the current forward pass (which images, which copies, which pairs of copies are
compared); forward hooks hand it a layer's output and it appends equivariance and pooled-invariance rows;
:func:`classification_rows` appends the rows of the metrics of (B, K, classes) scores. Rows go to
:class:`~shiftlab.measure.statistics.Column` buffers outside the allocator's heap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from shiftlab.errors import ShapeError
from shiftlab.measure import metrics as M
from shiftlab.measure.protocols import Protocol
from shiftlab.measure.statistics import Column
from shiftlab.measure.tokens import as_token_map

__all__ = ["RowCollector", "rotation_rows", "classification_rows", "worst_case_correct"]


class RowCollector:
    """What the hooks need to know about the current forward pass; features never leave a hook."""

    def __init__(self, chunks: dict, layer_info: dict, protocol: Protocol, margin: int, tokens: dict | None = None):
        self.chunks = chunks
        self.tokens = tokens or {}  # layer name -> TokenLayout: token outputs compared as (B, C, h, w) maps
        self.columns: dict = {}
        self.layer_info = layer_info
        self.protocol = protocol
        self.margin = margin
        self.calls: dict[str, int] = {}
        self.active = False
        # rotation protocols: the angle of each copy (layers are compared by rotating their maps)
        self.rotation = list(protocol.values) if getattr(protocol, "spec_name", "") == "rotate" else None

    def start(self, batch: int, indices: np.ndarray, copies: list[int], pairs: list, input_hw, shifts):
        self.copies = list(copies)
        self.batch = batch
        self.indices = indices
        self.B = len(indices)
        self.K = len(copies)
        self.pairs = pairs  # (pair number, position i, position j)
        self.input_hw = input_hw
        self.shifts = None if shifts is None else shifts.to("cpu")
        self.calls = {}
        self.active = True

    def add(self, key, idx: np.ndarray, values: np.ndarray):
        if len(idx):
            values = np.asarray(values, np.float64).reshape(len(idx), -1)
            column = self.columns.get(key)
            if column is None:
                column = self.columns[key] = Column(values.shape[1])
            column.append(idx, values)

    def series(self) -> dict:
        """Every series: the chunks it started with (a resumed checkpoint), then what this run added."""
        out = {k: list(v) for k, v in self.chunks.items()}
        for key, column in self.columns.items():
            out.setdefault(key, []).append(column.chunk())
        return out

    def hook(self, name: str):
        def fn(module, inputs, output):
            if not self.active:
                return
            count = self.calls.get(name, 0)
            self.calls[name] = count + 1
            key = name if count == 0 else f"{name}#{count}"
            feat = output
            while isinstance(feat, (tuple, list)) and feat:
                feat = feat[0]
            feat, note = as_token_map(feat, self.tokens.get(name), self.input_hw)
            self.features(("layer", key), key, feat, note)
        return fn

    def features(self, prefix: tuple, name: str, feat, tokens: str | None = None):
        """Accumulate equivariance/invariance rows of ``feat`` (K*B, ...) for this group's pairs (``tokens``: what
        :func:`~shiftlab.measure.tokens.as_token_map` reshaped, recorded in the layer's info)."""
        if not isinstance(feat, torch.Tensor) or feat.ndim < 2 or feat.shape[0] != self.K * self.B:
            self.layer_info.setdefault(name, {"stride": None, "shape": None,
                                              "note": "output is not a batched tensor; not compared"})
            return
        if not (feat.is_floating_point() or feat.is_complex()):
            self.layer_info.setdefault(name, {"stride": None, "shape": list(feat.shape[1:]),
                                              "note": "integer output; not compared"})
            return
        if self.rotation is not None:
            rotation_rows(self, prefix, name, feat)
            return
        f = feat.reshape(self.K, self.B, *feat.shape[1:])
        stride = None
        if feat.ndim == 4 and feat.shape[-2] * feat.shape[-1] > 1:
            H, W = self.input_hw
            h, w = feat.shape[-2:]
            if H % h == 0 and W % w == 0:
                stride = (H // h, W // w)
        info = {"shape": list(feat.shape[1:]), "stride": None if stride is None else list(stride)}
        if tokens:
            info["tokens"] = tokens
        if stride is None and feat.ndim == 4 and feat.shape[-2] * feat.shape[-1] > 1:
            info["note"] = "map size does not divide the input size; only pooled invariance is compared"
        self.layer_info.setdefault(name, info)
        if not self.pairs:
            return
        pooled = f.mean(dim=(-2, -1)) if feat.ndim == 4 else f.flatten(2)
        idx = np.asarray(self.indices, np.int64)
        P = len(self.pairs)
        # rows are ordered (sample, pair): the order a sample's rows have in any split of the work
        inv = [torch.stack(M.invariance_stats(pooled[i], pooled[j]), 1) for _, i, j in self.pairs]
        inv = torch.stack(inv, 1).cpu().numpy()  # (B, P, 2)
        key = (lambda kind: (*prefix, kind)) if prefix[0] == "layer" else (lambda kind: ("metric", kind))
        self.add(key("invariance"), np.repeat(idx, P), inv.reshape(-1, 2))
        if stride is None or self.shifts is None:
            return
        margin = 0 if self.protocol.circular else -(-self.margin // min(stride))
        eq = np.full((self.B, P, 2), np.nan)
        excluded = np.zeros((self.B, P), dtype=bool)  # representable, but the margin leaves nothing to compare
        for p, (_, i, j) in enumerate(self.pairs):
            d = self.shifts[:, j] - self.shifts[:, i]  # int64, or float64 for fractional grids
            ok = (torch.remainder(d[:, 0], stride[0]) == 0) & (torch.remainder(d[:, 1], stride[1]) == 0)
            if not bool(ok.any()):
                continue
            sel = ok.nonzero().squeeze(1)
            if bool(ok.all()):
                a, b = f[i], f[j]
            else:
                dev_sel = sel.to(f.device)
                a, b = f[i].index_select(0, dev_sel), f[j].index_select(0, dev_sel)
            steps = torch.div(d[sel], torch.tensor(stride, dtype=d.dtype), rounding_mode="floor").long()
            e2, r2, valid = M.equivariance_stats(a, b, steps[:, 0], steps[:, 1], self.protocol.circular, margin)
            vals = torch.stack([e2, r2], 1).cpu().numpy()
            valid = valid.cpu().numpy()
            eq[sel.numpy()[valid], p] = vals[valid]
            excluded[sel.numpy()[~valid], p] = True
        done = ~np.isnan(eq[..., 0])  # (B, P)
        done_rows = done.reshape(-1)
        self.add(key("equivariance"), np.repeat(idx, P)[done_rows], eq.reshape(-1, 2)[done_rows])
        skip_key = (*prefix, "skip") if prefix[0] == "layer" else ("metric", "equivariance.skip")
        # a pair the stride cannot represent and one whose map the margin leaves empty are counted apart
        self.add(skip_key, idx, (~done & ~excluded).sum(1).astype(np.float64).reshape(-1, 1))
        if excluded.any():
            margin_key = (*prefix, "margin") if prefix[0] == "layer" else ("metric", "equivariance.margin")
            self.add(margin_key, idx, excluded.sum(1).astype(np.float64).reshape(-1, 1))


def rotation_rows(batch: RowCollector, prefix: tuple, name: str, feat: torch.Tensor) -> None:
    """Rotation equivariance of one layer's output for this group's pairs (:mod:`shiftlab.measure.rotation`).

    Copy j (angle a_j) is compared with copy i (angle a_i) rotated by a_j - a_i about the map's centre (group
    features: the group axis cycled; harmonic features: the phases turned): exact at multiples of 90
    degrees, inside the disc that never sees the corners elsewhere (against the copy passed through the same
    resampler). Maps of 2x2 or less at other angles, and non-map outputs, are not compared.
    """
    from shiftlab.measure.rotation import quarter_turns, rotation_equivariance_stats

    f = feat.reshape(batch.K, batch.B, *feat.shape[1:])
    is_map = feat.ndim in (4, 5) and feat.shape[-2] * feat.shape[-1] > 1
    info = {"shape": list(feat.shape[1:]), "stride": None, "rotation": bool(is_map)}
    if feat.ndim == 5:
        info["layout"] = "complex streams" if feat.is_complex() else f"group axis of {feat.shape[2]}"
    if not is_map:
        info["note"] = "not a map: only the invariance of the output is compared"
    batch.layer_info.setdefault(name, info)
    if not batch.pairs:
        return
    idx = np.asarray(batch.indices, np.int64)
    P = len(batch.pairs)
    if feat.is_complex():
        pooled = f.abs().flatten(3).mean(-1) if feat.ndim >= 4 else f.abs()
    else:
        pooled = f.mean(dim=(-2, -1)) if feat.ndim == 4 else f.flatten(2)
    inv = [torch.stack(M.invariance_stats(pooled[i], pooled[j]), 1) for _, i, j in batch.pairs]
    key = (lambda kind: (*prefix, kind)) if prefix[0] == "layer" else (lambda kind: ("metric", kind))
    batch.add(key("invariance"), np.repeat(idx, P), torch.stack(inv, 1).cpu().numpy().reshape(-1, 2))
    if not is_map:
        return
    eq = np.full((batch.B, P, 2), np.nan)
    for p, (_, i, j) in enumerate(batch.pairs):
        angle = batch.rotation[batch.copies[j]] - batch.rotation[batch.copies[i]]
        if quarter_turns(angle) is None and min(feat.shape[-2:]) <= 2:
            continue
        e2, r2 = rotation_equivariance_stats(f[i], f[j], angle)
        vals = torch.stack([e2, r2], 1).cpu().numpy()
        vals[vals[:, 1] == 0] = np.nan  # nothing compared (an empty disc, or an all-zero map)
        eq[:, p] = vals
    done = ~np.isnan(eq[..., 0])
    rows = done.reshape(-1)
    batch.add(key("equivariance"), np.repeat(idx, P)[rows], eq.reshape(-1, 2)[rows])
    batch.add((*prefix, "skip") if prefix[0] == "layer" else ("metric", "equivariance.skip"), idx,
              (~done).sum(1).astype(np.float64).reshape(-1, 1))


def worst_case_correct(top1: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each image is classified correctly under every one of its K copies (Michaeli et al. 2023).

    Shape:
        - Input: top1 (B, K) int64 class of each copy; labels (B,) int64
        - Output: (B,) bool

    >>> worst_case_correct(torch.tensor([[3, 3, 3], [3, 1, 3]]), torch.tensor([3, 3])).tolist()
    [True, False]
    """
    if top1.ndim != 2 or labels.shape != top1.shape[:1]:
        raise ShapeError(f"top1 must be (B, K) and labels (B,), got {tuple(top1.shape)} and {tuple(labels.shape)}")
    return (top1 == labels.to(top1.device)[:, None]).all(dim=1)


def classification_rows(batch: RowCollector, protocol: Protocol, logits: torch.Tensor, labels: torch.Tensor,
                         wanted: Sequence[str], reference_top1: torch.Tensor | None, record: bool):
    """Per-image statistics of (B, K, classes) logits for the wanted metrics (and the guard, the records)."""
    idx = np.asarray(batch.indices, np.int64)
    B, K = logits.shape[:2]
    t1 = M.top1(logits)
    lab = labels.to(t1.device)

    def prop(name, success: torch.Tensor, param: torch.Tensor | None = None, keep: torch.Tensor | None = None):
        success = success.reshape(B, -1)
        if param is None:
            param = torch.zeros_like(success, dtype=torch.long)
        param = param.reshape(-1, success.shape[1]).expand(B, -1).to(success.device)
        rows_idx = np.repeat(idx, success.shape[1])
        vals = torch.stack([success.reshape(-1).to(torch.float64), param.reshape(-1).to(torch.float64)], 1).cpu()
        vals = vals.numpy()
        if keep is not None:
            k = keep.reshape(-1).cpu().numpy()
            rows_idx, vals = rows_idx[k], vals[k]
        batch.add(("metric", name), rows_idx, vals)

    def mean(name, values: torch.Tensor):
        values = values.reshape(B, -1)
        batch.add(("metric", name), np.repeat(idx, values.shape[1]), values.reshape(-1, 1).cpu().numpy())

    for name in wanted:
        if name == "consistency":
            a = torch.tensor([p[0] for p in protocol.consistency_pairs], device=t1.device)
            b = torch.tensor([p[1] for p in protocol.consistency_pairs], device=t1.device)
            prop(name, t1[:, a] == t1[:, b])
        elif name in ("top1_change", "flip_probability"):
            prop(name, M.change_stats(t1, "adjacent"))
        elif name == "mean_abs_change":
            mean(name, M.mac_stats(logits))
        elif name == "top5_distance":
            mean(name, M.top5_stats(logits, "adjacent"))
        elif name == "worst_case_stability":
            prop(name, (t1 == t1[:, :1]).all(dim=1))
        elif name == "agreement":
            prop(name, t1[:, 1:] == t1[:, :1], torch.arange(1, K))
        elif name == "accuracy":
            keep = (lab >= 0)[:, None].expand(B, K)
            if bool(keep.any()):
                prop(name, t1 == lab[:, None], torch.arange(K), keep)
        elif name == "worst_case_accuracy":
            keep = lab >= 0
            if bool(keep.any()):
                prop(name, worst_case_correct(t1, lab), keep=keep)
        elif name == "reference_agreement" and reference_top1 is not None:
            prop(name, t1 == reference_top1.to(t1.device))
    batch.add(("guard", "top1"), idx, torch.stack([t1[:, 0].cpu(), lab.cpu()], 1).numpy())
    if record:
        tracked = torch.where(lab >= 0, lab, t1[:, 0])
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        batch.add(("record", "top1"), idx, t1.cpu().numpy())
        batch.add(("record", "tracked"), idx, tracked.cpu().numpy()[:, None])
        batch.add(("record", "probability"), idx, probs.gather(-1, tracked[:, None, None].expand(B, K, 1))[..., 0]
                  .cpu().numpy())
        k5 = min(5, probs.shape[-1])
        top = probs[:, 0].topk(k5, dim=-1)
        classes = torch.full((B, 5), -1.0, dtype=torch.float64)
        values = torch.zeros((B, 5), dtype=torch.float64)
        classes[:, :k5] = top.indices.cpu().to(torch.float64)
        values[:, :k5] = top.values.cpu()
        batch.add(("record", "top5"), idx, torch.cat([classes, values], 1).numpy())
