"""Issue 17, the data sources: class 6 (links into a data folder's own parents, images counted twice) and the
data items of class 10 (special files that hang, control characters on the terminal, out-of-range labels,
non-array .npz members, EXIF orientation, CIFAR labels outside the class range).

Every test here fails on the code before the fix (a hang is turned into a failure by an alarm)."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab.cli import main
from shiftlab.data import load_dataset, load_image
from shiftlab.data.sources import decode_image, open_images
from shiftlab.errors import InputError, ShiftlabError, printable

NET = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 6))
    net.pretrained_cfg = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return net
'''


def _png(path, seed=0, size=(16, 16)):
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


class _Hung(BaseException):
    """Raised by the alarm: not an OSError, so no ``except OSError`` in the code under test can swallow it."""


@contextlib.contextmanager
def _no_hang(seconds=5):
    """Turn a hang (opening a fifo waits for a writer forever) into a test failure."""
    def alarm(*_):
        raise _Hung("hung: a special file was opened")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _counted_once(source):
    real = [os.path.realpath(p) for p in source.paths]
    return len(real) == len(set(real))


# ------------------------------------------------------------------------ class 6: links and double counting


@pytest.fixture
def classes(tmp_path):
    """data/a/{0,1}.png, data/b/2.png: three images, two classes."""
    root = tmp_path / "data"
    for name, seed in (("a/0.png", 0), ("a/1.png", 1), ("b/2.png", 2)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _png(root / name, seed)
    return root


@pytest.mark.parametrize("link, target", [("a/loop", ".."), ("a/up", "../.."), ("a/self", "."),
                                          ("b/deep/root", "../../../data"), ("a/abs", "ABS_ROOT")])
def test_class6_a_link_into_the_folder_or_its_parents_is_not_followed(classes, link, target):
    """class 6, links into their own parents: a link to the data folder, one of its parents or a folder of it
    is a cycle; following it listed the other classes' images again under this label."""
    (classes / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(str(classes) if target == "ABS_ROOT" else target, classes / link)
    source = open_images(classes)
    assert sorted(zip(source.names, source.labels.tolist())) == [("a/0.png", 0), ("a/1.png", 0), ("b/2.png", 1)]
    assert source.class_names == ["a", "b"] and _counted_once(source)
    reasons = {p: r for p, r in source.skipped}
    assert "not followed" in reasons[str(classes / link)]


def test_class6_a_loop_in_a_flat_folder_keeps_it_flat(tmp_path):
    """class 6, links into their own parents: a flat folder holding `loop -> .` was taken as one class 'loop'
    holding the folder's images (and the folder's own images were then skipped)."""
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        _png(root / f"{i}.png", i)
    os.symlink(".", root / "loop")
    os.symlink("..", root / "up")
    source = open_images(root)
    assert source.names == ["0.png", "1.png", "2.png"] and source.labels.tolist() == [-1, -1, -1]
    assert source.class_names is None
    data = load_dataset(root, image_size=8)
    assert len(data) == 3 and data.names == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize("layout", ["flat-symlink", "flat-hardlink", "class-symlink", "class-hardlink"])
def test_class6_a_second_name_of_one_file_is_counted_once(tmp_path, layout):
    """class 6, counted twice: a link (symbolic or hard) to a sibling image counted it twice, in a class
    layout under another label."""
    root = tmp_path / "data"
    flat = layout.startswith("flat")
    first = root / ("x.png" if flat else "a/x.png")
    second = root / ("y.png" if flat else "b/y.png")
    first.parent.mkdir(parents=True)
    second.parent.mkdir(parents=True, exist_ok=True)
    _png(first)
    _png(root / ("z.png" if flat else "b/z.png"), 1)
    if layout.endswith("symlink"):
        os.symlink(first, second)
    else:
        os.link(first, second)
    source = open_images(root)
    assert _counted_once(source) and len(source) == 2
    assert str(first) in [str(p) for p in source.paths] and str(second) not in [str(p) for p in source.paths]
    if not flat:
        assert source.labels.tolist() == [0, 1]  # x.png under its own class a only
    assert any(p == str(second) for p, _ in source.skipped)


def test_class6_links_to_outside_files_and_folders_are_followed_once(tmp_path):
    """class 6, counted twice: links to outside files and folders are followed (documented), but two links to
    one outside file, or two links to one outside folder, count its images once."""
    store = tmp_path / "store"
    store.mkdir()
    _png(store / "s0.png", 0)
    _png(store / "s1.png", 1)
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    os.symlink(store / "s0.png", root / "a" / "link0.png")
    os.symlink(store / "s0.png", root / "b" / "again.png")
    os.symlink(store, root / "a" / "store")
    os.symlink(store, root / "b" / "store")
    source = open_images(root)
    assert _counted_once(source)
    assert sorted(source.names) == ["a/link0.png", "a/store/s1.png"] and source.labels.tolist() == [0, 0]


# ------------------------------------------------------------------------ class 10: special files


def _fifo(path):
    os.mkfifo(path)
    return path


def _socket(path, keep):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    keep.append(sock)
    return path


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_class10_special_files_in_a_folder_are_skipped_without_opening(tmp_path, monkeypatch, kind):
    """class 10, a special file hangs the audit: a fifo named like an image was opened and waited forever;
    sockets and device nodes are skipped the same way, counted as unreadable, never opened."""
    root = tmp_path / "d"
    root.mkdir()
    monkeypatch.chdir(root)  # short socket paths
    _png(root / "good.png")
    keep: list = []
    special = {"fifo": lambda p: _fifo(p), "socket": lambda p: _socket(p, keep),
               "device": lambda p: os.symlink("/dev/zero", p)}[kind]
    special(root / "special.png")
    with _no_hang():
        source = open_images(root)
        data = load_dataset(root, image_size=8)
    assert source.names == ["good.png"] and data.names == ["good.png"]
    reason = dict(source.skipped)[str(root / "special.png")]
    assert "not a regular file" in reason and "not opened" in reason
    for sock in keep:
        sock.close()


@pytest.mark.parametrize("via", ["decode", "list", "load_image"])
def test_class10_a_fifo_named_anywhere_is_refused_not_opened(tmp_path, via):
    """class 10, a special file hangs: a fifo named in a list file (or decoded directly) is refused at once."""
    fifo = _fifo(tmp_path / "pipe.png")
    _png(tmp_path / "good.png")
    with _no_hang(), pytest.raises(InputError, match=r"a fifo \(named pipe\), not a regular file: not opened"):
        if via == "decode":
            decode_image(fifo)
        elif via == "load_image":
            load_image(fifo)
        else:
            (tmp_path / "list.txt").write_text("good.png\npipe.png\n")
            source = open_images(tmp_path / "list.txt")
            assert len(source) == 2
            source.load(0)
            source.load(1)


@pytest.mark.parametrize("name", ["data.npz", "list.txt", "folder"])
def test_class10_a_fifo_given_as_the_data_spec_is_refused(tmp_path, name):
    """class 10, a special file as data: a fifo named as the data spec is refused as one, not opened or listed."""
    fifo = _fifo(tmp_path / name)
    with _no_hang(), pytest.raises(InputError, match=r"is a fifo \(named pipe\), not a file or a folder"):
        open_images(fifo)


def test_class10_a_fifo_among_cifar_batches_is_refused_not_opened(tmp_path):
    """class 10, a special file hangs: a fifo named data_batch_2 beside a real data_batch_1 blocked the read."""
    root = _cifar(tmp_path / "cifar", [0, 1])
    (root / "test_batch").rename(root / "data_batch_1")
    _fifo(root / "data_batch_2")
    with _no_hang(), pytest.raises(InputError, match=r"data_batch_2: a fifo \(named pipe\)"):
        open_images(root, split="train")


# ------------------------------------------------------------------------ class 10: control characters


@pytest.mark.parametrize("raw, shown", [("a\x1b[31mred", "a\\x1b[31mred"), ("over\rwrite", "over\\rwrite"),
                                        ("two\nlines", "two\\nlines"), ("bell\x07", "bell\\x07"),
                                        ("bidi\u202egnp.exe", "bidi\\u202egnp.exe"), ("bad\udcffbyte", "bad\\xffbyte"),
                                        ("c1\x9bcsi", "c1\\x9bcsi")])
def test_class10_printable_escapes_control_characters(raw, shown):
    """class 10, control characters reach the terminal raw: the one helper escapes them (repr-like)."""
    assert printable(raw) == shown
    assert printable(shown) == shown  # backslashes and printable text are left alone
    assert printable("données 日本 $\\x$.png") == "données 日本 $\\x$.png"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "net.py"
    path.write_text(NET)
    return f"{path}:make"


@pytest.mark.parametrize("bad", ["\x1b[31mred\x1b[0m", "over\rwritten", "fake\nline", "\x1b]0;title\x07"])
def test_class10_file_names_on_the_terminal_are_escaped(tmp_path, net, capsys, bad):
    """class 10, control characters in file names reach the terminal raw: the audit's skipped list and error
    lines show them escaped."""
    root = tmp_path / "data"
    root.mkdir()
    _png(root / "good.png")
    (root / f"broken{bad}.png").write_bytes(b"not an image")
    assert main(["audit", "--model", net, "--data", str(root), "--no-progress", "--transform", "diagonal:1"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "broken" in text and printable(bad) in text
    for ch in "\x1b\r\x07":
        assert ch not in text
    assert "fake\nline" not in text
    code = main(["audit", "--model", net, "--data", str(root / f"missing{bad}"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and printable(bad) in err and len(err.strip().splitlines()) == 1
    assert not any(ch in err for ch in "\x1b\r\x07")


# ------------------------------------------------------------------------ class 10: out-of-range labels


@pytest.mark.parametrize("label", ["-1", "-7", str(2 ** 70), str(2 ** 63)])
@pytest.mark.parametrize("sep", ["\t", " "])
def test_class10_out_of_range_labels_in_a_list_file_are_refused_with_the_line(tmp_path, label, sep):
    """class 10, out-of-range integers (labels in a list file): negative or beyond int64 is refused in one line
    naming the file and the line (a -1 was taken silently as 'unlabelled', 2**70 ended in a traceback)."""
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", 1)
    (tmp_path / "list.txt").write_text(f"# images\na.png{sep}0\nb.png{sep}{label}\n")
    with pytest.raises(InputError) as info:
        open_images(tmp_path / "list.txt")
    message = str(info.value)
    assert "list.txt, line 3" in message and "label" in message and "\n" not in message
    (tmp_path / "ok.txt").write_text(f"a.png{sep}0\nb.png{sep}{2 ** 63 - 1}\n")
    assert open_images(tmp_path / "ok.txt").labels.tolist() == [0, 2 ** 63 - 1]


@pytest.mark.parametrize("labels, names", [(np.array([0, -5, 1]), None), (np.array([0, 10, 1]), list("abcdefghij")),
                                           (np.array([0, 3, 1]), ["cat", "dog", "cow"]),
                                           (np.array([0, 2 ** 64 - 1, 1], np.uint64), None),
                                           (np.array([0.0, 2.0 ** 70, 1.0]), None)])
def test_class10_out_of_range_labels_in_a_npz_are_refused(tmp_path, labels, names):
    """class 10, out-of-range labels: a .npz label below -1, at or over the number of class names, or beyond
    int64 was kept (wrapped to a negative, or scored against a class that does not exist)."""
    extra = {} if names is None else {"class_names": np.array(names)}
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 8, 8, 3), np.uint8), labels=labels, **extra)
    for read in (open_images, load_dataset):
        with pytest.raises(InputError, match=r"d\.npz: label .* \(image 1\) is out of range"):
            read(tmp_path / "d.npz")


def test_class10_a_huge_list_label_with_a_class_map_is_one_lookup():
    """class 10, out-of-range integers: a list label of 10**18 with --class-map built a table of 10**18 entries."""
    from shiftlab.measure.labels import resolve_labels

    with _no_hang():
        mapping = resolve_labels(torch.tensor([0, 10 ** 18, 3, -1]), None, None, 5, {"0": 4, "3": 1})
    assert mapping.labels.tolist() == [4, -1, 1, -1]


def _cifar(root, labels, names=tuple(f"c{i}".encode() for i in range(10))):
    root.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": list(labels),
             b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    (root / "test_batch").write_bytes(pickle.dumps(batch))
    if names is not None:
        (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": list(names)}))
    return root


@pytest.mark.parametrize("bad", [10, 11, -1, 2 ** 70])
def test_class10_cifar_labels_outside_the_classes_are_refused(tmp_path, bad):
    """class 10, labels outside the class range in CIFAR folders counted as misses: a label 10 of a 10-class
    CIFAR folder (or -1, or 2**70) is refused in one line naming the batch file and the image."""
    root = _cifar(tmp_path / "cifar", [0, 9, bad, 3])
    for read in (open_images, load_dataset):
        with pytest.raises(InputError) as info:
            read(root)
        assert "test_batch" in str(info.value) and "(image 2) is out of range" in str(info.value)
    assert open_images(_cifar(tmp_path / "ok", [0, 9, 5, 3])).labels.tolist() == [0, 9, 5, 3]


def test_class10_cifar_without_meta_has_ten_classes(tmp_path):
    """class 10, CIFAR labels outside the class range: without batches.meta a CIFAR-10 batch still has 10."""
    with pytest.raises(InputError, match="the 10 classes are 0-9"):
        open_images(_cifar(tmp_path / "c", [0, 12], names=None))


# ------------------------------------------------------------------------ class 10: non-array .npz members


def _zip_member(path, name, payload: bytes, good=True):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        if good:
            import io

            buffer = io.BytesIO()
            np.save(buffer, np.zeros((2, 8, 8, 3), np.uint8))
            z.writestr("images.npy", buffer.getvalue())
        z.writestr(name, payload)


@pytest.mark.parametrize("case", ["images raw bytes", "labels raw bytes", "class_names raw bytes",
                                  "class_names 0-d", "labels object", "class_names object"])
def test_class10_non_array_npz_members_give_one_line(tmp_path, case):
    """class 10, non-array .npz members end in tracebacks: a member that is not a .npy file, a 0-d or object
    array gives one line naming the member (allow_pickle stays False)."""
    path = tmp_path / "d.npz"
    member = case.split()[0]
    images = np.zeros((2, 8, 8, 3), np.uint8)
    if case.endswith("raw bytes"):
        _zip_member(path, f"{member}.npy", b"just some text, not a .npy file", good=member != "images")
    elif case == "class_names 0-d":
        np.savez(path, images=images, class_names=np.array(3))
    else:
        np.savez(path, images=images, **{member: np.array([{"a": 1}, None], dtype=object)})
    for read in (open_images, load_dataset):
        with pytest.raises(ShiftlabError) as info:
            read(path)
        assert f"'{member}'" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------ class 10: EXIF orientation


# orientation tag -> the transpose a viewer applies to show the stored pixels upright
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270,
            8: Image.Transpose.ROTATE_90, 5: Image.Transpose.TRANSPOSE}


def _oriented(path, orientation, fmt):
    stored = np.zeros((16, 24, 3), np.uint8)  # 24 wide, 16 high; a bright block at the stored top-left
    stored[:8, :8] = 255
    stored[8:, 16:, 2] = 200
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    expected = np.asarray(im.transpose(_UPRIGHT[orientation]), np.float32) / 255
    return path, expected


@pytest.mark.parametrize("orientation, fmt", [(6, "JPEG"), (8, "JPEG"), (3, "JPEG"), (6, "PNG"), (2, "PNG"),
                                              (5, "PNG")])
def test_class10_exif_orientation_is_applied(tmp_path, orientation, fmt):
    """class 10, EXIF orientation ignored (phone photos went in sideways): decoding turns the image upright."""
    path, expected = _oriented(tmp_path / f"photo.{fmt.lower()}", orientation, fmt)
    tolerance = 0.08 if fmt == "JPEG" else 1e-6
    got = decode_image(path)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < tolerance
    assert np.abs(load_image(path) - expected).mean() < tolerance
    source = open_images(tmp_path)
    assert tuple(source.load(0).shape) == (3, *expected.shape[:2])
    assert torch.allclose(source.load(0).permute(1, 2, 0), torch.from_numpy(got))
