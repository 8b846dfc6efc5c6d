"""Images with masks: mask files (VOC palettes, grey, RGB through a palette), folder layouts, the digit task."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import shiftlab.data.mask_files as mask_files
from shiftlab.data import (DIGIT_CLASSES, VOC_CLASSES, MaskFiles, MaskPalette, MaskedImages, TensorMasks,
                           digit_segmentation, open_masks, voc_colormap)
from shiftlab.data.sources import open_images
from shiftlab.errors import InputError


def _image(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _palette_mask(path, classes):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(classes.astype(np.uint8), mode="P")
    im.putpalette(voc_colormap().ravel().tolist())
    im.save(path)


def _classes(h, w, top, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, top, (h, w))
    a[0, :] = 255  # a VOC object border: the ignore index
    return a


# ---- the colour map ----

def test_voc_colormap_is_the_published_one():
    cmap = voc_colormap()
    # the colours of the VOC devkit: background, aeroplane, person, the border (255)
    assert tuple(cmap[0]) == (0, 0, 0) and tuple(cmap[1]) == (128, 0, 0)
    assert tuple(cmap[15]) == (192, 128, 128) and tuple(cmap[255]) == (224, 224, 192)
    assert len({tuple(c) for c in cmap.tolist()}) == 256  # a bijection, so RGB masks decode unambiguously
    assert len(VOC_CLASSES) == 21


# ---- mask files ----

def test_voc_palette_masks_round_trip_with_255_ignored(tmp_path):
    truth = {}
    for i, stem in enumerate(["2007_000032", "2007_000039", "2007_000063"]):
        _image(tmp_path / "JPEGImages" / f"{stem}.jpg", 12, 10 + i, seed=i)
        truth[stem] = _classes(12, 10 + i, 21, seed=i)
        _palette_mask(tmp_path / "SegmentationClass" / f"{stem}.png", truth[stem])
    _image(tmp_path / "JPEGImages" / "2008_000001.jpg", 12, 10)  # a detection-only image: no mask
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000039\n2007_000063\n")

    data = open_images(tmp_path)
    assert isinstance(data, MaskFiles) and data.num_classes == 21 and data.class_names == list(VOC_CLASSES)
    assert len(data) == 3 and data.unmasked == 1 and data.skipped == []
    for i, path in enumerate(data.paths):
        mask = data.load_mask(i)
        assert mask.dtype == torch.int64 and tuple(mask.shape) == tuple(data.load(i).shape[-2:])
        assert torch.equal(mask, torch.as_tensor(truth[path.stem]))
        assert bool((mask[0] == 255).all()) and int(mask[1:].max()) <= 20

    val = open_images(tmp_path, split="val")
    assert [p.stem for p in val.paths] == ["2007_000039", "2007_000063"]
    with pytest.raises(InputError, match="no VOC split 'test'"):
        open_masks(tmp_path, split="test")


def test_rgb_masks_map_through_the_voc_colormap_and_a_user_palette(tmp_path):
    classes = _classes(9, 7, 21)
    _image(tmp_path / "images" / "a.png", 9, 7)
    (tmp_path / "masks").mkdir()
    Image.fromarray(voc_colormap()[classes]).save(tmp_path / "masks" / "a.png")  # colours, mode RGB
    data = open_masks(tmp_path, num_classes=21)
    assert torch.equal(data.load_mask(0), torch.as_tensor(classes))

    two = np.where(classes[..., None] % 2 == 0, [[[10, 20, 30]]], [[[200, 0, 0]]]).astype(np.uint8)
    Image.fromarray(two).save(tmp_path / "masks" / "a.png")
    data = open_masks(tmp_path, palette={(10, 20, 30): 0, (200, 0, 0): 1})
    assert data.num_classes == 2 and data.inferred_classes
    assert torch.equal(data.load_mask(0), torch.as_tensor(classes % 2))


def test_an_unknown_colour_is_an_error_naming_the_file(tmp_path):
    _image(tmp_path / "images" / "cat.png", 6, 6)
    colours = np.zeros((6, 6, 3), dtype=np.uint8)
    colours[2, 3] = (1, 2, 3)  # not a VOC colour
    (tmp_path / "masks").mkdir()
    Image.fromarray(colours).save(tmp_path / "masks" / "cat.png")
    data = open_masks(tmp_path, num_classes=21)
    with pytest.raises(InputError, match=r"masks/cat\.png.*\(1, 2, 3\) at row 2, column 3"):
        data.load_mask(0)
    with pytest.raises(InputError, match="palette colour"):
        MaskPalette({(1, 2, 300): 0})


def test_size_mismatch_unreadable_mask_and_missing_mask_are_skipped_and_counted(tmp_path):
    _image(tmp_path / "images" / "good.png", 8, 8)
    _palette_mask(tmp_path / "masks" / "good.png", _classes(8, 8, 3))
    _image(tmp_path / "images" / "small.png", 8, 8)
    _palette_mask(tmp_path / "masks" / "small.png", _classes(8, 6, 3))
    _image(tmp_path / "images" / "broken.png", 8, 8)
    (tmp_path / "masks" / "broken.png").write_bytes(b"not a png at all")
    _image(tmp_path / "images" / "alone.png", 8, 8)
    _image(tmp_path / "images" / "lossy.png", 8, 8)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "lossy.jpg")

    data = open_masks(tmp_path, num_classes=3)
    assert [p.name for p in data.paths] == ["good.png"]
    reasons = {path.split("/")[-1]: reason for path, reason in data.skipped}
    assert set(reasons) == {"small.png", "broken.png", "alone.png", "lossy.png"}
    assert "6x8 but the image is 8x8" in reasons["small.png"]
    assert "cannot be used" in reasons["broken.png"] and "no mask" in reasons["alone.png"]
    assert "lossy" in reasons["lossy.png"] and data.unmasked == 1

    unchecked = open_masks(tmp_path, num_classes=3, check=False)  # found at decoding instead: never silent
    assert len(unchecked) == 3
    failures = []
    for i in range(len(unchecked)):
        try:
            unchecked.load_mask(i)
        except InputError as exc:
            failures.append(str(exc))
    assert len(failures) == 2 and any("masks/small.png" in f and "8x6" in f for f in failures)


def test_images_and_masks_folders_open_as_masks_not_two_classes(tmp_path):
    for name in ("x", "y"):
        _image(tmp_path / "images" / f"{name}.png", 5, 5)
        _palette_mask(tmp_path / "masks" / f"{name}.png", np.full((5, 5), 4 if name == "y" else 1))
    data = open_images(tmp_path)
    assert isinstance(data, MaskedImages) and data.has_masks and len(data) == 2
    assert not data.has_labels and data.class_names is None
    assert data.num_classes == 5  # inferred: the largest class seen (4) + 1
    assert torch.equal(data.load_mask(1), torch.full((5, 5), 4))
    (tmp_path / "masks").rename(tmp_path / "labels")  # the control: now it is an ImageFolder of two classes
    plain = open_images(tmp_path)
    assert not isinstance(plain, MaskedImages) and plain.class_names == ["images", "labels"]


def test_opening_decodes_no_pixels(tmp_path, monkeypatch):
    for name in ("p", "q"):
        _image(tmp_path / "images" / f"{name}.png", 4, 4)
        _palette_mask(tmp_path / "masks" / f"{name}.png", np.zeros((4, 4)))

    def refuse(*args, **kwargs):
        raise AssertionError("decoded while opening")

    monkeypatch.setattr(mask_files, "decode_mask", refuse)
    monkeypatch.setattr(mask_files, "decode_image", refuse)
    data = open_masks(tmp_path, num_classes=2, limit=1)
    assert len(data) == 1
    with pytest.raises(AssertionError, match="decoded"):
        data.load(0)


def test_grey_masks_and_a_class_out_of_range(tmp_path):
    _image(tmp_path / "images" / "g.png", 4, 4)
    (tmp_path / "masks").mkdir()
    grey = np.array([[0, 1, 2, 255]] * 4, dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "masks" / "g.png")
    assert torch.equal(open_masks(tmp_path, num_classes=3).load_mask(0), torch.as_tensor(grey, dtype=torch.int64))
    with pytest.raises(InputError, match=r"g\.png holds class 2"):
        open_masks(tmp_path, num_classes=2).load_mask(0)


# ---- the digit segmentation task ----

def _digits(size):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)[:, 0], bunch.target


def test_digit_task_masks_are_the_thresholded_digits():
    train, test = digit_segmentation(canvas=24, object_size=12, n_train=40, n_test=20, seed=3, threshold=0.4)
    objects, target = _digits(12)
    assert isinstance(train, TensorMasks) and train.num_classes == 11 == len(DIGIT_CLASSES)
    for data in (train, test):
        for i in range(len(data)):
            (index,), ((top, left),) = data.digit_indices[i].tolist(), data.positions[i].tolist()
            canvas = torch.zeros(24, 24)
            canvas[top:top + 12, left:left + 12] = objects[index]
            assert torch.equal(data.load(i)[0], canvas)
            expected = torch.where(canvas > 0.4, int(target[index]) + 1, 0)
            assert torch.equal(data.load_mask(i), expected)
    masks = torch.stack([train.load_mask(i) for i in range(len(train))])
    assert int(masks.min()) == 0 and int(masks.max()) <= 10 and len(masks.unique()) >= 8


def test_digit_task_splits_by_digit_and_is_deterministic():
    train, test = digit_segmentation(n_train=1348, n_test=449, seed=1)
    assert not set(train.digit_indices.flatten().tolist()) & set(test.digit_indices.flatten().tolist())
    assert len(set(train.digit_indices.flatten().tolist())) == 1348  # every train digit used once
    again, _ = digit_segmentation(n_train=30, n_test=5, seed=1)
    assert torch.equal(again.masks[0], train.masks[0]) and torch.equal(again.load(29), train.load(29))
    other, _ = digit_segmentation(n_train=30, n_test=5, seed=2)
    assert not torch.equal(torch.stack(other.masks), torch.stack(train.masks[:30]))


def test_digit_task_with_several_digits_keeps_the_brightest():
    train, _ = digit_segmentation(canvas=20, object_size=12, digits_per_image=3, n_train=12, n_test=1, channels=3)
    images = torch.stack([train.load(i) for i in range(len(train))])
    masks = torch.stack(train.masks)
    assert images.shape == (12, 3, 20, 20) and torch.equal(images[:, 0], images[:, 2])
    assert torch.equal(masks > 0, images[:, 0] > 0.5)
    for i in range(12):  # every class in a mask is one of the image's digits
        assert set(masks[i].unique().tolist()) - {0} <= {d + 1 for d in train.digits[i].tolist()}


def test_digit_masks_data_spec():
    data = open_images("digit-masks:24", limit=6)
    assert isinstance(data, MaskedImages) and len(data) == 6 and data.load(0).shape == (1, 24, 24)
    assert open_images("digit-masks", limit=3, split="train").names[0].startswith("digit-masks/train")
    with pytest.raises(InputError, match="digit-masks"):
        open_images("digit-masks:big")
