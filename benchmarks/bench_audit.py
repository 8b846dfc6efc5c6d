"""Overhead of shiftlab.audit over the plain batched forward passes it needs (torchvision resnet18, 224, CPU).

Prints two ratios (peer = the same model's plain forward passes over the same N x K inputs, same batches):

1. time:   audit(N images, K shifts) / plain forwards of the N*K inputs         target <= 1.10
   A and B interleaved, medians over repetitions, inside one process.
2. memory: peak extra resident memory of the layer-wise audit (layers="all")
           / that of the plain forwards                                           target <= 1.5
   Both start from the same N images in memory; the plain run makes each batch's inputs (copies,
   normalisation) just before its forward, as any evaluation must. Also printed: the peak of the forward
   passes alone, with all N*K inputs made before the measurement (stricter than the target asks).
   Each measurement runs in a fresh subprocess: set up (imports, model, images), reset the kernel's
   peak-RSS counter (Linux /proc/self/clear_refs, value 5), run once, and read VmHWM minus VmRSS before
   the run. torch's CPU allocator keeps no peak statistics, so this counts resident pages; glibc's mmap
   threshold is fixed (MALLOC_MMAP_THRESHOLD_) so freed tensors leave the resident set at once and the
   peak follows the live tensors. The kinds alternate and medians are compared.

Usage:  python benchmarks/bench_audit.py [--images 8] [--shifts 8] [--reps 3] [--mem-reps 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _setup(images: int, shifts: int, threads: int):
    import torch
    import torchvision

    from shiftlab.measure.protocols import DiagonalSweep

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(images, 3, 224, 224)
    protocol = DiagonalSweep(shifts - 1, mode="circular")  # K = shifts copies of each image
    return torch, model, x, protocol


def _plain_inputs(torch, model, x, protocol, batch_size):
    from shiftlab.models import preprocessing

    K = protocol.num_copies
    per = max(1, batch_size // K)
    norm = preprocessing(model).normalize
    batches = []
    for s in range(0, len(x), per):
        c = protocol.make(x[s:s + per], torch.arange(s, min(s + per, len(x))), 0)
        batches.append(norm(c.inputs))
    return batches


def _run_plain(torch, model, batches):
    with torch.inference_mode():
        for b in batches:
            model(b)


def _run_plain_from_images(torch, model, x, protocol, batch_size):
    """The plain forwards, making each batch's inputs just before its forward (for the memory peak)."""
    from shiftlab.models import preprocessing

    K = protocol.num_copies
    per = max(1, batch_size // K)
    norm = preprocessing(model).normalize
    with torch.inference_mode():
        for s in range(0, len(x), per):
            b = norm(protocol.make(x[s:s + per], torch.arange(s, min(s + per, len(x))), 0).inputs)
            model(b)
            del b


def _run_audit(model, x, protocol, batch_size, layers=None):
    from shiftlab.measure.audit import audit

    return audit(model, x, transform=protocol, batch_size=batch_size, layers=layers)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(kind: str, images: int, shifts: int, threads: int, batch_size: int) -> None:
    import gc

    torch, model, x, protocol = _setup(images, shifts, threads)
    batches = _plain_inputs(torch, model, x, protocol, batch_size) if kind == "forward" else None
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current one
    before = _rss_kb("VmRSS")
    if kind == "plain":
        _run_plain_from_images(torch, model, x, protocol, batch_size)
    elif kind == "forward":
        _run_plain(torch, model, batches)
    else:
        _run_audit(model, x, protocol, batch_size, layers="all")
    peak = _rss_kb("VmHWM")
    print(json.dumps({"kind": kind, "extra_kb": peak - before}))


def _memory(kind: str, args) -> int:
    cmd = [sys.executable, __file__, "--memory-child", kind, "--images", str(args.images), "--shifts", str(args.shifts),
           "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    # a fixed mmap threshold: glibc then returns every large block to the kernel when it is freed, so the
    # resident-set peak follows the live tensors instead of the allocator's dynamic heap growth
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_kb"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--shifts", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--mem-reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--memory-child", choices=("plain", "forward", "audit"))
    p.add_argument("--memory-only", action="store_true", help="skip the timing part")
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.images, args.shifts, args.threads, args.batch_size)
        return

    if not args.memory_only:
        timing(args)
    mem = {"forward": [], "plain": [], "audit": []}
    for _ in range(args.mem_reps):  # alternate the kinds
        for kind in mem:
            mem[kind].append(_memory(kind, args))
    f, b, a = (statistics.median(mem[k]) / 1024 for k in ("forward", "plain", "audit"))
    print(f"peak extra RSS (MiB, medians of {args.mem_reps} fresh processes each): forwards only (all inputs made "
          f"beforehand, not counted) {f:.1f}; plain forwards making each batch's inputs {b:.1f}; "
          f"layer-wise audit (layers='all') {a:.1f}")
    print(f"memory ratio layer-wise audit / plain = {a / b:.3f}  (target <= 1.5); "
          f"vs forwards only = {a / f:.3f}")


def timing(args) -> None:
    torch, model, x, protocol = _setup(args.images, args.shifts, args.threads)
    batches = _plain_inputs(torch, model, x, protocol, args.batch_size)
    _run_plain(torch, model, batches)  # warm-up both
    _run_audit(model, x, protocol, args.batch_size)
    plain, audited, layered = [], [], []
    for _ in range(args.reps):
        t = time.perf_counter()
        _run_plain(torch, model, batches)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        _run_audit(model, x, protocol, args.batch_size)
        audited.append(time.perf_counter() - t)
        t = time.perf_counter()
        _run_audit(model, x, protocol, args.batch_size, layers="all")
        layered.append(time.perf_counter() - t)
    mp, ma, ml = statistics.median(plain), statistics.median(audited), statistics.median(layered)
    n_in = args.images * protocol.num_copies
    print(f"resnet18 (random weights), 224x224, CPU, {args.threads} thread(s); N={args.images} images x "
          f"K={protocol.num_copies} shifts = {n_in} inputs, forward batch {args.batch_size}; {args.reps} reps")
    print(f"plain forwards           median {mp:.3f} s")
    print(f"audit (metrics)          median {ma:.3f} s   time ratio audit / plain = {ma / mp:.3f}  (target <= 1.10)")
    print(f"audit (layers='all')     median {ml:.3f} s   time ratio            = {ml / mp:.3f}  (no target)")


if __name__ == "__main__":
    main()
