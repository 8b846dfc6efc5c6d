"""The format documents match what is written, both ways (issue 23 point 6).

Each of docs/inspect-json.md, docs/demo-json.md, docs/experiment-json.md and docs/finetune-log.md has key tables
(header ``| key path | type | when | meaning |``). The tests run each command (or the library function it calls)
at the smallest size, collect the key paths of the JSON written, and assert that every written key path is
documented and that every documented key path marked ``always`` is written. Key paths: dotted keys, ``[]`` for
the items of a list, ``*`` in a segment for keys that are data (variant names, metric names); a type written
``<name>`` hands the subtree to the rows ``<name>.KEY`` (a shape shared by many keys, such as ``<metric>``).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HEADER = ["key path", "type", "when", "meaning"]
FORMAT_DOCS = ("inspect-json.md", "demo-json.md", "experiment-json.md", "finetune-log.md")


# ----------------------------------------------------------------------------------------- the documents' tables


@dataclass(frozen=True)
class Row:
    pattern: tuple[str, ...]
    type: str
    required: bool
    section: str

    @property
    def shape(self) -> str | None:
        found = re.search(r"<([a-z_]+)>", self.type)
        return found.group(1) if found else None

    @property
    def text(self) -> str:
        return ".".join(self.pattern)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def key_rows(doc: str) -> list[Row]:
    """The rows of every key table of a document, each with the heading it stands under."""
    rows, section, in_table = [], "", False
    for line in doc.splitlines():
        if line.startswith("#"):
            section, in_table = line.lstrip("#").strip(), False
        elif line.startswith("|"):
            cells = _cells(line)
            if [c.lower() for c in cells] == HEADER:
                in_table = True
            elif in_table and not set(cells[0]) <= set("-: "):
                for path in cells[0].split(","):  # `a`, `b`: two keys that share a row
                    rows.append(Row(tuple(path.strip().strip("`").split(".")), cells[1].replace("`", ""),
                                    cells[2].startswith("always"), section))
        else:
            in_table = False
    return rows


def rows_of(doc: str, *sections: str) -> list[Row]:
    """The rows under headings that start with one of ``sections`` (all rows when none), and every shape row."""
    return [r for r in key_rows(doc) if not sections or r.pattern[0].startswith("<")
            or any(r.section.startswith(s) for s in sections)]


# ----------------------------------------------------------------------------------------- what is written


def key_paths(obj, prefix: tuple[str, ...] = (), objects: bool = False) -> set[tuple[str, ...]]:
    """Every key path of a JSON value: one per dict key; the items of a list add ``[]`` to the segment. With
    ``objects``, the paths whose value is an object instead (``c[]``: an item of c is; ``c`` null is not)."""
    out = {prefix} if objects and prefix and isinstance(obj, dict) else set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = (*prefix, str(key))
            if not objects:
                out.add(path)
            out |= key_paths(value, path, objects)
    elif isinstance(obj, list):
        inner = (*prefix[:-1], prefix[-1] + "[]") if prefix else ("[]",)
        for value in obj:
            out |= key_paths(value, inner, objects)
    return out


def _segment(pattern: str, written: str) -> bool:
    p_base, w_base = pattern.rstrip("[]"), written.rstrip("[]")
    if len(pattern) - len(p_base) != len(written) - len(w_base):
        return False
    return fnmatch.fnmatchcase(w_base, p_base.replace("[", "[[]"))


def _match(pattern, path, whole: bool = True) -> bool:
    """Whether ``path`` is ``pattern``; ``whole``: a row ``c[]`` also documents the key ``c`` (a list) itself."""
    if len(pattern) != len(path) or not all(_segment(p, w) for p, w in zip(pattern[:-1], path[:-1])):
        return False
    return bool(path) and (_segment(pattern[-1], path[-1])
                           or (whole and _segment(pattern[-1].removesuffix("[]"), path[-1])))


def _find(path, rows: list[Row], shapes: dict) -> Row | None:
    """The row that documents ``path``: its own, or a shape's row below a row whose type is ``<shape>``."""
    for row in rows:
        n = len(row.pattern)
        if _match(row.pattern, path):
            return row
        if row.shape and len(path) > n and _match(row.pattern, path[:n], whole=False):
            hit = _find(path[n:], shapes.get(row.shape, []), shapes)
            if hit is not None:
                return hit
    return None


def compare(written: dict, rows: list[Row]) -> tuple[list[str], list[str]]:
    """``(undocumented, unwritten)``: key paths written that no row documents, and rows marked ``always`` that
    nothing written matches (a row counts only where its parent is an object written: ``always`` means
    "whenever the object it belongs to is there", not null; keys that are data, ``*``, may be none)."""
    shapes: dict[str, list[Row]] = {}
    plain = []
    for row in rows:
        if row.pattern[0].startswith("<"):
            shapes.setdefault(row.pattern[0].strip("<>"), []).append(Row(row.pattern[1:], row.type, row.required,
                                                                         row.section))
        else:
            plain.append(row)
    paths, objects = key_paths(written), key_paths(written, objects=True)
    hits, undocumented = set(), []
    for path in sorted(paths):
        row = _find(path, plain, shapes)
        if row is None:
            undocumented.append(".".join(path))
        else:
            hits.add(row)
    used_shapes = {r.shape for r in hits if r.shape}
    unwritten = []
    for row in plain:
        parent = row.pattern[:-1]
        parent_there = not parent or any(_match(parent, p, whole=False) for p in objects)
        if row.required and parent_there and "*" not in row.pattern[-1] and row not in hits:  # a map may be empty
            unwritten.append(row.text)
    for name in used_shapes:
        for row in shapes.get(name, []):
            if row.required and len(row.pattern) == 1 and row not in hits:
                unwritten.append(f"<{name}>.{row.text}")
    return undocumented, unwritten


def assert_documented(written: dict, doc_name: str, *sections: str) -> None:
    rows = rows_of((DOCS / doc_name).read_text(encoding="utf-8"), *sections)
    assert rows, f"no key table found in docs/{doc_name} {sections}"
    undocumented, unwritten = compare(json.loads(json.dumps(written)), rows)
    assert not undocumented, f"written but not in docs/{doc_name}: {undocumented}"
    assert not unwritten, f"in docs/{doc_name} as 'always' but not written: {unwritten}"


# ----------------------------------------------------------------------------------------- the checker itself


_TOY_DOC = """
## Top
| key path | type | when | meaning |
| --- | --- | --- | --- |
| `a` | int | always | a number |
| `b` | object | always | a map |
| `b.*` | `<m>` | always | one metric per name |
| `c[]` | object | optional: with --c | items |
| `c[].x` | str | always | the item's name |

## Shapes
| key path | type | when | meaning |
| --- | --- | --- | --- |
| `<m>.value` | float | always | the value |
| `<m>.flag` | str | optional | a flag |
"""


def test_feature_checker_reports_an_undocumented_key_and_an_unwritten_one():
    rows = key_rows(_TOY_DOC)
    good = {"a": 1, "b": {"x": {"value": 0.5}, "y": {"value": 1.0, "flag": "f"}}, "c": [{"x": "k"}]}
    assert compare(good, rows) == ([], [])
    assert compare({**good, "extra": 1}, rows)[0] == ["extra"]  # a key added without documentation
    assert compare({**good, "b": {"x": {"value": 0.5, "new": 2}}}, rows)[0] == ["b.x.new"]  # inside a shape
    assert compare({"b": good["b"]}, rows)[1] == ["a"]  # documented as always, not written
    assert compare({**good, "b": {"x": {"flag": "f"}}}, rows)[1] == ["<m>.value"]
    assert compare({**good, "c": [{}]}, rows)[1] == ["c[].x"]
    assert compare({"a": 1, "b": {}}, rows) == ([], [])  # an optional list left out, with its items' keys


def test_exception_an_object_where_the_doc_says_a_list_is_reported():
    rows = key_rows(_TOY_DOC)
    assert compare({"a": 1, "b": {}, "c": {"x": "k"}}, rows)[0] == ["c.x"]  # c[].x is documented, c.x is not


# ----------------------------------------------------------------------------------------- inspect


def test_feature_inspect_json_matches_its_document(tmp_path, capsys):
    from shiftlab.cli import main

    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))\n")
    plain, fixed = tmp_path / "plain.json", tmp_path / "fixed.json"
    assert main(["inspect", "--model", f"{tmp_path / 'net.py'}:make", "--input-size", "16", "16",
                 "--json", str(plain)]) == 0
    assert main(["fix", "--model", f"{tmp_path / 'net.py'}:make", "--method", "aps", "--out",
                 str(tmp_path / "f.pt")]) == 0
    assert main(["inspect", "--model", f"{tmp_path / 'net.py'}:make", "--weights", str(tmp_path / "f.pt"),
                 "--input-size", "18", "18", "--json", str(fixed)]) == 0  # a file never runs the code it names
    for out in (plain, fixed):
        written = json.loads(out.read_text())
        assert written["findings"], "the tiny model must have findings, or their keys go unchecked"
        assert_documented(written, "inspect-json.md")
    written = json.loads(fixed.read_text())
    assert written["warnings"] and written["conversion"]["layers"], "the optional parts must be written once"
    rows = key_rows((DOCS / "inspect-json.md").read_text(encoding="utf-8"))
    written["findings"][0]["new_key"] = 1  # a key added to the output without documentation is reported
    assert compare(written, rows)[0] == ["findings[].new_key"]


# ----------------------------------------------------------------------------------------- demo


def test_feature_demo_json_matches_its_document(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from shiftlab.cli import main

    yy, xx = np.mgrid[0:40, 0:48]
    Image.fromarray(((np.sin(xx / 3.0) + np.cos(yy / 5.0)) * 60 + 128).astype(np.uint8)).save(tmp_path / "p.png")
    out = tmp_path / "demo.json"
    assert main(["demo", "all", "--image", str(tmp_path / "p.png"), "--shift", "3", "5", "--iterations", "2",
                 "--out", str(tmp_path / "figs"), "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(written) == {"pixel", "edges", "pooling", "tandem"}
    assert_documented(written, "demo-json.md")


# ----------------------------------------------------------------------------------------- experiments

# experiment -> (its module, the networks run: few, and every optional key of a network's entry among them)
_MODULES = {"architecture": ("architecture", {"variants": ("aps-gap-circular",)}),
            "unseen-positions": ("positions", {"variants": ("aps-gap-circular",)}),
            "augmentation": ("augmentation", {"conditions": ("baseline + shift 8",)}),
            "rotation": ("rotation", {"conditions": ("none",)}),
            "subsampling": ("subsampling", {"variants": ("stride-gap-circular", "lps-gap-circular",
                                                         "tips-gap-circular")}),
            "subpixel": ("subpixel", {"variants": ("baseline", "aps")}),
            "segmentation": ("segmentation", {"variants": ("baseline", "lpu")}),
            "transformer": ("transformer", {})}


def _tiny_experiment(name: str, monkeypatch) -> dict:
    """The experiment's own run function on its QUICK configuration made tinier: 40 training and 10 test digits
    (segmentation: 8 and 4 canvases), one epoch, one seed, a few networks. The keys do not depend on these sizes."""
    import importlib

    import shiftlab.experiments.digits as digits
    from shiftlab.experiments.train import TrainConfig

    module_name, networks = _MODULES[name]
    module = importlib.import_module(f"shiftlab.experiments.{module_name}")
    real = digits.make_canvas_split
    if hasattr(module, "make_canvas_split"):
        monkeypatch.setattr(module, "make_canvas_split",
                            lambda *a, **k: real(*a, **{**k, "train_limit": 40, "test_limit": 10}))
    for key, value in {"n_train": 8, "n_test": 4}.items():
        if key in module.QUICK:
            monkeypatch.setitem(module.QUICK, key, value)
    train = module.QUICK["train"]
    monkeypatch.setitem(module.QUICK, "train", TrainConfig(epochs=1, batch_size=train.batch_size, lr=train.lr))
    return getattr(module, "run_" + name.replace("-", "_"))(seeds=1, quick=True, **networks)


@pytest.mark.parametrize("name", list(_MODULES))
def test_feature_experiment_json_matches_its_document(name, monkeypatch):
    result = _tiny_experiment(name, monkeypatch)
    assert result["experiment"] == name and result["variants"]
    assert_documented(result, "experiment-json.md", "The envelope", f"`{name}`")


def test_feature_experiment_cli_writes_the_result_it_was_given(tmp_path, monkeypatch, capsys):
    """The file ``shiftlab experiment`` writes holds exactly the run function's result (the dict checked above)."""
    from shiftlab.cli import main

    import shiftlab.experiments.rotation as module

    result = _tiny_experiment("rotation", monkeypatch)
    monkeypatch.setattr(module, "run_rotation", lambda **kw: result)
    assert main(["experiment", "rotation", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "rotation.json").read_text()) == json.loads(json.dumps(result))


def test_feature_every_experiment_has_a_section():
    doc = (DOCS / "experiment-json.md").read_text(encoding="utf-8")
    from shiftlab.cli.experiment import EXPERIMENTS

    sections = {r.section for r in key_rows(doc)}
    assert set(EXPERIMENTS) == set(_MODULES)
    assert {f"`{name}`" for name in EXPERIMENTS} <= {s.split(":")[0] for s in sections}


# ----------------------------------------------------------------------------------------- the fine-tuning log

_NET = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    return net
"""


def test_feature_finetune_log_matches_its_document(tmp_path, capsys):
    from _subprocesses import write_class_images

    from shiftlab.cli import main

    (tmp_path / "net.py").write_text(_NET)
    write_class_images(tmp_path / "images", 2)
    out = tmp_path / "ft.pt"
    assert main(["finetune", "--model", f"{tmp_path / 'net.py'}:make", "--fix", "lps", "--data",
                 str(tmp_path / "images"), "--steps", "2", "--batch-size", "4", "--log-every", "1", "--threads", "1",
                 "--workers", "0", "--out", str(out), "--no-progress"]) == 0
    written = json.loads(out.with_suffix(".json").read_text())
    assert len(written["entries"]) == 2 and "lps_temperature" in written["entries"][0]
    assert_documented(written, "finetune-log.md")


# ----------------------------------------------------------------------------------------- where they are linked


@pytest.mark.parametrize("doc", FORMAT_DOCS)
def test_feature_each_document_is_linked_and_its_example_is_documented(doc):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"(docs/{doc})" in readme
    text = (DOCS / doc).read_text(encoding="utf-8")
    example = re.search(r"```json\n(.*?)\n```", text, re.S)
    assert example, f"docs/{doc} has no JSON example"
    undocumented, _ = compare(json.loads(example.group(1)), key_rows(text))
    assert not undocumented, f"the example of docs/{doc} has keys its tables lack: {undocumented}"


@pytest.mark.parametrize("command, doc", [("inspect", "inspect-json.md"), ("demo", "demo-json.md"),
                                          ("experiment", "experiment-json.md"), ("finetune", "finetune-log.md")])
def test_feature_help_names_the_format_document(command, doc, capsys):
    from shiftlab.cli import main

    assert main([command, "--help"]) == 0
    assert f"docs/{doc}" in capsys.readouterr().out
