"""Issue 17, numbers that mean something else: class 5 (the input size taken from one image), class 8 (outputs
and references), class 9 (nondeterministic models), and from class 10 a huge --image-size and a --margin that
does not fit the input. Each test names its class; each instance fails on the code before the fix."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import shiftlab
from shiftlab.cli import main
from shiftlab.errors import InputError


def _cnn(classes: int = 6, seed: int = 0) -> nn.Module:
    """A small CNN that declares no input size (no pretrained_cfg)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)).eval()


def _png(path, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _folder(root, sizes, tiny_first: tuple[int, int] | None = None):
    root.mkdir(parents=True, exist_ok=True)
    if tiny_first is not None:
        _png(root / "000_stray.png", *tiny_first, seed=99)
    for n, (h, w) in enumerate(sizes):
        _png(root / f"img{n:02d}.png", h, w, seed=n)
    return root


NET_PY = '''
import torch
import torch.nn.functional as F
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6))

class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 192, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(192, 10)
    def forward(self, x):
        f = self.body(x)
        return f, self.head(f)

def pair():
    return _Pair()

class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make()
    def forward(self, x):
        return self.net(x) + 0.5 * torch.randn(x.shape[0], 6)

def noisy():
    return _Noisy()
'''


@pytest.fixture
def net_py(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


# ------------------------------------------------------------------------------------------------ class 5

def test_class5_size_from_data_a_stray_1x1_image_sorted_first_changes_neither_size_nor_metric(tmp_path):
    """class 5, numbers that mean something else: one 1x1 image sorted first used to set a 1x1 input for all."""
    model = _cnn()
    clean = _folder(tmp_path / "clean", [(32, 32)] * 5)
    stray = _folder(tmp_path / "stray", [(32, 32)] * 5, tiny_first=(1, 1))
    a = shiftlab.audit(model, str(clean), transform="diagonal:3:circular", workers=0)
    b = shiftlab.audit(model, str(stray), transform="diagonal:3:circular", workers=0)
    assert b.preprocessing["model_input"] == a.preprocessing["model_input"] == [32, 32]
    assert b.n == 5 and len(b.skipped) == 1 and "too small" in b.skipped[0][1] and "000_stray" in b.skipped[0][0]
    assert b.metrics["top1_change"].value == a.metrics["top1_change"].value
    assert b.metrics["top1_change"].n == a.metrics["top1_change"].n


@pytest.mark.parametrize("tiny", [(1, 1), (3, 40), (5, 5)])
def test_class5_size_from_data_tiny_images_are_skipped_and_counted_never_sized_from(tmp_path, tiny):
    """class 5, numbers that mean something else: tiny images (1x1, a 3-px strip, 5x5) are left out and counted."""
    folder = _folder(tmp_path / "d", [(24, 24)] * 3, tiny_first=tiny)
    result = shiftlab.audit(_cnn(), str(folder), transform="circular:2", workers=0)
    assert result.preprocessing["model_input"] == [24, 24]
    assert result.n == 3 and result.to_dict()["images"]["skipped"] == 1


def test_class5_size_from_data_is_the_median_of_a_sample_not_the_first_image(tmp_path):
    """class 5, numbers that mean something else: images of 20, 40 and 48 px (the 20-px one sorted first) are
    measured at the median size, and the rule is stated in the JSON and the note."""
    folder = _folder(tmp_path / "d", [(20, 20), (40, 40), (48, 48)])
    result = shiftlab.audit(_cnn(), str(folder), transform="circular:2", workers=0)
    assert result.preprocessing["model_input"] == [224, 224]  # issue 23: sizes differ -> 224 (stride 2), not 20
    assert "default 224" in result.preprocessing["input_size_rule"]
    assert any("median" in note and "224x224" in note for note in result.notes)


def test_class5_size_from_data_all_tiny_images_are_refused_with_one_line(tmp_path):
    """class 5, numbers that mean something else: data of only tiny images is refused, not measured at 2x2."""
    folder = _folder(tmp_path / "d", [(2, 2), (2, 3), (4, 4)])
    with pytest.raises(InputError, match="under 8 px"):
        shiftlab.audit(_cnn(), str(folder), transform="circular:2", workers=0)


def test_class5_size_from_data_finetuning_is_not_sized_by_a_stray_first_image(tmp_path):
    """class 5, numbers that mean something else: fine-tuning sizes its views as the audit does."""
    folder = _folder(tmp_path / "d", [(32, 32)] * 4, tiny_first=(1, 1))
    result = shiftlab.finetune(_cnn(), str(folder), fix="blur", steps=1, batch_size=2, workers=0)
    assert result.log["input_size"] == [32, 32]


def test_class5_size_from_data_cli_states_the_rule_on_the_terminal_and_in_the_json(tmp_path, net_py, capsys):
    """class 5, numbers that mean something else: the CLI says where the size comes from."""
    folder = _folder(tmp_path / "d", [(32, 32)] * 3, tiny_first=(1, 1))
    out = tmp_path / "a.json"
    assert main(["audit", "--model", f"{net_py}:make", "--data", str(folder), "--transform", "circular:2",
                 "--json", str(out), "--no-progress", "--workers", "0"]) == 0
    doc = json.loads(out.read_text())
    assert doc["preprocessing"]["model_input"] == [32, 32] and "common size" in doc["preprocessing"]["input_size_rule"]
    assert doc["images"]["skipped"] == 1
    printed = capsys.readouterr().out
    assert "note: the model declares no input size" in printed and "common size" in printed


# ------------------------------------------------------------------------------------------------ class 8

class _Outputs(nn.Module):
    """Class scores (10) and features (192), returned in various containers."""

    def __init__(self, form: str):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 192, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(192, 10)
        self.form = form

    def forward(self, x):
        f = self.body(x)
        logits = self.head(f)
        if self.form == "tuple":
            return f, logits
        if self.form == "list":
            return [f, logits]
        if self.form == "triple":
            return logits, f, f.mean(1, keepdim=True)
        return _Named(f, logits)


_Named = collections.namedtuple("_Named", ["features", "logits"])


@pytest.mark.parametrize("form", ["tuple", "list", "triple"])
def test_class8_outputs_several_unnamed_outputs_are_refused_listing_them(form):
    """class 8, outputs: (features, logits) used to have its 192 features measured as classes without a word."""
    x = torch.rand(3, 3, 12, 12)
    with pytest.raises(InputError, match=r"output_key") as info:
        shiftlab.audit(_Outputs(form), x, transform="circular:2", normalize=False)
    assert "(1, 192)" in str(info.value) and "(1, 10)" in str(info.value)
    chosen = shiftlab.audit(_Outputs(form), x, transform="circular:2", normalize=False,
                            output_key=1 if form != "triple" else 0)
    assert chosen.classes == 10


def test_class8_outputs_a_namedtuple_logits_field_is_measured_not_its_first_field():
    """class 8, outputs: a namedtuple (features, logits) is measured by its logits field."""
    result = shiftlab.audit(_Outputs("named"), torch.rand(3, 3, 12, 12), transform="circular:2", normalize=False)
    assert result.classes == 10


def test_class8_outputs_cli_refuses_a_tuple_with_advice_and_exit_2(tmp_path, net_py, capsys):
    """class 8, outputs: the CLI names --output-key, in one line, exit code 2; with it the audit runs."""
    folder = _folder(tmp_path / "d", [(16, 16)] * 2)
    argv = ["audit", "--model", f"{net_py}:pair", "--data", str(folder), "--transform", "circular:2", "--no-progress",
            "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--output-key" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert main(argv + ["--output-key", "1"]) == 0


@pytest.mark.parametrize("classes", [6, 1000])
def test_class8_reference_with_another_label_space_is_refused(classes):
    """class 8, references: a reference with another number of classes used to be compared anyway."""
    x = torch.rand(4, 3, 16, 16)
    with pytest.raises(InputError, match="classes"):
        shiftlab.audit(_cnn(10), x, transform="circular:2", normalize=False, reference=_cnn(classes, seed=1))


def test_class8_reference_audit_with_another_label_space_is_refused():
    """class 8, references: an earlier AuditResult of a 6-class model is no reference for a 10-class one."""
    x = torch.rand(4, 3, 16, 16)
    earlier = shiftlab.audit(_cnn(6), x, transform="circular:2", normalize=False, predictions=True)
    with pytest.raises(InputError, match="classes"):
        shiftlab.audit(_cnn(10), x, transform="circular:2", normalize=False, reference=earlier)


def test_class8_reference_dense_reference_or_dense_model_gets_a_clear_error():
    """class 8, references: a dense (B, K, H, W) reference used to crash; a dense model dropped its reference."""
    x = torch.rand(4, 3, 16, 16)
    dense = nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular")
    with pytest.raises(InputError, match="dense"):
        shiftlab.audit(_cnn(6), x, transform="circular:2", normalize=False, reference=dense)
    with pytest.raises(InputError, match="dense"):
        shiftlab.audit(dense, x, transform="circular:2", normalize=False, reference=_cnn(6))


def test_class8_reference_fix_and_reference_together_are_refused_with_advice(tmp_path, net_py, capsys):
    """class 8, references: --fix with --reference silently made agreement mean agreement with another model."""
    folder = _folder(tmp_path / "d", [(16, 16)] * 2)
    assert main(["audit", "--model", f"{net_py}:make", "--fix", "blur", "--reference", f"{net_py}:make",
                 "--data", str(folder), "--transform", "circular:2", "--no-progress", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--fix" in err and "--reference" in err and "unconverted" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------ class 9

class _StickyDropout(nn.Dropout):
    """A dropout that stays in training mode whatever ``eval()`` says."""

    def train(self, mode: bool = True):
        return super().train(True)


class _Random(nn.Module):
    def __init__(self, kind: str, circular: bool = False):
        super().__init__()
        torch.manual_seed(0)
        pad = "circular" if circular else "zeros"
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode=pad), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 6)
        self.sticky = _StickyDropout(0.5)
        self.kind = kind

    def forward(self, x):
        h = self.body(x)
        if self.kind == "dropout":
            h = F.dropout(h, 0.5, training=True)
        elif self.kind == "noise":
            h = h + 0.2 * torch.randn_like(h)
        elif self.kind == "sticky":
            h = self.sticky(h)
        return self.head(h)


@pytest.mark.parametrize("kind", ["dropout", "noise", "sticky"])
def test_class9_nondeterministic_model_is_flagged_in_warnings_and_json(kind):
    """class 9, nondeterministic models: dropout left on, noise in forward, a dropout eval() cannot turn off."""
    result = shiftlab.audit(_Random(kind), torch.rand(4, 3, 16, 16), transform="circular:2", normalize=False)
    assert any("nondeterministic" in w and "model" in w for w in result.warnings)
    doc = result.to_dict()
    assert doc["nondeterminism"]["model"] > 0 and any("nondeterministic" in w for w in doc["warnings"])


def test_class9_nondeterministic_reference_is_flagged_and_a_deterministic_model_is_not():
    """class 9, nondeterministic models: a noisy reference is flagged; the deterministic model is not (control)."""
    x = torch.rand(4, 3, 16, 16)
    plain = shiftlab.audit(_Random("none"), x, transform="circular:2", normalize=False)
    assert not any("nondeterministic" in w for w in plain.warnings) and plain.nondeterminism["model"] == 0
    with_ref = shiftlab.audit(_Random("none"), x, transform="circular:2", normalize=False, reference=_Random("noise"))
    assert any("reference is nondeterministic" in w for w in with_ref.warnings)


def test_class9_nondeterministic_model_cli_prints_the_warning(tmp_path, net_py, capsys):
    """class 9, nondeterministic models: the terminal says so."""
    folder = _folder(tmp_path / "d", [(16, 16)] * 3)
    assert main(["audit", "--model", f"{net_py}:noisy", "--data", str(folder), "--transform", "circular:2",
                 "--no-progress", "--workers", "0"]) == 0
    assert "warning: the model is nondeterministic" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["dropout", "noise", "sticky"])
def test_class9_certify_says_nondeterministic_instead_of_blaming_aliasing(kind):
    """class 9, nondeterministic models: certify's failure names the model's randomness, not the shifts."""
    result = shiftlab.certify(_Random(kind, circular=True), (8, 8), shifts=2)
    assert not result.passed and result.nondeterministic
    assert "nondeterministic" in result.reason and result.to_dict()["nondeterministic"] is True
    with pytest.raises(AssertionError, match="nondeterministic"):
        shiftlab.assert_certified(_Random(kind, circular=True), (8, 8), shifts=2)
    control = shiftlab.certify(_Random("none", circular=True), (8, 8), shifts=2)
    assert control.passed and not control.nondeterministic


# ------------------------------------------------------------------------------------------------ class 10

@pytest.mark.parametrize("argv", [["--image-size", "100000"], ["--image-size", "5000"],
                                  ["--transform", "crop:100000:32"], ["--transform", "diagonal:100000:crop"]])
def test_class10_huge_image_size_is_refused_with_one_line_before_any_work(tmp_path, net_py, capsys, argv):
    """class 10, everything else: a huge --image-size (or protocol size) is refused at once, exit 2."""
    folder = _folder(tmp_path / "d", [(16, 16)] * 2)
    assert main(["audit", "--model", f"{net_py}:make", "--data", str(folder), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "4096" in err and len(err.splitlines()) == 1


def test_class10_huge_image_size_python_api_refuses_before_loading_the_model():
    """class 10, everything else: audit(image_size=100000) is refused before the model spec is even resolved."""
    with pytest.raises(InputError, match="4096"):
        shiftlab.audit("torchvision:no_such_model", torch.rand(2, 3, 8, 8), image_size=100000)
    with pytest.raises(InputError, match="4096"):
        shiftlab.models.Preprocessing().with_overrides(input_size=(224, 100000))


def _layer_audit(margin=None, size=40):
    x = torch.rand(3, 3, size, size)
    return shiftlab.audit(_cnn(), x, transform="diagonal:8:crop", normalize=False, layers=["0", "2"],
                          margin=margin)


def test_class10_margin_default_fits_a_small_input():
    """class 10, everything else: the default margin (16 px) used to leave nothing of a 32-px input: n = 0."""
    result = _layer_audit()
    assert result.preprocessing["model_input"] == [32, 32] and result.margin == 4
    assert result.layers["0"]["equivariance"].n > 0 and result.layers["2"]["equivariance"].n > 0


def test_class10_margin_that_leaves_nothing_is_refused_naming_margin_and_the_input():
    """class 10, everything else: a margin of half the input or more is refused, naming --margin and 32x32."""
    with pytest.raises(InputError, match=r"margin 16 .*--margin.*32x32"):
        _layer_audit(margin=16)


def test_class10_margin_exclusions_are_counted_apart_from_the_stride():
    """class 10, everything else: pairs the margin empties are not blamed on the stride (unrepresentable)."""
    result = _layer_audit(margin=12)
    deep = result.layers["2"]["equivariance"]
    # diagonal:8 pairs (0, k), k = 1..8: odd k are not multiples of the stride 2; k = 8 moves the 16-px map by 4,
    # which a 6-px feature margin leaves nothing of
    assert deep.extra["unrepresentable"] == 4 * 3 and deep.extra["margin_excluded"] == 1 * 3
    assert deep.n == 3 * 3


def test_class10_margin_cli_message_names_margin_not_the_stride(tmp_path, capsys):
    """class 10, everything else: the terminal blames --margin, not the stride, when the margin empties a map."""
    folder = _folder(tmp_path / "d", [(40, 40)] * 2)
    net = tmp_path / "net.py"
    net.write_text(NET_PY)
    assert main(["audit", "--model", f"{net}:make", "--data", str(folder), "--transform", "diagonal:8:crop",
                 "--image-size", "32", "--layers", "0,2", "--margin", "12", "--no-progress", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "--margin 12" in out and "32x32" in out
