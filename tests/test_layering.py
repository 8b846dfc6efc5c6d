"""The pipeline layout: lower layers never import higher ones; core math never imports matplotlib."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "shiftlab"

# rank of each top-level part of the package; a module may import only parts of equal or lower rank
RANK = {
    "errors": 0, "_checks": 0, "_io": 0, "_progress": 0, "_version": 0, "_runtime": 0, "_sizes": 0,
    "classic": 1, "equivariance": 1, "transforms": 1, "data": 1,
    "layers": 2,
    "models": 3,
    "measure": 4, "metrics": 4,
    "fix": 5,
    "experiments": 6, "runs": 6,
    "report": 7,
    "cli": 8, "__main__": 8,
}
PLOT_FREE = {"errors", "_checks", "classic", "equivariance", "transforms", "data", "layers", "models", "measure",
             "metrics", "fix", "runs"}


def _part(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


MODULES = sorted(p for p in PKG.rglob("*.py") if _part(p) in RANK)


def test_every_module_has_a_rank():
    parts = {_part(p) for p in PKG.rglob("*.py")} - {"__init__"}
    assert parts <= set(RANK), f"unranked parts of the package: {parts - set(RANK)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_lower_layers_never_import_higher_ones(path):
    own = RANK[_part(path)]
    for name in _imports(path):
        if name.startswith("shiftlab."):
            target = name.split(".")[1]
            assert RANK.get(target, 0) <= own, f"{path.name} (rank {own}) imports {name} (rank {RANK.get(target)})"
        if _part(path) in PLOT_FREE:
            assert not name.startswith(("matplotlib", "jinja2", "shiftlab.cli", "shiftlab.report")), (
                f"{path.relative_to(PKG)} imports {name}")
