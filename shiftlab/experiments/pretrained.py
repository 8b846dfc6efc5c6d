"""The articles' claims measured on a real pretrained network and real photos, without training.

Each experiment is a function that runs a model on shifted (rotated, scaled, brightened) copies of the
photos and returns a JSON-serialisable dict; :func:`run_report_experiments` runs them all and collects
the dicts into the ``results.json`` that ``shiftlab report`` renders. Nothing here plots or writes files.

Every photo is first resized (shorter side to the model's input size + 32 px) and centre-cropped to a
square "base" of side S + 32 (256 for a 224 model), as in the ImageNet consistency protocol; the views
the model sees are S x S windows, canvases or rolls of that base.

Protocols:
- crop: the window ``base[o:o+S, o:o+S]`` (a camera pan: new content enters at the border);
- canvas: the base downscaled to S - 32 and pasted at (o, o) into an S x S canvas, black or inpainted;
- circular: ``torch.roll`` of the centre window (an exact group action).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from shiftlab._progress import track
from shiftlab.errors import InputError

__all__ = [
    "Budget",
    "DEFAULT_BUDGET",
    "QUICK_BUDGET",
    "Classifier",
    "prepare_images",
    "diagonal_sweep",
    "shift_consistency",
    "layer_profile",
    "fix_comparison",
    "other_invariances",
    "run_report_experiments",
]

MARGIN = 32  # the sweep runs over 0..MARGIN px; the base is MARGIN px larger than the model's input
PROTOCOLS = ("crop", "canvas_black", "canvas_inpaint")


@dataclass(frozen=True)
class Budget:
    """How many views each experiment uses (the report's run time is proportional to these)."""

    max_images: int | None = None  # None: every image of the data set
    sweep_step: int = 1  # diagonal offsets 0, step, .., MARGIN
    pairs_per_image: int = 8  # random pairs for crop and circular consistency
    grid: int = 8  # worst case over a grid x grid window of 1-px shifts
    rotations: tuple[float, ...] = tuple(float(a) for a in range(-180, 181, 30))
    scales: tuple[float, ...] = (0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0)
    brightness: tuple[float, ...] = (0.2, 0.35, 0.5, 0.7, 1.0, 1.3, 1.6, 2.0)
    fix_protocols: tuple[str, ...] = ("crop",)  # sweep protocols re-run on the converted models
    fix_sweep_max: int = 16  # the converted models' sweep runs over 0..16 px
    fix_grid: int = 4  # the converted models are slower: a smaller grid (the original is compared on the same)
    certify_shifts: int = 8  # circular shifts the APS certificate checks (always including (1, 1))
    certify_size: int | None = None  # input side of the certificate (None: the model's input size)
    batch_size: int = 32


DEFAULT_BUDGET = Budget()
QUICK_BUDGET = Budget(
    max_images=2,
    pairs_per_image=4,
    grid=3,
    rotations=(-90.0, -30.0, 0.0, 30.0, 90.0, 180.0),
    scales=(0.5, 1.0, 2.0),
    brightness=(0.3, 1.0, 2.0),
    fix_grid=2,
    certify_shifts=2,
    certify_size=64,
)


def _metric(value) -> dict:
    """A MetricValue (or its dict) as a JSON dict {"value", "ci", "n", ...}; undefined values are None."""
    d = value.to_dict() if hasattr(value, "to_dict") else dict(value)

    def number(v):
        return None if v is None or v != v else float(v)

    d["value"] = number(d["value"])
    d["ci"] = [number(c) for c in d["ci"]]
    d["n"] = int(d["n"])
    return d


class Classifier:
    """A model plus its preprocessing: pixel-space views in, logits out, in batches.

    Shape:
        Input: (B, 3, H, W) in [0, 1]. Output: (B, K) float32 logits on the CPU.
    """

    def __init__(self, model: torch.nn.Module, preprocessing, batch_size: int = 32, device=None):
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.batch_size = int(batch_size)
        self.device = torch.device(device) if device is not None else next(
            (p.device for p in model.parameters()), torch.device("cpu"))

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start:start + self.batch_size].to(self.device, torch.float32)
            logits = self.model(self.preprocessing.normalize(chunk))
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            out.append(logits.float().cpu())
        return torch.cat(out)


# ----------------------------------------------------------------------------------------- images


def _resize_short_side(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    return torch.nn.functional.interpolate(image, size=new, mode="bilinear", antialias=True,
                                           align_corners=False).clamp(0, 1)


def prepare_images(images, input_size: tuple[int, int]) -> torch.Tensor:
    """Resize each image's shorter side and centre-crop it to the base of side input + MARGIN.

    Shape:
        Input: a sequence of (C, H, W) or (1, C, H, W) tensors in [0, 1], any sizes; or (N, C, H, W).
        Output: (N, 3, H_in + 32, W_in + 32) float32.
    """
    bh, bw = input_size[0] + MARGIN, input_size[1] + MARGIN
    out = []
    for image in images:
        image = torch.as_tensor(image, dtype=torch.float32)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[1] not in (1, 3):
            raise InputError(f"expected (C, H, W) images with 1 or 3 channels, got shape {tuple(image.shape)}")
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        image = _resize_short_side(image, max(bh, bw))
        h, w = image.shape[-2:]
        top, left = (h - bh) // 2, (w - bw) // 2
        out.append(image[..., top:top + bh, left:left + bw])
    if not out:
        raise InputError("the data set has no images")
    return torch.cat(out).contiguous()


def _centre(base: torch.Tensor, input_size) -> torch.Tensor:
    h, w = input_size
    top, left = (base.shape[-2] - h) // 2, (base.shape[-1] - w) // 2
    return base[..., top:top + h, left:left + w]


def _softmax_at(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Probability of class ``index[..]`` for logits (..., K)."""
    return torch.softmax(logits.double(), dim=-1).gather(-1, index[..., None]).squeeze(-1)


def _mean_ci(values: torch.Tensor) -> dict:
    from shiftlab.metrics import mean_interval

    values = values.double().flatten()
    lo, hi = mean_interval(values)
    return {"value": float(values.mean()), "ci": [float(lo), float(hi)], "n": int(values.numel())}


def _wilson(successes: int, n: int) -> dict:
    from shiftlab.metrics import wilson_interval

    lo, hi = wilson_interval(int(successes), int(n))
    return {"value": successes / n if n else float("nan"), "ci": [float(lo), float(hi)], "n": int(n)}


# ---------------------------------------------------------------------------------- experiment 1


def _sweep_views(base: torch.Tensor, protocol: str, offsets: torch.Tensor, input_size) -> torch.Tensor:
    """The views of one base image (1, 3, S+32, S+32) for every diagonal offset, (T, 3, S, S)."""
    from shiftlab import transforms

    t = offsets.shape[0]
    dy, dx = offsets[:, 0], offsets[:, 1]
    repeated = base.expand(t, -1, -1, -1)
    if protocol == "crop":
        return transforms.crop_shift(repeated, dy, dx, tuple(input_size))
    fill = {"canvas_black": "black", "canvas_inpaint": "inpaint"}[protocol]
    obj = (input_size[0] - MARGIN, input_size[1] - MARGIN)
    return transforms.canvas_embed(repeated, dy, dx, tuple(input_size), object_size=obj, fill=fill)


def diagonal_sweep(classifier: Classifier, base: torch.Tensor, classes: torch.Tensor, *,
                   protocols=PROTOCOLS, step: int = 1, max_offset: int = MARGIN, progress: bool = False,
                   label: str = "") -> dict:
    """Experiment 1: the top class's probability as the photo moves diagonally 0..32 px, 1 px at a time.

    For each protocol (``crop``, ``canvas_black``, ``canvas_inpaint``) returns the probability of
    ``classes[i]`` at every offset, the top-1 class at every offset, and over the adjacent 1-px steps
    P(top-1 change) and the mean absolute change of the top-1 probability (Azulay & Weiss), with intervals.

    Shape:
        base: (N, 3, S+32, S+32) in [0, 1]; classes: (N,) int64.
    """
    from shiftlab import metrics, transforms

    if not 1 <= max_offset <= MARGIN:
        raise InputError(f"max_offset must lie in 1..{MARGIN}, got {max_offset}")
    offsets = transforms.diagonal_offsets(max_offset)[::step]
    n = base.shape[0]
    input_size = (base.shape[-2] - MARGIN, base.shape[-1] - MARGIN)
    result = {"offsets": [int(o) for o in offsets[:, 0]], "step": int(step), "protocols": {}}
    for protocol in protocols:
        logits = []
        for i in track(range(n), f"{label}jaggedness ({protocol.replace('_', ', ')})", total=n, enabled=progress):
            logits.append(classifier(_sweep_views(base[i:i + 1], protocol, offsets, input_size)))
        seq = torch.stack(logits)  # (N, T, K)
        entry = {
            "probability": _softmax_at(seq, classes[:, None].expand(-1, seq.shape[1])).tolist(),
            "top1": seq.argmax(-1).tolist(),
        }
        if step == 1:
            entry["top1_change"] = _metric(metrics.top1_change(seq))
            entry["mean_abs_change"] = _metric(metrics.mean_abs_change(seq))
        result["protocols"][protocol] = entry
    return result


# ---------------------------------------------------------------------------------- experiment 2


def shift_consistency(classifier: Classifier, base: torch.Tensor, *, seed: int = 0, pairs_per_image: int = 16,
                      grid: int = 8, progress: bool = False, label: str = "") -> dict:
    """Experiment 2: crop and circular consistency, and the worst case over a grid of 1-px shifts.

    - crop consistency: two S x S windows of the base at offsets uniform in 0..31 (Zhang's protocol);
    - circular consistency: two rolls of the centre window by offsets uniform in -32..31;
    - worst case: the fraction of images whose top-1 is the same for all grid x grid shifts 0..grid-1 px.
    Offsets come from ``random_offsets(seed, i)``, so a result depends only on the seed.
    Also returns the top-1 class of every view (for comparing converted models view by view) and the
    probability of each image's centre top-1 class over the grid (the shift map).

    Shape:
        base: (N, 3, S+32, S+32) in [0, 1].
    """
    from shiftlab import metrics, transforms

    n = base.shape[0]
    input_size = (base.shape[-2] - MARGIN, base.shape[-1] - MARGIN)
    k = int(pairs_per_image)
    indices = torch.arange(n * k)
    crop_offsets = transforms.random_offsets(seed, indices, 0, MARGIN - 1, count=2)  # (N*k, 2, 2)
    roll_offsets = transforms.random_offsets(seed + 1, indices, -MARGIN, MARGIN - 1, count=2)
    grid_offsets = transforms.shift_grid(grid)  # (G, 2)
    centre = _centre(base, input_size)

    crop_a, crop_b, roll_a, roll_b, grid_logits, centre_logits = [], [], [], [], [], []
    for i in track(range(n), f"{label}consistency and {grid}x{grid} grid", total=n, enabled=progress):
        img = base[i:i + 1]
        co = crop_offsets[i * k:(i + 1) * k]  # (k, 2, 2)
        ro = roll_offsets[i * k:(i + 1) * k]
        views = [
            transforms.crop_shift(img.expand(k, -1, -1, -1), co[:, 0, 0], co[:, 0, 1], input_size),
            transforms.crop_shift(img.expand(k, -1, -1, -1), co[:, 1, 0], co[:, 1, 1], input_size),
            transforms.circular_shift(centre[i:i + 1].expand(k, -1, -1, -1), ro[:, 0, 0], ro[:, 0, 1]),
            transforms.circular_shift(centre[i:i + 1].expand(k, -1, -1, -1), ro[:, 1, 0], ro[:, 1, 1]),
            transforms.crop_shift(img.expand(len(grid_offsets), -1, -1, -1), grid_offsets[:, 0], grid_offsets[:, 1],
                                  input_size),
            centre[i:i + 1],
        ]
        logits = classifier(torch.cat(views)).split([k, k, k, k, len(grid_offsets), 1])
        for store, value in zip((crop_a, crop_b, roll_a, roll_b, grid_logits, centre_logits), logits):
            store.append(value)
    crop_a, crop_b, roll_a, roll_b = (torch.cat(v) for v in (crop_a, crop_b, roll_a, roll_b))
    grid_logits = torch.stack(grid_logits)  # (N, G, K)
    centre_logits = torch.cat(centre_logits)
    centre_top1 = centre_logits.argmax(-1)
    grid_probability = _softmax_at(grid_logits, centre_top1[:, None].expand(-1, grid_logits.shape[1]))
    return {
        "pairs_per_image": k,
        "grid": int(grid),
        "seed": int(seed),
        "crop_consistency": _metric(metrics.consistency(crop_a, crop_b)),
        "circular_consistency": _metric(metrics.consistency(roll_a, roll_b)),
        "worst_case": _metric(metrics.worst_case_stability(grid_logits)),
        "grid_probability": grid_probability.reshape(n, grid, grid).tolist(),
        "offsets": {"crop": crop_offsets.tolist(), "circular": roll_offsets.tolist()},
        "top1": {
            "centre": centre_top1.tolist(),
            "crop_pairs": torch.stack([crop_a.argmax(-1), crop_b.argmax(-1)], 1).tolist(),
            "circular_pairs": torch.stack([roll_a.argmax(-1), roll_b.argmax(-1)], 1).tolist(),
            "grid": grid_logits.argmax(-1).tolist(),
        },
        "_centre_logits": centre_logits,  # private: dropped before saving
    }


# ---------------------------------------------------------------------------------- experiment 3


def _profiled_layers(model: torch.nn.Module) -> list[str]:
    """Module names along the depth: children of sequential containers (blocks), else top-level children."""
    names = []

    def visit(prefix: str, module: torch.nn.Module, depth: int):
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if isinstance(child, torch.nn.Sequential) and depth < 2 and len(child) > 0:
                visit(name + ".", child, depth + 1)
            elif isinstance(child, (torch.nn.Dropout, torch.nn.Identity, torch.nn.Flatten)):
                continue
            else:
                names.append(name)

    visit("", model, 0)
    return names


def layer_profile(model: torch.nn.Module, preprocessing, base: torch.Tensor, *, findings=None,
                  progress: bool = False, device=None, margin: int = 16) -> dict:
    """Experiment 3: equivariance and invariance errors of each layer along the depth of the network.

    For the output phi of each layer (blocks of a sequential stage, or top-level children), at cumulative
    stride s = input size / map size:

    - ``aligned_error``: the equivariance error ||phi(T x) - T' phi(x)|| / ||phi(x)|| for the smallest shift
      the layer can represent exactly, a crop moved by s px (T' = one feature cell), compared at least
      ``margin`` input pixels inside the border (:func:`shiftlab.metrics.feature_equivariance_error`);
    - ``one_pixel_invariance``: the invariance error of the spatially averaged features for a 1-px circular
      shift, ||mean phi(T x) - mean phi(x)|| / ||mean phi(x)|| (:func:`shiftlab.metrics.feature_invariance_error`);
      zero for any stack of stride-1 circular convolutions, so what rises is aliasing from subsampling.

    Both are averaged over images, with t intervals. ``findings`` (from :func:`shiftlab.measure.inspect.inspect`)
    mark the layers that subsample with stride 2 and those with 'same' (asymmetric or zero) padding.

    Shape:
        base: (N, 3, S+32, S+32) in [0, 1].
    """
    from shiftlab import metrics, transforms

    input_size = (base.shape[-2] - MARGIN, base.shape[-1] - MARGIN)
    names = _profiled_layers(model)
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] > 1:
                captured[name] = output.detach().double().cpu()
        hooks.append(modules[name].register_forward_hook(hook))

    def features(x):
        captured.clear()
        with torch.inference_mode():
            model(preprocessing.normalize(x.to(device) if device is not None else x))
        return dict(captured)

    n = base.shape[0]
    aligned: dict[str, list[float]] = {}
    invariance: dict[str, list[float]] = {}
    info: dict[str, tuple[int, list[int]]] = {}
    try:
        for i in track(range(n), "layer profile", total=n, enabled=progress):
            img = base[i:i + 1]
            ref = features(transforms.crop_shift(img, 0, 0, input_size))
            strides = {name: input_size[0] // f.shape[-2] for name, f in ref.items()}
            by_stride = {s: features(transforms.crop_shift(img, s, s, input_size))
                         for s in sorted(set(strides.values())) if s <= MARGIN}
            centre = _centre(img, input_size)
            still, moved = features(centre), features(transforms.circular_shift(centre, 1, 1))
            for name, f in ref.items():
                s = strides[name]
                info.setdefault(name, (s, list(f.shape[1:])))
                if s in by_stride:
                    # the window moved down-right by s px: the content moved up-left by one cell
                    err = metrics.feature_equivariance_error(f, by_stride[s][name], (-s, -s), stride=s,
                                                             circular=False, margin=-(-margin // s))
                    if err.n:
                        aligned.setdefault(name, []).append(err.value)
                inv = metrics.feature_invariance_error(still[name], moved[name])
                invariance.setdefault(name, []).append(inv.value)
    finally:
        for h in hooks:
            h.remove()

    marks = _marks_from_findings(findings, list(info))
    layers = []
    for depth, name in enumerate(info):
        layers.append({
            "name": name,
            "depth": depth,
            "stride": int(info[name][0]),
            "shape": info[name][1],
            "aligned_error": _mean_ci(torch.tensor(aligned[name])) if name in aligned else None,
            "one_pixel_invariance": _mean_ci(torch.tensor(invariance[name])),
            "marks": marks.get(name, []),
        })
    return {"layers": layers, "input_size": list(input_size), "n_images": int(n), "margin": int(margin)}


_SUBSAMPLING = ("strided-conv", "max-pool", "avg-pool", "other-subsampling")


def _marks_from_findings(findings, names: list[str]) -> dict[str, list[str]]:
    """Map inspect's findings onto the profiled layers that contain them.

    Marks: ``"stride N"`` (subsampling without a low-pass filter), ``"'same' padding"`` (asymmetric 'same'
    padding, which moves the sampling grid) and ``"zero padding"``.
    """
    marks: dict[str, list[str]] = {}
    for finding in findings or []:
        if finding.kind in _SUBSAMPLING:
            label = f"stride {max(finding.stride)}"
        elif finding.kind == "same-padding-asymmetric":
            label = "'same' padding"
        elif finding.kind == "zero-padding":
            label = "zero padding"
        else:
            continue
        owner = next((n for n in names if finding.name == n or finding.name.startswith(n + ".")), None)
        if owner is not None and label not in marks.setdefault(owner, []):
            marks[owner].append(label)
    return marks


# ---------------------------------------------------------------------------------- experiment 4


def _agreement(a: list, b: list) -> dict:
    a = torch.as_tensor(a).flatten()
    b = torch.as_tensor(b).flatten()
    return _wilson(int((a == b).sum()), a.numel())


def fix_comparison(model: torch.nn.Module, preprocessing, base: torch.Tensor, classes: torch.Tensor, *,
                   baseline_sweep: dict, baseline_consistency: dict, labels: torch.Tensor | None = None,
                   seed: int = 0, budget: Budget = DEFAULT_BUDGET, progress: bool = False, device=None) -> dict:
    """Experiment 4: the fixes applied to the pretrained network without retraining.

    Converts the model with ``antialias(method="blur")``, ``antialias(method="aps")`` (zero padding kept) and
    ``antialias(method="aps", circular=True)``,
    re-measures the shift metrics on the same views (same seed), and counts how often the converted model's
    top-1 agrees with the original's on the very same views (the price of converting without fine-tuning).
    Certifies the APS model's invariance to circular shifts.

    Shape:
        base: (N, 3, S+32, S+32) in [0, 1]; classes, labels: (N,) int64 (labels -1 where unknown).
    """
    from shiftlab.fix.antialias import antialias

    input_size = (base.shape[-2] - MARGIN, base.shape[-1] - MARGIN)
    variants = [("antialias(blur)", {"method": "blur"}),
                ("antialias(aps)", {"method": "aps"}),  # zero padding kept: closer to the original function
                ("antialias(aps, circular=True)", {"method": "aps", "circular": True})]
    original = _fix_row("original", None, baseline_sweep, baseline_consistency, baseline_consistency, labels)
    if baseline_consistency["grid"] != budget.fix_grid:
        original["worst_case"] = _subgrid_stability(baseline_consistency, budget.fix_grid)
        original["grid"] = int(budget.fix_grid)
    rows = [original]
    aps_model = None
    for title, kwargs in variants:
        converted, replacements = antialias(model, **kwargs)
        converted = converted.eval()
        classifier = Classifier(converted, preprocessing, budget.batch_size, device)
        sweep = diagonal_sweep(classifier, base, classes, protocols=budget.fix_protocols,
                               max_offset=budget.fix_sweep_max, progress=progress, label=f"{title}: ")
        consistency = shift_consistency(classifier, base, seed=seed, pairs_per_image=budget.pairs_per_image,
                                        grid=budget.fix_grid, progress=progress, label=f"{title}: ")
        rows.append(_fix_row(title, replacements, sweep, consistency, baseline_consistency, labels))
        if kwargs.get("circular"):
            aps_model = converted
    result = {"models": rows, "input_size": list(input_size)}
    if aps_model is not None:
        size = input_size if budget.certify_size is None else (budget.certify_size, budget.certify_size)
        result["certify"] = certify_circular(aps_model, preprocessing, size, shifts=budget.certify_shifts)
    return result


def _subgrid_stability(consistency: dict, grid: int) -> dict:
    """Worst-case stability over the first grid x grid shifts of a larger grid, from the saved top-1 classes."""
    from shiftlab import transforms

    full = transforms.shift_grid(consistency["grid"])
    keep = ((full[:, 0] < grid) & (full[:, 1] < grid)).nonzero().squeeze(1)
    top1 = torch.as_tensor(consistency["top1"]["grid"])[:, keep]  # (N, grid * grid)
    stable = (top1 == top1[:, :1]).all(dim=1)
    return _wilson(int(stable.sum()), int(stable.numel()))


def _fix_row(title, replacements, sweep, consistency, baseline, labels) -> dict:
    crop = sweep["protocols"].get("crop", {})
    row = {
        "name": title,
        "replacements": None if replacements is None else sum(not r.after.startswith("kept") for r in replacements),
        "crop_consistency": consistency["crop_consistency"],
        "circular_consistency": consistency["circular_consistency"],
        "worst_case": consistency["worst_case"],
        "grid": consistency["grid"],
        "top1_change": crop.get("top1_change"),
        "mean_abs_change": crop.get("mean_abs_change"),
    }
    ref, top = baseline["top1"], consistency["top1"]
    # agreement with the original on the same views (centre, crop pairs, circular pairs)
    same = [ref["centre"], ref["crop_pairs"], ref["circular_pairs"]]
    new = [top["centre"], top["crop_pairs"], top["circular_pairs"]]
    a = torch.cat([torch.as_tensor(v).flatten() for v in same])
    b = torch.cat([torch.as_tensor(v).flatten() for v in new])
    row["agreement"] = _wilson(int((a == b).sum()), a.numel())
    if labels is not None and bool((labels >= 0).any()):
        known = labels >= 0
        pred = torch.as_tensor(top["centre"])
        row["accuracy"] = _wilson(int((pred[known] == labels[known]).sum()), int(known.sum()))
    return row


def certify_circular(model: torch.nn.Module, preprocessing, input_size, shifts: int = 8) -> dict:
    """Certify the model's invariance to circular shifts (:func:`shiftlab.fix.certify`, float64).

    ``shifts`` shifts of one period of the total stride (always including the odd shift (1, 1)) on a
    random input of ``input_size``, through the model's normalisation.
    """
    from shiftlab.fix.certify import certify

    normalized = torch.nn.Sequential(_Normalize(preprocessing), model)
    return certify(normalized.eval(), tuple(input_size), shifts=shifts, n_inputs=1).to_dict()


class _Normalize(torch.nn.Module):
    def __init__(self, preprocessing):
        super().__init__()
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


# ---------------------------------------------------------------------------------- experiment 5


def other_invariances(classifier: Classifier, base: torch.Tensor, reference_top1: torch.Tensor, *,
                      budget: Budget = DEFAULT_BUDGET, progress: bool = False) -> dict:
    """Experiment 5: top-1 stability and the reference class's probability under rotation, scale, brightness.

    Rotation (degrees, counter-clockwise) and zoom act on the base about its centre before the centre
    window is taken (the corners a rotation uncovers are filled by ``transforms.rotate``); brightness
    multiplies the centre window. Stability = fraction of images whose top-1 equals ``reference_top1``.

    Shape:
        base: (N, 3, S+32, S+32) in [0, 1]; reference_top1: (N,) int64.
    """
    from shiftlab import transforms

    input_size = (base.shape[-2] - MARGIN, base.shape[-1] - MARGIN)
    sweeps = {
        "rotation": ("angle (degrees)", budget.rotations, lambda b, v: _centre(transforms.rotate(b, v), input_size)),
        "scale": ("zoom factor", budget.scales, lambda b, v: _centre(transforms.zoom(b, v), input_size)),
        "brightness": ("brightness factor", budget.brightness,
                       lambda b, v: transforms.adjust_brightness(_centre(b, input_size), v)),
    }
    total = sum(len(v[1]) for v in sweeps.values())
    steps = ((kind, value) for kind, (_, values, _) in sweeps.items() for value in values)
    logits: dict[str, list] = {kind: [] for kind in sweeps}
    for kind, value in track(steps, "rotation, scale, brightness", total=total, enabled=progress):
        logits[kind].append(classifier(sweeps[kind][2](base, value).clamp(0, 1)))
    n = base.shape[0]
    out = {}
    for kind, (unit, values, _) in sweeps.items():
        stability, probability = [], []
        for lg in logits[kind]:
            stability.append(_wilson(int((lg.argmax(-1) == reference_top1).sum()), n))
            probability.append(_mean_ci(_softmax_at(lg, reference_top1)))
        out[kind] = {"unit": unit, "values": [float(v) for v in values], "stability": stability,
                     "probability": probability}
    return out


# ----------------------------------------------------------------------------------------- all


def _class_names(k: int, dataset) -> list[str]:
    if k == 1000:
        try:
            from shiftlab.models import imagenet_class_names

            return list(imagenet_class_names())
        except ImportError:
            pass
    names = list(getattr(dataset, "class_names", None) or [])
    return names if len(names) == k else [f"class {i}" for i in range(k)]


def _labels_for_model(dataset, k: int, class_names: list[str]) -> torch.Tensor:
    """The data set's labels where they index the model's classes; -1 elsewhere."""
    labels = torch.as_tensor(dataset.labels, dtype=torch.int64)
    own = list(dataset.class_names) if dataset.class_names is not None else None
    if own is not None and own != class_names[:len(own)] and len(own) != k:
        return torch.full_like(labels, -1)  # e.g. folder names of a two-class folder vs 1000 ImageNet classes
    return torch.where((labels >= 0) & (labels < k), labels, torch.full_like(labels, -1))


def _strip_private(obj):
    if isinstance(obj, dict):
        return {k: _strip_private(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_strip_private(v) for v in obj]
    return obj


def run_report_experiments(model_spec="pretrained:efficientnet_lite0", data_spec=None, *, quick: bool = False,
                           seed: int = 0, progress: bool = False, device=None, budget: Budget | None = None) -> dict:
    """Run experiments 1-5 on a model and a data set; return the JSON-serialisable results.

    ``model_spec`` is anything :func:`shiftlab.models.load_model` accepts (or a module);
    ``data_spec`` anything :func:`shiftlab.data.load_dataset` accepts (None: the bundled photos).
    The numbers depend only on the model, the data, the budget and ``seed``; timings are kept apart
    under ``"run"``.
    """
    from shiftlab._version import __version__
    from shiftlab.data import load_dataset
    from shiftlab.models import load_model
    from shiftlab.models import preprocessing as get_preprocessing

    started = time.perf_counter()
    budget = budget or (QUICK_BUDGET if quick else DEFAULT_BUDGET)
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 2)
        return now

    t = time.perf_counter()
    model = load_model(model_spec, device=device).eval()
    pre = get_preprocessing(model)
    input_size = tuple(int(v) for v in pre.input_size[-2:])
    if input_size[0] != input_size[1]:
        raise InputError(f"the report needs a square model input, got {input_size[0]}x{input_size[1]}")
    dataset = load_dataset(data_spec, image_size=input_size[0] + MARGIN, limit=budget.max_images, upscale=True,
                           interpolation=pre.interpolation)
    n = len(dataset)
    names = [str(v) for v in dataset.names]
    base = prepare_images(dataset.images, input_size)
    t = lap("load", t)

    classifier = Classifier(model, pre, budget.batch_size, device)
    centre_logits = classifier(_centre(base, input_size))
    k = centre_logits.shape[-1]
    class_names = _class_names(k, dataset)
    labels = _labels_for_model(dataset, k, class_names)
    reference = centre_logits.argmax(-1)
    classes = torch.where(labels >= 0, labels, reference)  # the class whose probability is tracked

    probs = torch.softmax(centre_logits.double(), -1)
    top5 = probs.topk(min(5, k), -1)
    # the whole square base resized to the input size (no crop), as many pretrained-model examples do
    whole = torch.nn.functional.interpolate(base, size=input_size, mode=pre.interpolation, antialias=True,
                                            align_corners=False).clamp(0, 1)
    whole_probs = torch.softmax(classifier(whole).double(), -1)
    whole_top1 = whole_probs.argmax(-1)
    predictions = []
    for i in range(n):
        predictions.append({
            "image": names[i],
            "top1": int(reference[i]),
            "top1_name": class_names[int(reference[i])],
            "probability": float(probs[i, reference[i]]),
            "whole_top1": int(whole_top1[i]),
            "whole_top1_name": class_names[int(whole_top1[i])],
            "whole_probability": float(whole_probs[i, whole_top1[i]]),
            "label": int(labels[i]),
            "label_name": class_names[int(labels[i])] if labels[i] >= 0 else None,
            "top5": [[int(c), class_names[int(c)], float(p)] for p, c in zip(top5.values[i], top5.indices[i])],
        })
    known = labels >= 0
    accuracy = _wilson(int((reference[known] == labels[known]).sum()), int(known.sum())) if bool(known.any()) else None
    t = lap("predictions", t)

    # the canvas protocols shrink the photo by 32 px: only for inputs of at least 64 px
    protocols = PROTOCOLS if input_size[0] >= 2 * MARGIN else ("crop",)
    sweep = diagonal_sweep(classifier, base, classes, protocols=protocols, step=budget.sweep_step, progress=progress)
    t = lap("jaggedness", t)
    consistency = shift_consistency(classifier, base, seed=seed, pairs_per_image=budget.pairs_per_image,
                                    grid=budget.grid, progress=progress)
    t = lap("consistency", t)

    from shiftlab.measure.inspect import inspect

    findings = inspect(model, input_size)
    profile = layer_profile(model, pre, base, findings=findings, progress=progress, device=device)
    profile["aliasing_map"] = findings.to_dict()
    t = lap("layer_profile", t)

    fixes = fix_comparison(model, pre, base, classes, baseline_sweep=sweep, baseline_consistency=consistency,
                           labels=labels, seed=seed, budget=budget, progress=progress, device=device)
    t = lap("fixes", t)
    invariances = other_invariances(classifier, base, reference, budget=budget, progress=progress)
    t = lap("invariances", t)

    model_name = type(model).__name__
    results = {
        "schema": "shiftlab-report/1",
        "shiftlab_version": __version__,
        "settings": {
            "model": model_spec if isinstance(model_spec, str) else type(model_spec).__name__,
            "data": "photos" if data_spec is None else str(data_spec),
            "quick": bool(quick),
            "seed": int(seed),
            "budget": {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in asdict(budget).items()},
        },
        "model": {"name": model_name, "parameters": int(sum(p.numel() for p in model.parameters())),
                  "input_size": list(input_size), "classes": int(k)},
        "data": {"n_images": int(n), "source": str(dataset.source), "names": names,
                 "skipped": [[str(p), str(r)] for p, r in getattr(dataset, "skipped", [])],
                 "labelled": int(known.sum())},
        "predictions": predictions,
        "accuracy": accuracy,
        "jaggedness": sweep,
        "shift_consistency": consistency,
        "layer_profile": profile,
        "fixes": fixes,
        "invariances": invariances,
    }
    results = _strip_private(results)
    results["run"] = {"seconds": round(time.perf_counter() - started, 1), "steps": timings,
                      "threads": torch.get_num_threads(), "device": str(classifier.device)}
    return results
