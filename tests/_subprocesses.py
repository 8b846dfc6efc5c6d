"""Helpers of the tests that run shiftlab in subprocesses (``python -m shiftlab``, torchrun) on small files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image


def env(**extra) -> dict:
    """The environment of a shiftlab subprocess: one thread, the allocator tuned, no fault hook, plus ``extra``."""
    out = dict(os.environ)
    out.update({"OMP_NUM_THREADS": "1", "SHIFTLAB_KEEP_ALLOCATOR": "0"})
    out.pop("SHIFTLAB_FAULT", None)
    out.update(extra)
    return out


def shiftlab(args, **extra) -> subprocess.CompletedProcess:
    """``python -m shiftlab ARGS`` with :func:`env` (``extra``: more environment variables)."""
    return subprocess.run([sys.executable, "-m", "shiftlab", *args], capture_output=True, text=True, timeout=300,
                          env=env(**extra))


def torchrun(args, nproc: int = 2, **extra) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node NPROC -m shiftlab ARGS`` on 127.0.0.1 (a free port; gloo on CPU)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "shiftlab", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(**extra))


def write_class_images(folder, per_class: int, classes: int = 3, seed: int = 0) -> None:
    """``folder/class{c}/{i}.png``: 40x44 RGB images (sinusoids per class and index, and noise)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            yy, xx = np.mgrid[0:40, 0:44]
            img = np.stack([np.sin(xx / (2 + i)) * 100 + 120, np.cos(yy / (3 + c)) * 100 + 120,
                            rng.integers(0, 255, (40, 44))], -1)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"class{c}" / f"{i}.png")
