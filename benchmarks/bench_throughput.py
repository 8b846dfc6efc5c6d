"""Audit throughput: shiftlab.audit against a plain DataLoader + forward loop, and 2 processes against 1.

1. audit vs plain (target >= 0.9): images/s of ``shiftlab.audit(model, folder, "circular:32")`` against a plain
   loop doing the same work with the same workers, batch size and threads: a ``DataLoader`` over the same
   JPEG files (PIL decode, resize the shorter side to 256, centre crop 256, in the workers), two circular
   shifts per image, normalisation, and forward passes of the same 32 inputs. Each side runs in its own
   fresh process (allocator settings as the CLI's); the two kinds alternate and medians over processes are
   compared.
2. scaling (target >= 1.7): ``shiftlab.audit`` in 2 processes launched by ``torchrun --nproc_per_node 2``
   with 1 intra-op thread each, against 1 process with 1 thread, same data and protocol; timed inside the
   processes between a barrier before the audit and one after it (process start and imports excluded).

The data: ``--images`` generated 375x500 JPEG photos-like images (smooth structure plus noise) in a temporary
folder. The model: resnet18 (torchvision, random weights: speed does not depend on the weights).

Usage:  python benchmarks/bench_throughput.py [--images 256] [--processes 3] [--workers 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "torchvision:resnet18"


def make_images(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        base = np.stack([np.sin(xx / rng.uniform(5, 30)), np.cos(yy / rng.uniform(5, 30)),
                         np.sin((xx + yy) / rng.uniform(5, 30))], -1)
        img = np.clip((base + 1) * 100 + rng.integers(0, 55, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)


class _PlainFolder:
    """What a plain evaluation script does: PIL decode, resize 256, centre crop 256, to a [0, 1] tensor."""

    def __init__(self, folder: Path):
        self.files = sorted(folder.glob("*.jpg"))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torchvision.transforms.v2.functional as F
        from PIL import Image

        with Image.open(self.files[i]) as im:
            x = F.pil_to_tensor(im.convert("RGB"))
        x = F.resize(x, 256, antialias=True)
        return F.center_crop(x, 256).float() / 255


def plain(folder: Path, workers: int, threads: int) -> float:
    import torch

    import shiftlab
    from shiftlab.models import preprocessing

    torch.set_num_threads(threads)
    model = shiftlab.load_model(MODEL).eval().to(memory_format=torch.channels_last)
    norm = preprocessing(model).normalize
    loader = torch.utils.data.DataLoader(_PlainFolder(folder), batch_size=16, num_workers=workers)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for x in loader:
            shifts = torch.randint(-32, 32, (2, 2), generator=g).tolist()
            copies = torch.cat([torch.roll(x, s, dims=(-2, -1)) for s in shifts])
            x = norm(copies[..., 16:240, 16:240]).contiguous(memory_format=torch.channels_last)
            model(x).argmax(-1)
            n += len(copies) // 2
    return n / (time.perf_counter() - start)


def audited(folder: Path, workers: int, threads: int) -> float:
    import torch

    import shiftlab

    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = shiftlab.audit(MODEL, str(folder), transform="circular:32", batch_size=32, workers=workers)
    return result.n / (time.perf_counter() - start)


def child(kind: str, folder: str, workers: int, threads: int) -> None:
    from shiftlab._runtime import tune_allocator

    tune_allocator()
    fn = {"plain": plain, "audit": audited}[kind]
    fn(Path(folder), workers, threads)  # warm-up: file cache, model load paths
    print(json.dumps({"images_per_s": fn(Path(folder), workers, threads)}))


def _run(cmd, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("plain", "audit"))
    parser.add_argument("--folder")
    parser.add_argument("--scaling-child", action="store_true")
    args = parser.parse_args()
    if args.scaling_child:
        scaling_child(args.folder)
        return
    if args.child:
        child(args.child, args.folder, args.workers, args.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, args.images)
        runs = {"plain": [], "audit": []}
        for _ in range(args.processes):
            for kind in ("plain", "audit"):
                out = subprocess.run([sys.executable, __file__, "--child", kind, "--folder", str(folder), "--workers",
                                      str(args.workers), "--threads", str(args.threads)], check=True,
                                     capture_output=True, text=True)
                runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
        p, a = statistics.median(runs["plain"]), statistics.median(runs["audit"])
        print(f"1. {args.images} JPEGs 375x500, {MODEL}, circular:32 (2 views per image), batch 32 inputs, "
              f"{args.workers} worker(s), {args.threads} thread(s), {args.processes} processes of each")
        print(f"   plain DataLoader + forward: {p:.1f} images/s (per process {' '.join(f'{v:.1f}' for v in runs['plain'])})")
        print(f"   shiftlab.audit:             {a:.1f} images/s (per process {' '.join(f'{v:.1f}' for v in runs['audit'])})")
        print(f"   ratio audit / plain: {a / p:.2f}   (target >= 0.9)")

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        rates = {1: [], 2: []}
        for i in range(args.processes):
            for nproc in (1, 2):
                launch = [sys.executable] if nproc == 1 else [
                    sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(_free_port())]
                out = subprocess.run([*launch, __file__, "--scaling-child", "--folder", str(folder)],
                                     capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise SystemExit(f"the {nproc}-process audit failed:\n{out.stderr[-3000:]}")
                rates[nproc].append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
        r1, r2 = statistics.median(rates[1]), statistics.median(rates[2])
        print("2. shiftlab.audit with 1 intra-op thread per process, no workers, timed inside the processes from a "
              "barrier before the audit to one after it:")
        print(f"   1 process:              {r1:.1f} images/s (per run {' '.join(f'{v:.1f}' for v in rates[1])})")
        print(f"   2 processes (torchrun): {r2:.1f} images/s (per run {' '.join(f'{v:.1f}' for v in rates[2])})")
        print(f"   scaling 2 / 1: {r2 / r1:.2f}   (target >= 1.7)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scaling_child(folder: str) -> None:
    """Under torchrun (or alone): audit the folder, timed between barriers; rank 0 prints images/s."""
    from shiftlab._runtime import tune_allocator

    tune_allocator()
    import torch

    import shiftlab
    from shiftlab.measure import distributed

    torch.set_num_threads(1)
    world = distributed.init_from_environment()
    model = shiftlab.load_model(MODEL)
    shiftlab.audit(model, folder, transform="circular:32", workers=0, indices=range(8))  # warm-up
    distributed.barrier()
    start = time.perf_counter()
    result = shiftlab.audit(model, folder, transform="circular:32", workers=0)
    distributed.barrier()
    if world.is_main:
        print(json.dumps({"images_per_s": result.n / (time.perf_counter() - start)}))


if __name__ == "__main__":
    main()
