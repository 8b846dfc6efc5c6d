#!/usr/bin/env python3
"""Set up and run shiftlab with nothing but Python 3 installed.

    python3 dev.py demo      # make .venv if needed, then run the main job (shiftlab report)
    python3 dev.py test      # make .venv if needed, then run the whole test suite

The virtual environment lives in ``.venv`` next to this file. It is re-made only when
``pyproject.toml`` changes. Extra arguments after the command go to shiftlab / pytest.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".shiftlab-installed"

# The torch build that lies on these machines' disk (pip caps it there); on aarch64 the CPU build.
TORCH = {
    "aarch64": ["torch==2.9.1", "torchvision==0.24.1"],
    "arm64": ["torch==2.9.1", "torchvision==0.24.1"],
}.get(platform.machine(), ["torch==2.14.1", "torchvision==0.29.1"])


def _run(cmd: list[str]) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def ensure_venv() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + " ".join(TORCH).encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted and PYTHON.exists():
        return
    if sys.version_info < (3, 10):
        sys.exit(f"dev.py: shiftlab needs Python >= 3.10, this is {platform.python_version()}")
    if not PYTHON.exists():
        print(f"Creating a virtual environment in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run(pip + ["--upgrade", "pip"])
    _run(pip + TORCH)
    _run(pip + ["-e", ".[test]"])
    STAMP.write_text(wanted + "\n")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_venv()
    env = dict(os.environ)
    # glibc returns every large freed block to the kernel, so torch pays page faults on each forward pass;
    # these keep that memory in the process (see shiftlab/_runtime.py; the CLI sets the same with mallopt)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 30))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(2 << 30))
    if command == "setup":
        return 0
    if command == "demo":
        cmd = [str(PYTHON), "-m", "shiftlab", "report", *rest]
    else:
        cmd = [str(PYTHON), "-m", "pytest", *rest]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
