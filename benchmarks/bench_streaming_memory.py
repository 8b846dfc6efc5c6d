"""Peak memory of an audit against the number of images: 1,000 against 20,000 photos-sized images.

Images stream through the DataLoader, so the peak resident memory should not grow with the data set (target,
issue 11: 20,000 images need at most 1.2x the peak of 1,000). The images are 16 generated 375x500 JPEGs,
listed over and over in a ``.txt`` list (each entry is decoded, resized and cropped to 224 like a distinct
photo); the model is a small CNN so that the run measures the data path, not the network. Each size runs in a
fresh process; a thread samples the resident memory (VmRSS) of the process and of its loader workers every
50 ms, and the peak of their sum is compared. For comparison the script also prints what the whole
data set would take decoded at 256x256 in float32, as the engine held it before.

Usage:  python benchmarks/bench_streaming_memory.py [--sizes 1000 20000] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = '''
import json, os, resource, sys, threading, time
from shiftlab._runtime import tune_allocator
tune_allocator()
import torch, shiftlab
from shiftlab.data.sources import open_images


def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            out += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
    except OSError:
        pass
    return out


peaks = {"main": 0, "workers": 0}
stop = threading.Event()


def sample():  # resident memory of this process and of its loader workers, every 50 ms
    me = os.getpid()
    while not stop.is_set():
        peaks["main"] = max(peaks["main"], rss_kib(me))
        peaks["workers"] = max(peaks["workers"], sum(rss_kib(c) for c in children(me)))
        time.sleep(0.05)


torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(16, 10))
model.pretrained_cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875}
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
result = shiftlab.audit(model, open_images(sys.argv[1]), transform="circular:32", batch_size=64,
                        workers=int(sys.argv[2]))
seconds = time.perf_counter() - start
stop.set()
print(json.dumps({"images": result.n, "seconds": seconds, "main_kib": peaks["main"],
                  "workers_kib": peaks["workers"]}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 20000])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_throughput import make_images

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, 16)
        files = sorted(str(p) for p in folder.glob("*.jpg"))
        peaks = {}
        for n in args.sizes:
            listing = Path(tmp) / f"list{n}.txt"
            listing.write_text("\n".join(files[i % len(files)] for i in range(n)))
            out = subprocess.run([sys.executable, "-c", PROBE, str(listing), str(args.workers)], check=True,
                                 capture_output=True, text=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            peaks[n] = run["main_kib"] + run["workers_kib"]
            held = n * 3 * 256 * 256 * 4 / 2 ** 20
            print(f"{n:6d} images: peak resident memory {peaks[n] / 1024:7.1f} MiB (main {run['main_kib'] / 1024:.0f}, "
                  f"workers {run['workers_kib'] / 1024:.0f}), {run['images'] / run['seconds']:.0f} images/s "
                  f"({args.workers} worker(s)); held in memory at 256x256 they would take {held:,.0f} MiB")
        a, b = args.sizes
        print(f"peak({b}) / peak({a}) = {peaks[b] / peaks[a]:.3f}   (target <= 1.2)")


if __name__ == "__main__":
    main()
