"""The runs package and the engine's stages: one command's options live in three places (the CLI's flags, the
run dataclass, the function it calls); their defaults must not drift apart, and the stages keep their jobs."""

import argparse
import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "shiftlab"


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def _parser(module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser


def test_finetune_run_defaults_are_the_configs():
    """FinetuneRun's training options default to FinetuneConfig's values (label_weight is its labels)."""
    from shiftlab.fix.finetune import FinetuneConfig
    from shiftlab.runs import FinetuneRun

    run, config = _defaults(FinetuneRun), _defaults(FinetuneConfig)
    shared = {name: name for name in run if name in config}
    shared["label_weight"] = "labels"
    assert len(shared) >= 12
    for mine, theirs in shared.items():
        assert tuple(run[mine]) == tuple(config[theirs]) if isinstance(run[mine], (tuple, list)) else \
            run[mine] == config[theirs], (mine, run[mine], config[theirs])
    # and the run's own config() builds the default config from the default run
    assert FinetuneRun(model="m", data="d", out="o.pt").config() == FinetuneConfig()


def test_audit_run_defaults_are_audits():
    """AuditRun's options default to shiftlab.audit's defaults where they share a name."""
    from shiftlab.measure.audit import audit
    from shiftlab.runs import AuditRun

    run = _defaults(AuditRun)
    params = {k: p.default for k, p in inspect.signature(audit).parameters.items()
              if p.default is not inspect.Parameter.empty}
    shared = sorted(set(run) & set(params) - {"transform", "metrics", "layers", "device", "workers"})
    assert {"seed", "batch_size", "margin", "checkpoint_every", "amp", "predictions"} <= set(shared)
    for name in shared:
        assert run[name] == params[name], (name, run[name], params[name])


@pytest.mark.parametrize("command, run_class", [("audit", "AuditRun"), ("finetune", "FinetuneRun")])
def test_cli_flag_defaults_are_the_runs(command, run_class):
    """Every flag the CLI parses into a run has the run's default: the parser adds no default of its own."""
    import importlib

    import shiftlab.runs as runs

    cli = importlib.import_module(f"shiftlab.cli.{command}")
    sub = _parser(cli)
    run = _defaults(getattr(runs, run_class))
    checked = 0
    for action in sub._actions:
        name = action.dest
        if name in run and action.default is not argparse.SUPPRESS and not action.required:
            default = action.default
            if isinstance(default, list):
                default = tuple(default)
            if name.startswith("no_") and isinstance(run[name], bool):
                assert bool(default) == run[name], name
            else:
                assert default == run[name] or (default is None and run[name] in ((), None)), (
                    name, default, run[name])
            checked += 1
    assert checked >= 8


def test_the_stages_have_one_job_each():
    """measure/audit.py is a recipe: it defines one function (audit) and calls the four stages; the stages do
    not import the recipe, and nothing outside measure/ imports a private name from it."""
    audit_src = (PKG / "measure" / "audit.py").read_text()
    tree = ast.parse(audit_src)
    functions = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert functions == ["audit"]
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef)).body
    called = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr
              for n in ast.walk(ast.Module(body=body, type_ignores=[])) if isinstance(n, ast.Call)}
    assert {"AuditOptions", "prepare", "run", "build_result"} <= called
    for stage in ("prepare", "engine", "statistics", "result", "inputs", "forward", "rows"):
        src = (PKG / "measure" / f"{stage}.py").read_text()
        assert "shiftlab.measure.audit" not in src, stage
    for path in PKG.rglob("*.py"):
        if path.parent.name == "measure":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shiftlab.measure"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, (path, node.module, private)
