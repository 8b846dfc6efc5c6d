"""The classic experiments on translation equivariance and invariance, as exact code.

This module turns the experiments of the article "Translation Invariance & Equivariance in
Convolutional Neural Networks" (``/work/shared/seeds/002``) into tested functions:

* :func:`convolve`: the article's edge detector, a *valid* 2-D cross-correlation (no padding, no
  kernel flip) followed by ReLU, vectorised over pixels and batches.
* :func:`sobel_kernel`: the article's 3x3 vertical-edge kernel ``[[-1, 0, 1]] * 3`` and its transpose.
* :func:`max_pool` / :func:`pool_iterations`: non-overlapping max pooling that drops a remainder
  row/column (10x10 -> 5x5 -> 2x2 -> 1x1), and its repetition.
* :func:`pixel_experiment`, :func:`edge_experiment`, :func:`pooling_experiment`,
  :func:`tandem_experiment`: the article's experiments, returning dataclasses whose ``to_dict()`` holds
  plain, JSON-serialisable numbers (the maps themselves stay on the object, for plotting).

Translation in the photo experiments is a circular shift (``np.roll`` semantics: content moves down
by ``dy`` and right by ``dx``; what leaves one side re-enters on the other). It is an exact group
action, so the identity "edges of the shifted photo = shifted edges" holds *exactly* (bit for bit in
float64) at every output pixel whose 3x3 window does not straddle the wrap-around seam; the experiment
reports the error there and, separately, on the seam.

Mirroring is a left-right flip. For the article's kernel ``k`` (antisymmetric: ``k[:, ::-1] = -k``) the
raw response of the mirrored photo is minus the mirrored raw response, at the same output grid:
``R(x[:, ::-1]) = -R(x)[:, ::-1]``. Under ReLU this means the mirrored photo keeps the *other* edges:
``relu(R(x_m)) = relu(-R(x))[:, ::-1]`` (bright-to-dark instead of dark-to-bright), while the magnitude
is the mirrored magnitude, ``|R(x_m)| = |R(x)|[:, ::-1]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from shiftlab.errors import InputError, ShapeError

__all__ = [
    "convolve",
    "sobel_kernel",
    "max_pool",
    "pool_iterations",
    "pixel_experiment",
    "edge_experiment",
    "pooling_experiment",
    "tandem_experiment",
    "PixelExperiment",
    "EdgeExperiment",
    "PoolingExperiment",
    "TandemExperiment",
]

DEFAULT_PHOTO = "camera"


# ----------------------------------------------------------------------------------------------
# The operations
# ----------------------------------------------------------------------------------------------


def _check_image(image, name: str = "image"):
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise ShapeError(f"{name} must be a numpy array or a torch tensor, got {type(image).__name__}")
    if image.ndim not in (2, 4):
        raise ShapeError(f"{name} must have shape (H, W) or (B, C, H, W), got {tuple(image.shape)}")
    if isinstance(image, np.ndarray):
        if image.dtype.kind not in "biuf":
            raise ShapeError(f"{name} must hold real numbers, got dtype {image.dtype}")
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise ShapeError(f"{name} contains NaN or Inf")
    else:
        if image.is_complex():
            raise ShapeError(f"{name} must hold real numbers, got dtype {image.dtype}")
        if image.is_floating_point() and not bool(torch.isfinite(image).all()):
            raise ShapeError(f"{name} contains NaN or Inf")
    return image


def _as_kernel(kernel, like):
    """The kernel as a 2-D array/tensor of the image's float dtype (and device)."""
    if isinstance(kernel, torch.Tensor) and isinstance(like, torch.Tensor):
        k = kernel.to(dtype=like.dtype, device=like.device)
    elif isinstance(like, torch.Tensor):
        k = torch.as_tensor(np.asarray(kernel, dtype=np.float64), dtype=like.dtype, device=like.device)
    else:
        if isinstance(kernel, torch.Tensor):
            kernel = kernel.detach().cpu().numpy()
        try:
            k = np.asarray(kernel, dtype=like.dtype)
        except (TypeError, ValueError):
            raise ShapeError("kernel must be a 2-D array of numbers") from None
    if k.ndim != 2 or k.shape[0] == 0 or k.shape[1] == 0:
        raise ShapeError(f"kernel must be a non-empty 2-D array (kh, kw), got shape {tuple(k.shape)}")
    finite = bool(torch.isfinite(k).all()) if isinstance(k, torch.Tensor) else bool(np.isfinite(k).all())
    if not finite:
        raise ShapeError("kernel contains NaN or Inf")
    return k


def convolve(image, kernel, relu: bool = True):
    """Valid 2-D cross-correlation of ``image`` with ``kernel``, followed by ReLU (the article's ``convolve``).

    ``out[..., i, j] = sum_{a, b} kernel[a, b] * image[..., i + a, j + b]`` for every window that fits
    inside the image (no padding, no kernel flip: what deep-learning libraries call convolution), then
    ``max(out, 0)`` when ``relu``. A batched input gets the same single-channel kernel in every channel
    (a depthwise convolution). The sum runs over the kernel taps, each a whole-image slice, so there is
    no Python loop over pixels; numpy in gives numpy out, torch in gives torch out (autograd works).
    Integer numpy images are converted to float64; torch images must already be floating.

    Args:
        image: (H, W) or (B, C, H, W) numpy array or torch tensor.
        kernel: (kh, kw) array-like, e.g. :func:`sobel_kernel`.
        relu: apply ReLU after the correlation, as the article does.

    Shape:
        - Input: (H, W) or (B, C, H, W); kernel (kh, kw) with kh <= H, kw <= W.
        - Output: (H - kh + 1, W - kw + 1) or (B, C, H - kh + 1, W - kw + 1).

    Example:
        >>> import numpy as np
        >>> image = np.zeros((4, 5)); image[:, 2:] = 1.0       # a dark-to-bright vertical edge
        >>> convolve(image, sobel_kernel("vertical"))
        array([[3., 3., 0.],
               [3., 3., 0.]])
    """
    _check_image(image)
    if isinstance(image, torch.Tensor):
        if not image.is_floating_point():
            raise ShapeError(f"image must be a floating tensor, got {image.dtype}")
    elif image.dtype.kind != "f":
        image = image.astype(np.float64)
    k = _as_kernel(kernel, image)
    kh, kw = int(k.shape[0]), int(k.shape[1])
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if kh > height or kw > width:
        raise ShapeError(f"kernel {kh}x{kw} is larger than the image {height}x{width}")
    out_h, out_w = height - kh + 1, width - kw + 1
    out = None
    for a in range(kh):  # loop over the kernel's taps; each term covers every output pixel at once
        for b in range(kw):
            term = k[a, b] * image[..., a : a + out_h, b : b + out_w]
            out = term if out is None else out + term
    if relu:
        out = torch.relu(out) if isinstance(out, torch.Tensor) else np.maximum(out, 0.0)
    return out


def sobel_kernel(direction: str = "vertical", dtype=np.float64) -> np.ndarray:
    """The article's 3x3 edge kernel: ``[[-1, 0, 1]] * 3`` for vertical edges, its transpose for horizontal.

    The vertical kernel responds positively where brightness increases from left to right. (Strictly
    this is the Prewitt kernel; the textbook Sobel kernel weights the middle row by 2. The article calls
    it Sobel, and these are its numbers.)

    Shape:
        - Output: (3, 3).
    """
    base = np.array([[-1.0, 0.0, 1.0]] * 3, dtype=dtype)
    if direction == "vertical":
        return base
    if direction == "horizontal":
        return np.ascontiguousarray(base.T)
    raise InputError(f"unknown edge direction {direction!r}; use 'vertical' or 'horizontal'")


def max_pool(image, kernel_size: int = 2):
    """Non-overlapping max pooling that drops a remainder row/column (the article's ``max_pool``).

    Each output pixel is the maximum of one ``kernel_size`` x ``kernel_size`` block; a last row or
    column that does not fill a block is dropped, so a 10x10 map becomes 5x5, then 2x2, then 1x1
    (the same as ``torch.nn.functional.max_pool2d(x, k)``). numpy in gives numpy out, torch gives torch.

    Shape:
        - Input: (H, W) or (B, C, H, W) with H, W >= kernel_size.
        - Output: (H // k, W // k) or (B, C, H // k, W // k).
    """
    _check_image(image)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1:
        raise InputError(f"kernel_size must be a positive integer, got {kernel_size!r}")
    k = int(kernel_size)
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if height < k or width < k:
        raise ShapeError(f"cannot max-pool a {height}x{width} map with a {k}x{k} kernel")
    out_h, out_w = height // k, width // k
    lead = tuple(image.shape[:-2])
    blocks = image[..., : out_h * k, : out_w * k].reshape(*lead, out_h, k, out_w, k)
    if isinstance(blocks, torch.Tensor):
        return blocks.amax(dim=(-3, -1))
    return blocks.max(axis=(-3, -1))


def pool_iterations(image, n: int, kernel_size: int = 2) -> list:
    """``[image, max_pool(image), max_pool(max_pool(image)), ...]``: the ``n + 1`` maps of ``n`` poolings.

    Shape:
        - Input: (H, W) or (B, C, H, W) with H, W >= kernel_size ** n.
        - Output: a list of n + 1 maps; map t has shape (..., H_t, W_t) with H_t = H_{t-1} // kernel_size.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"the number of pooling iterations must be a non-negative integer, got {n!r}")
    _check_image(image)
    maps = [image]
    for _ in range(int(n)):
        maps.append(max_pool(maps[-1], kernel_size))
    return maps


# ----------------------------------------------------------------------------------------------
# The pixel experiment
# ----------------------------------------------------------------------------------------------


def _bright_position(m: np.ndarray):
    """(row, col) of the unique maximum of a map, or None if the map is all zero (the pixel was dropped)."""
    if m.max() <= 0:
        return None
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    return (int(r), int(c))


@dataclass(frozen=True)
class PixelExperiment:
    """Two images with one bright pixel each, pooled ``iterations`` times.

    ``positions[i][t]`` is the (row, col) of image i's bright pixel after t poolings (None if a dropped
    remainder row/column swallowed it); ``distances[t]`` is the per-axis distance (rows, cols) between
    the two. ``maps[i][t]`` are the maps themselves (not in ``to_dict``).
    """

    size: int
    kernel_size: int
    pixels: tuple[tuple[int, int], ...]
    shapes: tuple[tuple[int, int], ...]
    positions: tuple[tuple[tuple[int, int] | None, ...], ...]
    distances: tuple[tuple[int, int] | None, ...]
    maps: tuple[tuple[np.ndarray, ...], ...] = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "kernel_size": self.kernel_size,
            "pixels": [list(p) for p in self.pixels],
            "shapes": [list(s) for s in self.shapes],
            "positions": [[None if p is None else list(p) for p in row] for row in self.positions],
            "distances": [None if d is None else list(d) for d in self.distances],
        }


def pixel_experiment(
    size: int = 10,
    pixels=((2, 2), (-3, -3)),
    iterations: int = 3,
    kernel_size: int = 2,
) -> PixelExperiment:
    """The article's pixel experiment: a bright pixel at [2, 2] and at [-3, -3] of two 10x10 zero images.

    After each of ``iterations`` max poolings, record where each bright pixel is and how far apart the
    two are per axis. With the defaults the pixels sit at [0, 0] and [1, 1] after two poolings, and the
    per-axis distance goes 5, 2, 1, 0. Negative pixel indices count from the end, as in numpy.

    Shape:
        - Each image: (size, size); map t: (size // k**t, size // k**t).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    if kernel_size ** iterations > size:
        raise InputError(f"{iterations} poolings with kernel {kernel_size} do not fit in a {size}x{size} image")
    normalised = []
    for p in pixels:
        r, c = (int(v) for v in p)
        if not (-size <= r < size and -size <= c < size):
            raise InputError(f"pixel {tuple(p)} is outside a {size}x{size} image")
        normalised.append((r % size, c % size))
    maps = []
    for r, c in normalised:
        image = np.zeros((size, size))
        image[r, c] = 1.0
        maps.append(tuple(pool_iterations(image, iterations, kernel_size)))
    positions = tuple(tuple(_bright_position(m) for m in image_maps) for image_maps in maps)
    distances = []
    for t in range(iterations + 1):
        pa, pb = positions[0][t], positions[-1][t]
        distances.append(None if pa is None or pb is None else (abs(pa[0] - pb[0]), abs(pa[1] - pb[1])))
    return PixelExperiment(
        size=int(size),
        kernel_size=int(kernel_size),
        pixels=tuple(normalised),
        shapes=tuple(tuple(int(s) for s in m.shape) for m in maps[0]),
        positions=positions,
        distances=tuple(distances),
        maps=tuple(maps),
    )


# ----------------------------------------------------------------------------------------------
# The photo experiments
# ----------------------------------------------------------------------------------------------


def _photo(image) -> tuple[np.ndarray, str]:
    """A grayscale float64 photo and its name: None -> the bundled default, a path, or a 2-D array."""
    from shiftlab.data.images import bundled_photo, load_image

    if image is None:
        return bundled_photo(DEFAULT_PHOTO, mode="L"), f"bundled:{DEFAULT_PHOTO}"
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, mode="L"), os.fspath(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 2:
            raise ShapeError(f"photo must be a grayscale (H, W) array, got shape {tuple(image.shape)}")
        _check_image(image, "photo")
        return image.astype(np.float64), "array"
    raise InputError(f"photo must be None, a file path or an (H, W) array, got {type(image).__name__}")


def _check_shift(shift, height: int, width: int) -> tuple[int, int]:
    try:
        dy, dx = (int(v) for v in shift)
    except (TypeError, ValueError):
        raise InputError(f"shift must be a pair of integers (dy, dx), got {shift!r}") from None
    if abs(dy) >= height - 2 or abs(dx) >= width - 2:
        raise InputError(f"shift {(dy, dx)} is too large for a {height}x{width} photo")
    return dy, dx


def _unwrapped_mask(out_shape: tuple[int, int], dy: int, dx: int) -> np.ndarray:
    """Output pixels of a valid correlation of a rolled image whose windows do not straddle the seam.

    For the image rolled by (dy, dx), the window at output (i, j) reads un-rolled rows i - dy .. i - dy +
    kh - 1, which are contiguous iff 0 <= i - dy <= H - kh = out_h - 1; there it equals the window at
    output (i - dy, j - dx) of the original, i.e. the rolled output. Elsewhere it wraps.
    """
    out_h, out_w = out_shape
    rows = np.arange(out_h) - dy
    cols = np.arange(out_w) - dx
    return ((rows >= 0) & (rows < out_h))[:, None] & ((cols >= 0) & (cols < out_w))[None, :]


@dataclass(frozen=True)
class EdgeExperiment:
    """Vertical-edge maps of a photo, of its circularly shifted copy and of its mirror, and the identities.

    Translation (``edges`` are ReLU'd as in the article; ReLU commutes with shifting):
        ``translation_interior_max_abs``: max |E(roll(x)) - roll(E(x))| away from the wrap-around seam
        (exactly 0.0: the same products summed in the same order); ``translation_seam_max_abs`` on the seam.
    Mirroring (``x_m = x[:, ::-1]``, ``R`` = raw response without ReLU):
        ``mirror_raw_max_abs``: max |R(x_m) + R(x)[:, ::-1]| (sign flip; rounding only),
        ``mirror_magnitude_max_abs``: max ||R(x_m)| - |R(x)|[:, ::-1]|,
        ``mirror_relu_max_abs``: max |relu(R(x_m)) - relu(-R(x))[:, ::-1]| (ReLU keeps the other edges),
        ``mirror_relu_same_edges_max_abs``: max |relu(R(x_m)) - relu(R(x))[:, ::-1]|, the naive claim
        "the same edges are detected" (large: the negative control),
        ``mirror_relu_same_edges_correlation``: correlation of those two maps.
    """

    source: str
    kernel: tuple[tuple[float, ...], ...]
    shift: tuple[int, int]
    photo_shape: tuple[int, int]
    edge_shape: tuple[int, int]
    scale: float
    translation_interior_max_abs: float
    translation_interior_pixels: int
    translation_seam_max_abs: float
    translation_seam_pixels: int
    mirror_raw_max_abs: float
    mirror_magnitude_max_abs: float
    mirror_relu_max_abs: float
    mirror_relu_same_edges_max_abs: float
    mirror_relu_same_edges_correlation: float | None
    positive_fraction: float
    photo: np.ndarray = field(repr=False, compare=False)
    translated: np.ndarray = field(repr=False, compare=False)
    mirrored: np.ndarray = field(repr=False, compare=False)
    edges: np.ndarray = field(repr=False, compare=False)
    edges_translated: np.ndarray = field(repr=False, compare=False)
    edges_mirrored: np.ndarray = field(repr=False, compare=False)
    raw: np.ndarray = field(repr=False, compare=False)
    raw_mirrored: np.ndarray = field(repr=False, compare=False)
    interior: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        keys = ("source", "shift", "photo_shape", "edge_shape", "scale", "translation_interior_max_abs",
                "translation_interior_pixels", "translation_seam_max_abs", "translation_seam_pixels",
                "mirror_raw_max_abs", "mirror_magnitude_max_abs", "mirror_relu_max_abs",
                "mirror_relu_same_edges_max_abs", "mirror_relu_same_edges_correlation", "positive_fraction")
        out = {"kernel": [list(row) for row in self.kernel]}
        for key in keys:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def _max_abs(a: np.ndarray) -> float:
    return float(np.abs(a).max()) if a.size else 0.0


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two maps of the same shape; None when either is constant."""
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if denom == 0.0:
        return None
    return float((a * b).sum() / denom)


def edge_experiment(image=None, shift=(17, 64), kernel=None) -> EdgeExperiment:
    """Vertical edges of a photo, of its translated copy and of its mirror (the article's first experiment).

    Args:
        image: None for the bundled photo (scikit-image's "camera"), a path to any PIL-readable image
            (converted to grayscale), or an (H, W) array.
        shift: (dy, dx) circular shift of the translated copy (content moves down/right).
        kernel: the edge kernel; default :func:`sobel_kernel` ("vertical"). The mirror identities need an
            antisymmetric kernel (``k[:, ::-1] == -k``).

    Shape:
        - Photo: (H, W); edge maps: (H - kh + 1, W - kw + 1).
    """
    photo, source = _photo(image)
    k = sobel_kernel("vertical") if kernel is None else np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] > photo.shape[0] or k.shape[1] > photo.shape[1]:
        raise ShapeError(f"kernel of shape {k.shape} does not fit the {photo.shape} photo")
    dy, dx = _check_shift(shift, *photo.shape)
    translated = np.roll(photo, (dy, dx), axis=(0, 1))
    mirrored = np.ascontiguousarray(photo[:, ::-1])

    raw = convolve(photo, k, relu=False)
    raw_translated = convolve(translated, k, relu=False)
    raw_mirrored = convolve(mirrored, k, relu=False)
    edges, edges_translated, edges_mirrored = (np.maximum(r, 0.0) for r in (raw, raw_translated, raw_mirrored))

    interior = _unwrapped_mask(edges.shape, dy, dx)
    shifted_edges = np.roll(edges, (dy, dx), axis=(0, 1))
    difference = edges_translated - shifted_edges
    mirror_raw = raw[:, ::-1]
    return EdgeExperiment(
        source=source,
        kernel=tuple(tuple(float(v) for v in row) for row in k),
        shift=(dy, dx),
        photo_shape=tuple(int(s) for s in photo.shape),
        edge_shape=tuple(int(s) for s in edges.shape),
        scale=_max_abs(raw),
        translation_interior_max_abs=_max_abs(difference[interior]),
        translation_interior_pixels=int(interior.sum()),
        translation_seam_max_abs=_max_abs(difference[~interior]),
        translation_seam_pixels=int((~interior).sum()),
        mirror_raw_max_abs=_max_abs(raw_mirrored + mirror_raw),
        mirror_magnitude_max_abs=_max_abs(np.abs(raw_mirrored) - np.abs(mirror_raw)),
        mirror_relu_max_abs=_max_abs(edges_mirrored - np.maximum(-mirror_raw, 0.0)),
        mirror_relu_same_edges_max_abs=_max_abs(edges_mirrored - np.maximum(mirror_raw, 0.0)),
        mirror_relu_same_edges_correlation=_correlation(edges_mirrored, np.maximum(mirror_raw, 0.0)),
        positive_fraction=float((raw > 0).mean()),
        photo=photo,
        translated=translated,
        mirrored=mirrored,
        edges=edges,
        edges_translated=edges_translated,
        edges_mirrored=edges_mirrored,
        raw=raw,
        raw_mirrored=raw_mirrored,
        interior=interior,
    )


@dataclass(frozen=True)
class PoolingExperiment:
    """The vertical-edge map of a photo through ``iterations`` max poolings (one map per iteration)."""

    source: str
    kernel_size: int
    shapes: tuple[tuple[int, int], ...]
    maxima: tuple[float, ...]
    means: tuple[float, ...]
    maps: tuple[np.ndarray, ...] = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "kernel_size": self.kernel_size,
            "shapes": [list(s) for s in self.shapes],
            "maxima": list(self.maxima),
            "means": list(self.means),
        }


def _check_iterations(iterations, kernel_size, shape) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise InputError(f"iterations must be a non-negative integer, got {iterations!r}")
    if kernel_size ** iterations > min(shape):
        raise InputError(f"{iterations} poolings with kernel {kernel_size} do not fit a {shape[0]}x{shape[1]} map")


def pooling_experiment(image=None, iterations: int = 6, kernel_size: int = 2) -> PoolingExperiment:
    """Vertical edges of a photo pushed through ``iterations`` max poolings (the article's reference image).

    Shape:
        - Photo: (H, W); map t: (H_t, W_t) with H_0 = H - 2 and H_t = H_{t-1} // kernel_size.
    """
    photo, source = _photo(image)
    edges = convolve(photo, sobel_kernel("vertical"))
    _check_iterations(iterations, kernel_size, edges.shape)
    maps = tuple(pool_iterations(edges, iterations, kernel_size))
    return PoolingExperiment(
        source=source,
        kernel_size=int(kernel_size),
        shapes=tuple(tuple(int(s) for s in m.shape) for m in maps),
        maxima=tuple(float(m.max()) for m in maps),
        means=tuple(float(m.mean()) for m in maps),
        maps=maps,
    )


def _centroid(m: np.ndarray) -> tuple[float, float] | None:
    total = float(m.sum())
    if total <= 0.0:
        return None
    rows = np.arange(m.shape[0], dtype=np.float64)
    cols = np.arange(m.shape[1], dtype=np.float64)
    return float(m.sum(axis=1) @ rows / total), float(m.sum(axis=0) @ cols / total)


@dataclass(frozen=True)
class TandemExperiment:
    """Edge maps of a photo and of two moved copies, pushed through max pooling together.

    ``comparisons`` maps a copy's name ("translated", "other_side") to per-iteration lists:
    ``centroid_distance_cells`` (distance between the intensity centroids of the two maps, in cells of
    that iteration's grid), ``centroid_distance_pixels`` (the same in pixels of the unpooled edge map:
    cells times ``kernel_size ** t``) and ``correlation`` (Pearson correlation of the two maps; None
    when a map is constant). ``centroids`` holds each map's centroid in unpooled pixels.
    """

    source: str
    shift: tuple[int, int]
    kernel_size: int
    shapes: tuple[tuple[int, int], ...]
    centroids: dict
    comparisons: dict
    maps: dict = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "shift": list(self.shift),
            "kernel_size": self.kernel_size,
            "shapes": [list(s) for s in self.shapes],
            "centroids": {k: [None if c is None else list(c) for c in v] for k, v in self.centroids.items()},
            "comparisons": {k: {m: list(vals) for m, vals in v.items()} for k, v in self.comparisons.items()},
        }


def tandem_experiment(image=None, shift=(17, 64), iterations: int = 6, kernel_size: int = 2) -> TandemExperiment:
    """Equivariance and invariance in tandem: edge maps of three photos pooled ``iterations`` times.

    The three inputs are the photo, its circular shift by ``shift`` (content moves down/right), and its
    mirror image (the object on the other side). Each vertical-edge map (ReLU'd) is max-pooled
    ``iterations`` times; per iteration the moved copies are compared with the original by centroid
    distance and correlation. The distance in *cells* shrinks because the cells grow (kernel_size ** t
    pixels); measured in pixels it does not: pooling coarsens the grid, it does not move features.

    Shape:
        - Photo: (H, W); map t: (H_t, W_t) with H_0 = H - 2 and H_t = H_{t-1} // kernel_size.
    """
    photo, source = _photo(image)
    dy, dx = _check_shift(shift, *photo.shape)
    k = sobel_kernel("vertical")
    inputs = {
        "original": photo,
        "translated": np.roll(photo, (dy, dx), axis=(0, 1)),
        "other_side": np.ascontiguousarray(photo[:, ::-1]),
    }
    edges = {name: convolve(x, k) for name, x in inputs.items()}
    _check_iterations(iterations, kernel_size, edges["original"].shape)
    maps = {name: tuple(pool_iterations(e, iterations, kernel_size)) for name, e in edges.items()}

    centroids = {}
    for name, name_maps in maps.items():
        row = []
        for t, m in enumerate(name_maps):
            c = _centroid(m)
            cell = kernel_size ** t  # a cell of grid t covers cell x cell unpooled pixels
            row.append(None if c is None else tuple((v + 0.5) * cell - 0.5 for v in c))
        centroids[name] = tuple(row)

    comparisons = {}
    for name in ("translated", "other_side"):
        cells, pixels, corr = [], [], []
        for t, (m0, m1) in enumerate(zip(maps["original"], maps[name])):
            c0, c1 = _centroid(m0), _centroid(m1)
            if c0 is None or c1 is None:
                cells.append(None)
                pixels.append(None)
            else:
                d = float(np.hypot(c0[0] - c1[0], c0[1] - c1[1]))
                cells.append(d)
                pixels.append(d * kernel_size ** t)
            corr.append(_correlation(m0, m1))
        comparisons[name] = {
            "centroid_distance_cells": tuple(cells),
            "centroid_distance_pixels": tuple(pixels),
            "correlation": tuple(corr),
        }
    return TandemExperiment(
        source=source,
        shift=(dy, dx),
        kernel_size=int(kernel_size),
        shapes=tuple(tuple(int(s) for s in m.shape) for m in maps["original"]),
        centroids=centroids,
        comparisons=comparisons,
        maps=maps,
    )
