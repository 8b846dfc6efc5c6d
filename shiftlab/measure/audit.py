"""Audit any model: the shift metrics of its outputs and, optionally, the equivariance error of its layers.

This is shiftlab's one measurement engine: ``shiftlab audit``, the report, the experiments and fine-tuning all
call :func:`audit` and render what it returns. :func:`audit` is a recipe of four stages, each a module with one
job: *prepare* (:mod:`~shiftlab.measure.prepare`: every check and decision before the first batch, one probe
forward pass included, as one ``Prepared`` value), *engine* (:mod:`~shiftlab.measure.engine`: which copies go
through the model together, the forward passes, the run over the loader's batches with its checkpoint),
*statistics* (:mod:`~shiftlab.measure.statistics`: per-image rows and their reduction to metrics with
intervals), *result* (:mod:`~shiftlab.measure.result`: :class:`AuditResult`, its JSON, merging shards).

>>> import torch, shiftlab
>>> model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # class = brightest channel
>>> images = torch.rand(6, 3, 16, 16)                       # pixel space, [0, 1]
>>> result = shiftlab.audit(model, images, transform="circular:4", normalize=False)
>>> result.metrics["consistency"].value, result.warnings
(1.0, [])

How it works. The images stream through a ``torch.utils.data.DataLoader`` (:mod:`shiftlab.measure.loader`):
workers decode each image and size it for the protocol (shorter side resized, centre crop). The protocol
(``transform=``) makes K copies of each image on the model's device; the copies are normalised and go through
the model under ``torch.inference_mode``, at most ``batch_size`` inputs per forward pass (copies of several
images packed into full passes; with layer errors, the copies of an image together). Only per-image
statistics leave a batch (integer successes, float64 values, tagged with the image's index); no image or
feature map outlives its batch, and the statistics are kept outside the allocator's heap, so memory does
not grow with the data set. Layer errors are computed inside forward hooks.

Final values reduce the per-image statistics in index order (``math.fsum``), so any split of the work gives
the unsplit result exactly: shards (``audit(indices=A).merge(audit(indices=B)) == audit(indices=A + B)``),
the processes of a ``torchrun`` launch (each takes the batches ``b % world_size == rank``; the statistics are
gathered with torch.distributed), and a run resumed from ``checkpoint=`` after a kill. Exact equality needs
the model to give an image the same outputs in either run: the same batches (guaranteed within one run's
layout) and the same number of intra-op threads.

Intervals are image-level: trials that come from one image are not treated as independent
(:mod:`shiftlab.measure.metrics`). Every metric gives ``n`` (trials) and ``images``.

Guards. A result carries ``warnings``: the model's weights are random (``timm:``/``torchvision:`` without
weights), or its predictions are (nearly) constant over the data, in which case consistency, stability and
P(top-1 change) are good by construction; those metrics are then flagged. The clean input of the first image
goes through the model (and the reference) twice: a nondeterministic model (dropout left on, noise in
``forward``) is flagged too, since its randomness mixes with the shift's effect. Accuracy is computed only where the
data's labels live in the model's label space (:mod:`shiftlab.measure.labels`); otherwise ``omitted`` says why.

Layer errors. For each selected layer with a 4-D output whose size divides the input size, the stride
s = input size / map size. For each copy pair (i, j) of the protocol (``Protocol.layer_pairs``) with
relative content shift d, when s divides d the hook accumulates ``||phi(x_j) - T'_{d/s} phi(x_i)||^2``
and ``||T'_{d/s} phi(x_i)||^2``: T' is a circular shift for circular protocols (whole map compared), and
for the other protocols only positions ``ceil(margin / s)`` feature pixels inside the border, before and
after the shift, are compared. Pairs with d not a multiple of s are counted as ``unrepresentable``. The
invariance error of the spatially averaged features (``pooled_invariance``) is computed for every pair.
"""


from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from shiftlab.measure import distributed, engine
from shiftlab.measure.inputs import IMAGE_SIZE_ARG, MIN_IMAGE_SIDE, SIZE_SAMPLE
from shiftlab.measure.prepare import DEFAULT_MARGIN, LAYER_SETS, MARGIN_SHARE, AuditOptions, prepare, stage_layers
from shiftlab.measure.protocols import Protocol
from shiftlab.measure.result import (
    CONSTANT_SHARE,
    METRIC_NAMES,
    NONDETERMINISM_RTOL,
    SCHEMA_VERSION,
    AuditResult,
    build_result,
    format_value,
    merge,
)

__all__ = ["audit", "AuditResult", "merge", "SCHEMA_VERSION", "METRIC_NAMES", "LAYER_SETS", "stage_layers",
           "format_value", "IMAGE_SIZE_ARG", "DEFAULT_MARGIN", "MARGIN_SHARE", "MIN_IMAGE_SIDE", "SIZE_SAMPLE",
           "CONSTANT_SHARE", "NONDETERMINISM_RTOL"]


def audit(model, data, transform: Protocol | str | None = None, metrics: Sequence[str] | str | None = None,
          batch_size: int = 32, device: str | torch.device | None = None, layers=None, *,
          output_key=None, seed: int = 0, indices: Sequence[int] | None = None, margin: int | None = None,
          normalize: bool | Callable = True, image_size: int | tuple[int, int] | None = None,
          preprocessing=None, resize: bool | None = None, confidence: float = 0.95,
          progress: bool | str = False, workers: int | None = None, class_map: dict | None = None,
          reference=None, predictions: bool = False, checkpoint=None, checkpoint_every: int = 20,
          amp: bool = False, channels_last: bool | None = None, command: str | None = None,
          maps: int = 0) -> AuditResult:
    """Measure how ``model`` responds to the shifts (or rotations, ...) of a protocol, on ``data``.

    Args:
        model: an ``nn.Module`` or a model spec for :func:`shiftlab.load_model` (``"torchvision:resnet18"``;
            its random initialisation follows ``seed``). Put in eval mode during the audit (and restored
            after); moved to ``device`` if given.
        data: images in pixel space [0, 1]: a data spec (``"photos"``, a folder, a ``.txt`` list, a ``.npz``,
            a CIFAR-10 folder; see :func:`shiftlab.data.open_images`), an
            :class:`~shiftlab.data.sources.ImageSource`, a (N, C, H, W) tensor, a list of (C, H, W)
            tensors, a tuple ``(images, labels)``, an in-memory
            :class:`~shiftlab.data.ImageDataset`, or any map-style ``Dataset`` of (C, H, W) tensors or
            (tensor, label) pairs. Labels ``-1`` mean "unlabelled".
        transform: a protocol from :mod:`shiftlab.measure.protocols` or its spec string (``"circular:32"``,
            ``"crop:224:32"``, ``"diagonal:8"``, ...). Default: ``circular:32`` (``circular:3`` below 64 px).
        metrics: names to compute; default: the protocol's defaults (accuracy where the labels fit the
            model). Dense outputs (B, K, H, W) get ``["equivariance", "massc"]`` (mean segmentation shift
            consistency), plus ``"miou"`` when the data is a :class:`~shiftlab.data.masks.MaskedImages`, whose
            masks move with their images (:mod:`shiftlab.measure.dense`).
        batch_size: model inputs per forward pass, copies included. Without layer errors the K copies of
            ``batch_size / gcd(batch_size, K)`` images are packed into full passes; with them (or a dense
            output) the copies of an image go through together, split into groups of whole compared pairs
            when K > ``batch_size``.
        layers: layer names, a module type (or tuple of types), ``"all"`` (every leaf module) or
            ``"stages"`` (:func:`stage_layers`): adds per-layer equivariance and pooled-invariance errors.
        output_key: which element of a tuple/dict model output is scored. Without it, a tuple of several
            outputs (e.g. ``(features, logits)``) is refused, listing them (:func:`shiftlab.models.select_output`).
        seed: random offsets depend only on (seed, dataset index); also seeds a spec model's initialisation.
        indices: audit only these dataset indices (a shard); merge shards with :func:`merge`.
        margin: input pixels left out at the border when comparing layers under non-circular protocols
            (default 16, at most an eighth of the input's shorter side; ignored for circular protocols). With
            ``layers``, a margin of half the input or more is refused.
        normalize: ``True``: the model's preprocessing; ``False``: none; or a callable on (B, C, H, W).
        image_size: the model's input size (int or (H, W)). Default: the protocol's own size (``crop:S:M``),
            else the model's (timm ``pretrained_cfg``, torchvision weight metadata); for a model that declares
            none, the median size of the first 64 readable image files (never the first image alone; files
            under 8 px are skipped and counted), or the tensors' common size. At most 4096 px.
        preprocessing: a :class:`~shiftlab.models.Preprocessing`, or a dict overriding ``mean``, ``std``,
            ``interpolation``, ``crop_pct``, ``input_size`` of the model's own. The values used are recorded.
        resize: resize each image (shorter side to the preprocessing's resize size scaled to the input, e.g.
            256 for 224, then centre crop). Default: on for data read from files (smaller images are enlarged
            and counted in ``upscaled``); for tensors only when their sizes differ (otherwise they are
            centre-cropped and must be large enough).
        confidence: the level of every interval.
        progress: show a progress bar on stderr (a string names the stage).
        workers: DataLoader worker processes (default: :func:`~shiftlab.measure.loader.default_workers`).
        class_map: ``{data class name or label: model class index}`` (see :mod:`shiftlab.measure.labels`).
        reference: a second model (module or spec) run on the very same views, or an earlier
            :class:`AuditResult` of the same protocol, seed and data made with ``predictions=True``: adds
            ``reference_agreement``, P(the model's top-1 equals the reference's on the same view). The reference
            must give class scores (B, K) with the model's number of classes; otherwise it is refused.
        predictions: also keep every view's top-1, the tracked class's probability and copy 0's top-5.
        checkpoint: a folder: write this process's partial statistics there every ``checkpoint_every``
            batches (atomically), and resume from it when it holds a checkpoint of the same audit.
        amp: mixed precision on CUDA (``torch.autocast``, float16); metrics are computed in float64.
        channels_last: run the model in channels-last memory format (default: on, except for float64 models and
            for models with shiftlab's own layers (converted models), which run faster in the contiguous format).
        command: the command line to record in ``reproducibility``.
        maps: dense outputs: keep the per-pixel disagreement map of the first compared pair and copy 0's top-1
            map of the first ``maps`` images (at most 16): :meth:`AuditResult.dense_maps`, ``"maps"`` in the JSON.

    Returns:
        an :class:`AuditResult` (the full result on every process of a distributed run).

    Shape:
        Input: images (N, C, H, W) or (C, H, W) each; model output (B, K) or (B, K', H', W').
    """
    options = AuditOptions(batch_size=batch_size, seed=seed, margin=margin, checkpoint_every=checkpoint_every,
                           workers=workers, confidence=confidence, amp=amp, predictions=predictions,
                           class_map=class_map, maps=maps)
    world = distributed.world()
    prepared = prepare(model, data, options, world, transform=transform, metrics=metrics, device=device,
                       layers=layers, output_key=output_key, indices=indices, normalize=normalize,
                       image_size=image_size, preprocessing=preprocessing, resize=resize, reference=reference,
                       channels_last=channels_last)
    state, workers = engine.run(prepared, world, checkpoint=checkpoint, progress=progress)
    return build_result(prepared, state, world, workers, command)

