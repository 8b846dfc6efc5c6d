"""Image files paired with PNG mask files: a :class:`~shiftlab.data.masks.MaskedImages` decoded on demand.

Layouts that :func:`open_masks` (and :func:`shiftlab.data.sources.open_images`) recognise in a folder:

- PASCAL VOC: ``JPEGImages/`` and ``SegmentationClass/`` (the folder itself, or its ``VOC2012/`` or
  ``VOCdevkit/VOC2012/``), pairs by file stem; with ``split`` ("train", "val", "trainval") the stems listed in
  ``ImageSets/Segmentation/{split}.txt``, otherwise every mask of ``SegmentationClass/``. ``num_classes``
  defaults to 21 with VOC's class names. Most of VOC's JPEGs have no segmentation mask (they are detection
  images): without a split they are counted in ``unmasked`` but not listed in ``skipped``;
- ``images/`` and ``masks/`` side by side, pairs by path below them without the extension
  (``images/a/x.jpg`` with ``masks/a/x.png``); an image with no mask, a mask with no image, a second file of
  one name and a JPEG mask (lossy: its class values are not kept) are listed in ``skipped``;
- two explicit folders: ``open_masks(images_folder, masks=masks_folder)``, paired like ``images/``/``masks/``.

Listing reads names only; with ``check=True`` (the default) the headers of each pair are read too (no pixels),
so that a pair whose mask size differs from its image's, or whose files cannot be opened, is listed in
``skipped`` with its reason instead of reaching the model. A file that fails later, when it is decoded, raises
:class:`~shiftlab.errors.InputError` naming it from ``load``/``load_mask`` and the audit skips and counts it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shiftlab._checks import check_int
from shiftlab.data.decoding import decode_image
from shiftlab.data.folders import _Walk
from shiftlab.data.mask_decoding import VOC_CLASSES, MaskPalette, decode_mask, image_size
from shiftlab.data.masks import DEFAULT_IGNORE_INDEX, MaskedImages, check_mask
from shiftlab.errors import InputError, ShapeError

__all__ = ["INFER_SAMPLE", "MaskFiles", "mask_layout", "open_masks"]

#: how many masks (evenly spread over the listing) are decoded to infer ``num_classes`` when it is not given
INFER_SAMPLE = 16

_LOSSY = (".jpg", ".jpeg", ".webp")


class MaskFiles(MaskedImages):
    """Pairs of image files and mask files, decoded on demand (images by
    :func:`~shiftlab.data.decoding.decode_image`, masks by :func:`~shiftlab.data.mask_decoding.decode_mask`).

    Attributes (besides :class:`~shiftlab.data.masks.MaskedImages`'s): ``paths`` and ``mask_paths`` (one each per
    pair), ``root``, ``palette`` (for RGB masks), ``unmasked`` (images found without a mask),
    ``inferred_classes`` (True when ``num_classes`` was inferred from a sample of masks).

    Shape:
        ``load(i)``: (3, H, W) float32 in [0, 1]; ``load_mask(i)``: (H, W) int64 of the same H, W.
    """

    def __init__(self, paths, mask_paths, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 class_names=None, palette=None, root=None, skipped=None, ignored: int = 0, unmasked: int = 0,
                 inferred_classes: bool = False, description: str = ""):
        self.paths = [Path(p) for p in paths]
        self.mask_paths = [Path(p) for p in mask_paths]
        if len(self.paths) != len(self.mask_paths):
            raise InputError(f"{len(self.paths)} images for {len(self.mask_paths)} masks")
        self.root = Path(root) if root is not None else None
        self.palette = palette if isinstance(palette, MaskPalette) else MaskPalette(palette)
        self.unmasked = int(unmasked)
        self.inferred_classes = bool(inferred_classes)
        super().__init__([_name(p, self.root) for p in self.paths], num_classes, ignore_index, class_names,
                         skipped=skipped, ignored=ignored, description=description)

    def load(self, index: int) -> torch.Tensor:
        return torch.from_numpy(decode_image(self.paths[index])).permute(2, 0, 1)

    def load_mask(self, index: int) -> torch.Tensor:
        """Mask ``index`` as (H, W) int64; InputError naming the mask file when it cannot be used (unreadable,
        an unknown colour, a class out of range, a size other than its image's)."""
        path = self.mask_paths[index]
        try:
            mask = torch.from_numpy(decode_mask(path, self.palette))
            hw = image_size(self.paths[index])
        except InputError as exc:
            text = str(exc)
            raise InputError(text if text.startswith(f"mask {path}") else f"mask {path}: {text}") from None
        try:
            return check_mask(mask, hw, self.num_classes, self.ignore_index, f"mask {path}")
        except ShapeError as exc:
            raise InputError(str(exc)) from None

    def path(self, index: int) -> str:
        return str(self.paths[index])


def _name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return str(path)


def _voc_root(folder: Path) -> Path | None:
    for root in (folder, folder / "VOC2012", folder / "VOCdevkit" / "VOC2012"):
        if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
            return root
    return None


def mask_layout(folder) -> str | None:
    """``"voc"`` or ``"pairs"`` (``images/`` + ``masks/``) when ``folder`` holds images with masks, else ``None``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if _voc_root(folder) is not None:
        return "voc"
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        return "pairs"
    return None


def _by_stem(walk: _Walk, folder: Path, what: str) -> dict[str, Path]:
    """The image files under ``folder`` keyed by their path below it without the extension; repeats skipped."""
    found: dict[str, Path] = {}
    for p in walk.images_under(folder):
        key = p.relative_to(folder).with_suffix("").as_posix()
        if key in found:
            walk.skipped.append((str(p), f"a second {what} named {key!r} (after {found[key].name}): not used"))
        elif walk.once(p):
            found[key] = p
    return found


def _pairs_by_stem(walk: _Walk, images_dir: Path, masks_dir: Path, count_unmasked_as_skipped: bool = True):
    images = _by_stem(walk, images_dir, "image")
    masks = _by_stem(walk, masks_dir, "mask")
    pairs, unmasked = [], 0
    for key, image in images.items():
        mask = masks.get(key)
        if mask is None:
            unmasked += 1
            if count_unmasked_as_skipped:
                walk.skipped.append((str(image), f"no mask named {key!r} in {masks_dir}"))
        elif mask.suffix.lower() in _LOSSY:
            walk.skipped.append((str(image), f"its mask {mask} is a lossy {mask.suffix} file (class values are not "
                                             f"kept): save masks as PNG"))
        else:
            pairs.append((image, mask))
    for key, mask in masks.items():
        if key not in images:
            walk.skipped.append((str(mask), f"a mask with no image named {key!r} in {images_dir}"))
    return pairs, unmasked


def _voc_split(walk: _Walk, root: Path, split: str):
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "Segmentation").glob("*.txt"))
        raise InputError(f"no VOC split {split!r}: {listing} not found (splits there: {', '.join(have) or 'none'})")
    try:
        stems = [s.strip() for s in listing.read_text(encoding="utf-8").splitlines() if s.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the VOC split {listing} ({type(exc).__name__})") from None
    pairs = []
    for stem in stems:
        image, mask = root / "JPEGImages" / f"{stem}.jpg", root / "SegmentationClass" / f"{stem}.png"
        if not image.is_file():
            walk.skipped.append((str(image), f"listed in {listing.name} but not found"))
        elif not mask.is_file():
            walk.skipped.append((str(image), f"no mask: {mask} not found"))
        else:
            pairs.append((image, mask))
    return pairs


def _checked(pairs, walk: _Walk, limit: int | None):
    """The pairs whose headers open and agree in size, up to ``limit``; the others recorded in ``skipped``."""
    kept = []
    for image, mask in pairs:
        if limit is not None and len(kept) >= limit:
            break
        try:
            hw = image_size(image)
        except InputError as exc:
            walk.skipped.append((str(image), str(exc)))
            continue
        try:
            mhw = image_size(mask)
        except InputError as exc:
            walk.skipped.append((str(image), f"its mask {mask} cannot be used: {exc}"))
            continue
        if mhw != hw:
            walk.skipped.append((str(image), f"its mask {mask} is {mhw[1]}x{mhw[0]} but the image is {hw[1]}x{hw[0]}"))
            continue
        kept.append((image, mask))
    return kept


def _infer_classes(masks: list[Path], palette: MaskPalette, ignore_index: int) -> int:
    """The largest class in up to :data:`INFER_SAMPLE` masks spread evenly over ``masks`` (ignore index left
    out), plus one; masks that cannot be decoded are passed over (their loads fail later, and are counted)."""
    picks = sorted({int(i) for i in np.linspace(0, len(masks) - 1, min(INFER_SAMPLE, len(masks)))})
    top, read, reasons = -1, 0, []
    for i in picks:
        try:
            values = np.unique(decode_mask(masks[i], palette))
        except InputError as exc:
            reasons.append(f"{masks[i]}: {exc}")
            continue
        read += 1
        values = values[values != ignore_index]
        if values.size:
            top = max(top, int(values.max()))
    if not read:
        raise InputError(f"cannot infer num_classes: none of {len(picks)} sampled masks could be read "
                         f"(e.g. {reasons[0]}); give num_classes")
    return max(top + 1, 1)


def open_masks(folder, masks=None, ignore_index: int = DEFAULT_IGNORE_INDEX, num_classes: int | None = None,
               split: str | None = None, limit: int | None = None, palette=None, check: bool = True) -> MaskFiles:
    """Open image/mask pairs without decoding them (see the module docstring for the layouts).

    Args:
        folder: a VOC folder, a folder with ``images/`` and ``masks/``, or (with ``masks``) the images' folder.
        masks: the masks' folder, paired with ``folder`` by file name without extension.
        ignore_index: the mask value that no comparison counts (VOC: 255).
        num_classes: classes 0..num_classes - 1; default 21 for VOC, otherwise the largest class in
            :data:`INFER_SAMPLE` masks spread over the listing, plus one (give it: a sample can miss a class).
        split: VOC only: the stems of ``ImageSets/Segmentation/{split}.txt``.
        limit: the first ``limit`` usable pairs only.
        palette: for RGB masks: ``None``/``"voc"`` (the VOC colour map), ``{(r, g, b): class}`` or (K, 3) colours.
        check: read each pair's headers (no pixels) and list mismatched or unreadable pairs in ``skipped``.
    """
    check_int("ignore_index", ignore_index)
    check_int("num_classes", num_classes, 1, allow_none=True)
    check_int("limit", limit, 1, allow_none=True)
    palette = palette if isinstance(palette, MaskPalette) else MaskPalette(palette)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of images with masks")
    walk = _Walk(folder)
    unmasked, class_names, voc = 0, None, False
    if masks is not None:
        masks = Path(masks).expanduser()
        if not masks.is_dir():
            raise InputError(f"the masks folder {masks} is not a folder")
        if split is not None:
            raise InputError("split is for VOC folders (ImageSets/Segmentation/{split}.txt)")
        pairs, unmasked = _pairs_by_stem(walk, folder, masks)
    elif mask_layout(folder) == "voc":
        root, voc = _voc_root(folder), True
        if split is not None:
            pairs = _voc_split(walk, root, split)
        else:
            pairs, unmasked = _pairs_by_stem(walk, root / "JPEGImages", root / "SegmentationClass", False)
    elif mask_layout(folder) == "pairs":
        if split is not None:
            raise InputError("split is for VOC folders (ImageSets/Segmentation/{split}.txt)")
        pairs, unmasked = _pairs_by_stem(walk, folder / "images", folder / "masks")
    else:
        raise InputError(f"{folder} holds no images with masks: use a VOC folder (JPEGImages/, SegmentationClass/), "
                         f"a folder with images/ and masks/, or open_masks(images_folder, masks=masks_folder)")
    pairs = _checked(pairs, walk, limit) if check else pairs[:limit]
    if not pairs:
        detail = f"; e.g. {walk.skipped[0][0]}: {walk.skipped[0][1]}" if walk.skipped else ""
        raise InputError(f"no usable image/mask pairs in {folder}{detail}")
    inferred = num_classes is None and not voc
    if num_classes is None:
        num_classes = 21 if voc else _infer_classes([m for _, m in pairs], palette, ignore_index)
    if voc and num_classes == 21:
        class_names = list(VOC_CLASSES)
    return MaskFiles([p for p, _ in pairs], [m for _, m in pairs], num_classes, ignore_index, class_names, palette,
                     folder, walk.skipped, walk.ignored, unmasked, inferred, str(folder))
