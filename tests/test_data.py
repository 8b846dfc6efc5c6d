"""Datasets: bundled photos, image folders, .npz files and CIFAR-10 folders, with their bad inputs."""

import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shiftlab.data import (BUNDLED_LABELS, BUNDLED_PHOTOS, ImageDataset, bundled_photo, center_crop, load_dataset,
                           resize_shorter_side)
from shiftlab.errors import InputError, ShapeError


def _png(path, color, size=(300, 260)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _cifar_folder(root, n_test=6, n_train=4, seed=0):
    """A tiny CIFAR-10 python-format folder, pickled as the real one is (dicts of bytes keys)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    batches = {}
    for name, n in (("test_batch", n_test), ("data_batch_1", n_train)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = batch
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    with open(root / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return batches


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# ------------------------------------------------------------------------------------------ photos
def test_feature_bundled_photos_default():
    data = load_dataset()
    assert isinstance(data, ImageDataset) and len(data) == len(BUNDLED_PHOTOS)
    assert data.images.shape == (len(BUNDLED_PHOTOS), 3, 256, 256) and data.images.dtype == torch.float32
    assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
    assert data.names == list(BUNDLED_PHOTOS)
    assert data.labels.tolist() == [BUNDLED_LABELS.get(n, -1) for n in BUNDLED_PHOTOS]
    assert len(data.class_names) == 1000 and data.skipped == []
    # the centre of the 256 square is the centre of the photo (resize shorter side, centre crop)
    photo = torch.from_numpy(bundled_photo("chelsea")).permute(2, 0, 1)[None].float()
    expected = center_crop(resize_shorter_side(photo, 256), 256)
    assert torch.allclose(data.images[0], expected[0], atol=1e-6)


def test_feature_bundled_labels_name_real_photos():
    assert set(BUNDLED_LABELS) <= set(BUNDLED_PHOTOS)
    assert all(0 <= v < 1000 for v in BUNDLED_LABELS.values())
    assert BUNDLED_LABELS["chelsea"] == 285 and BUNDLED_LABELS["coffee"] == 967


def test_feature_photos_limit_size_and_batches():
    data = load_dataset("photos", image_size=96, limit=3)
    assert data.images.shape == (3, 3, 96, 96) and data.image_size == 96 and data.has_labels
    batches = list(data.batches(2))
    assert [b[0].shape[0] for b in batches] == [2, 1]
    assert torch.equal(torch.cat([b[0] for b in batches]), data.images)
    image, label = data[1]
    assert image.shape == (3, 96, 96) and label == BUNDLED_LABELS["coffee"]


def test_feature_motorcycle_and_cat_alias():
    assert bundled_photo("motorcycle_left").shape[-1] == 3
    assert np.array_equal(bundled_photo("cat"), bundled_photo("chelsea"))


# ------------------------------------------------------------------------------------------ folders
def test_feature_flat_folder_counts_corrupt_files(tmp_path):
    _png(tmp_path / "a_red.png", (255, 0, 0))
    _png(tmp_path / "b_blue.jpg", (0, 0, 255), size=(400, 300))
    (tmp_path / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    (tmp_path / ".hidden").write_bytes(b"ignored")
    data = load_dataset(tmp_path)
    assert data.names == ["a_red.png", "b_blue.jpg"] and data.labels.tolist() == [-1, -1]
    assert data.class_names is None and data.images.shape == (2, 3, 256, 256)
    assert torch.allclose(data.images[0, 0], torch.ones(256, 256)) and float(data.images[0, 1:].max()) == 0.0
    assert float(data.images[1, 2].min()) > 0.98 and float(data.images[1, :2].max()) < 0.02
    assert len(data.skipped) == 1
    path, reason = data.skipped[0]
    assert path.endswith("c_broken.png") and "not an image" in reason


def test_feature_class_subfolders_give_labels(tmp_path):
    _png(tmp_path / "dog" / "1.png", (0, 255, 0))
    _png(tmp_path / "cat" / "1.png", (255, 0, 0))
    _png(tmp_path / "cat" / "2.png", (255, 0, 0))
    _png(tmp_path / "stray.png", (0, 0, 0))
    data = load_dataset(tmp_path, image_size=64)
    assert data.class_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 1]
    assert data.names == [os.path.join("cat", "1.png"), os.path.join("cat", "2.png"), os.path.join("dog", "1.png")]
    assert float(data.images[2, 1].min()) > 0.99  # the dog image is the green one
    assert [os.path.basename(p) for p, _ in data.skipped] == ["stray.png"]
    assert len(load_dataset(tmp_path, image_size=64, limit=2)) == 2


def test_feature_small_images_skipped_or_upscaled(tmp_path):
    _png(tmp_path / "big.png", (10, 20, 30), size=(300, 300))
    _png(tmp_path / "small.png", (10, 20, 30), size=(40, 50))
    data = load_dataset(tmp_path)
    assert data.names == ["big.png"]
    assert "smaller than image_size 256" in data.skipped[0][1]
    assert load_dataset(tmp_path, upscale=True).names == ["big.png", "small.png"]


# ------------------------------------------------------------------------------------------ npz
def test_feature_npz_uint8_channels_last_native_size(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, images=images, labels=np.arange(5), class_names=np.array(list("abcde")))
    data = load_dataset(path)
    assert data.images.shape == (5, 3, 32, 32)
    assert torch.equal(data.images, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert data.labels.tolist() == [0, 1, 2, 3, 4] and data.class_names == list("abcde")
    assert data.names[2] == "d.npz[2]"
    assert load_dataset(path, limit=2).images.shape[0] == 2
    assert load_dataset(path, image_size=16).images.shape == (5, 3, 16, 16)


def test_feature_npz_float_channels_first_and_grey(tmp_path):
    images = np.random.default_rng(1).random((3, 3, 20, 30)).astype(np.float32)
    np.savez(tmp_path / "f.npz", images=images)
    data = load_dataset(tmp_path / "f.npz")
    assert data.images.shape == (3, 3, 20, 20) and data.labels.tolist() == [-1, -1, -1]
    assert torch.equal(data.images, torch.from_numpy(images)[..., 5:25])  # centre square, no resampling
    grey = np.random.default_rng(2).integers(0, 256, size=(2, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=grey)
    data = load_dataset(tmp_path / "g.npz")
    assert data.images.shape == (2, 3, 16, 16) and torch.equal(data.images[:, 0], data.images[:, 2])


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(4, 12), w=st.integers(4, 12), channels=st.sampled_from([1, 3]),
       channels_last=st.booleans())
def test_feature_npz_layouts_round_trip(tmp_path_factory, n, h, w, channels, channels_last):
    rng = np.random.default_rng(n * 1000 + h * 10 + w)
    nchw = rng.random((n, channels, h, w)).astype(np.float32)
    stored = (nchw.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8) if channels_last else nchw
    path = tmp_path_factory.mktemp("npz") / "x.npz"
    np.savez(path, images=stored)
    data = load_dataset(path)
    s = min(h, w)
    expected = torch.from_numpy((stored.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)) if channels_last \
        else torch.from_numpy(nchw)
    top, left = (h - s) // 2, (w - s) // 2
    expected = expected[..., top:top + s, left:left + s].expand(-1, 3, -1, -1)
    assert torch.allclose(data.images, expected, atol=1e-6)


def test_exception_npz_bad_arrays(tmp_path):
    cases = {
        "rank": (np.zeros((4, 32), np.uint8), ShapeError, "shape"),
        "channels": (np.zeros((2, 8, 8, 4), np.uint8), ShapeError, "1 or 3 channels"),
        "nan": (np.full((2, 3, 8, 8), np.nan, np.float32), ShapeError, "NaN"),
        "inf": (np.full((2, 3, 8, 8), np.inf, np.float32), ShapeError, "NaN or Inf"),
        "range": (np.full((2, 3, 8, 8), 200.0, np.float32), ShapeError, r"\[0, 1\]"),
        "dtype": (np.zeros((2, 3, 8, 8), np.int64), ShapeError, "uint8"),
        "empty": (np.zeros((0, 8, 8, 3), np.uint8), InputError, "no images"),
    }
    for name, (images, error, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", images=images)
        with pytest.raises(error, match=message):
            load_dataset(tmp_path / f"{name}.npz")
    np.savez(tmp_path / "labels.npz", images=np.zeros((3, 8, 8, 3), np.uint8), labels=np.arange(4))
    with pytest.raises(ShapeError, match="3 labels"):
        load_dataset(tmp_path / "labels.npz")
    np.savez(tmp_path / "nokey.npz", pictures=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="no 'images'.*pictures"):
        load_dataset(tmp_path / "nokey.npz")
    np.savez(tmp_path / "small.npz", images=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(ShapeError, match="smaller than image_size 32"):
        load_dataset(tmp_path / "small.npz", image_size=32)
    assert load_dataset(tmp_path / "small.npz", image_size=32, upscale=True).images.shape == (3, 3, 32, 32)
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="object"):
        load_dataset(tmp_path / "objects.npz")


# ------------------------------------------------------------------------------------------ CIFAR-10
def test_feature_cifar_folder(tmp_path):
    batches = _cifar_folder(tmp_path / "cifar-10-batches-py")
    data = load_dataset(tmp_path / "cifar-10-batches-py")  # the test split by default
    test = batches["test_batch"]
    assert data.images.shape == (6, 3, 32, 32)
    assert torch.equal(data.images, torch.from_numpy(test[b"data"].reshape(-1, 3, 32, 32)).float() / 255)
    assert data.labels.tolist() == test[b"labels"]
    assert data.class_names == [f"class{i}" for i in range(10)]
    assert data.names[0] == "test_batch_0.png"
    train = load_dataset(tmp_path, split="train")  # the parent folder is found too
    assert train.labels.tolist() == batches["data_batch_1"][b"labels"]
    assert load_dataset(tmp_path, limit=2).images.shape[0] == 2


def test_exception_cifar_pickle_runs_no_code(tmp_path):
    root = tmp_path / "cifar"
    _cifar_folder(root)
    marker = tmp_path / "code_ran"
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": _RunsCode(str(marker)), b"labels": []}, f, protocol=2)
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_dataset(root)
    assert not marker.exists()
    with pytest.raises(InputError, match="split"):
        load_dataset(root, split="validation")


# ------------------------------------------------------------------------------------------ exception
def test_exception_folders_and_paths(tmp_path):
    with pytest.raises(InputError, match="no image files"):
        load_dataset(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(InputError, match="1 skipped.*broken.jpg"):
        load_dataset(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(InputError, match=r"\.npz"):
        load_dataset(tmp_path / "data.csv")
    with pytest.raises(InputError, match="CIFAR-10"):
        load_dataset(tmp_path, split="test")
    with pytest.raises(InputError, match="image_size"):
        load_dataset(image_size=0)
    with pytest.raises(InputError, match="limit"):
        load_dataset(limit=-1)
    with pytest.raises(InputError, match="interpolation"):
        load_dataset(interpolation="lanczos")
    with pytest.raises(InputError, match="path"):
        load_dataset(42)


# ------------------------------------------------------------------------------------------ image sources
def test_feature_16bit_png_and_float_tiff_load_at_their_true_values(tmp_path):
    from shiftlab.data.sources import decode_image

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    x = decode_image(tmp_path / "g16.png")
    assert abs(float(x.mean()) - 0.5) < 1e-3 and float(x.max()) == 1.0  # not saturated at 0.996
    img = Image.fromarray(np.full((8, 8), 0.25, np.float32), mode="F")
    img.save(tmp_path / "f.tiff")
    assert np.allclose(decode_image(tmp_path / "f.tiff"), 0.25)  # not black
    Image.fromarray(np.full((8, 8), 7.0, np.float32), mode="F").save(tmp_path / "bad.tiff")
    with pytest.raises(InputError, match=r"float images must be in \[0, 1\]"):
        decode_image(tmp_path / "bad.tiff")


def test_feature_oversized_images_are_skipped_and_counted_without_a_warning(tmp_path, monkeypatch, recwarn):
    from PIL import Image as PILImage

    from shiftlab.data.sources import decode_image, open_images

    _png(tmp_path / "big.png", (10, 20, 30), size=(300, 300))
    _png(tmp_path / "ok.png", (10, 20, 30), size=(100, 100))
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50_000)  # 300x300 is over, as a 14000x13000 photo is
    with pytest.raises(InputError, match="pixel limit"):
        decode_image(tmp_path / "big.png")
    data = load_dataset(tmp_path, image_size=64)
    assert data.names == ["ok.png"] and "pixel limit" in data.skipped[0][1]
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]
    source = open_images(tmp_path)
    assert len(source) == 2  # listed; the big one fails when it is read, and the audit counts it


def test_feature_folder_sources_filter_by_extension_and_list_unreadable_class_folders(tmp_path, monkeypatch):
    import os as _os

    from shiftlab.data.sources import open_images

    _png(tmp_path / "cat" / "1.png", (255, 0, 0))
    _png(tmp_path / "cat" / "deep" / "2.JPG", (255, 0, 0))
    (tmp_path / "cat" / "notes.txt").write_text("labels are folder names")
    _png(tmp_path / "dog" / "1.png", (0, 255, 0))
    (tmp_path / "locked").mkdir()
    real = _os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(_os, "scandir", scandir)
    source = open_images(tmp_path)
    assert source.class_names == ["cat", "dog", "locked"]
    assert source.names == [os.path.join("cat", "1.png"), os.path.join("cat", "deep", "2.JPG"),
                            os.path.join("dog", "1.png")]
    assert source.labels.tolist() == [0, 0, 1] and source.ignored == 1  # notes.txt: not an image, not an error
    assert [(os.path.basename(p), "folder cannot be read" in r) for p, r in source.skipped] == [("locked", True)]
