"""CPU inference speed: shiftlab's settings (allocator thresholds + channels_last) against the old defaults.

Peer ("before"): glibc's default allocator and contiguous tensors, as shiftlab ran before the change.
"now": ``shiftlab._runtime.tune_allocator()`` (mallopt M_MMAP_THRESHOLD 1 GiB, M_TRIM_THRESHOLD 2 GiB) called
before torch is imported, and the model and input in ``channels_last``. Also "mallopt only".

The allocator is a per-process setting, so every measurement runs in a fresh process; processes of the three
kinds alternate (before, mallopt, now, before, ...) and each reports the median images/s of its rounds and its
user and system CPU time. Printed: the median over processes of each kind, the ratios to "before", and the
share of CPU time spent in the kernel.

Target (issue 11): EfficientNet-Lite0 batched inference >= 3x the "before" images/s on 2 cores.

Usage:  python benchmarks/bench_cpu_speed.py [--model pretrained:efficientnet_lite0] [--batch 32] [--rounds 5]
                                             [--processes 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

KINDS = ("before", "mallopt", "now")


def child(kind: str, model_spec: str, batch: int, rounds: int) -> dict:
    if kind in ("mallopt", "now"):
        from shiftlab._runtime import tune_allocator

        assert tune_allocator()
    import resource
    import time

    import torch

    import shiftlab

    model = shiftlab.load_model(model_spec).eval()
    x = torch.rand(batch, 3, 224, 224)
    if kind == "now":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        model(x)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(rounds):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_s": batch / statistics.median(times), "user": r1.ru_utime - r0.ru_utime,
            "sys": r1.ru_stime - r0.ru_stime, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained:efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--child", choices=KINDS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.batch, args.rounds)))
        return
    runs = {k: [] for k in KINDS}
    for _ in range(args.processes):
        for kind in KINDS:
            done = subprocess.run([sys.executable, __file__, "--child", kind, "--model", args.model, "--batch",
                                   str(args.batch), "--rounds", str(args.rounds)], check=True, capture_output=True,
                                  text=True, env={**__import__("os").environ, "SHIFTLAB_KEEP_ALLOCATOR": "0"})
            runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.model}, batch {args.batch} at 224x224, {runs['now'][0]['threads']} threads, "
          f"{args.processes} processes of each kind")
    base = statistics.median(r["images_per_s"] for r in runs["before"])
    for kind in KINDS:
        ips = [r["images_per_s"] for r in runs[kind]]
        kernel = statistics.median(r["sys"] / max(r["user"] + r["sys"], 1e-9) for r in runs[kind])
        print(f"  {kind:8s} {statistics.median(ips):6.1f} images/s (per process {' '.join(f'{v:.1f}' for v in ips)})"
              f"  ratio to before {statistics.median(ips) / base:.2f}  kernel share of CPU time {100 * kernel:.0f}%")


if __name__ == "__main__":
    main()
