"""shiftlab.convolve against the article's per-pixel loop, on a 512x512 image with a 3x3 kernel.

Run: ``.venv/bin/python benchmarks/bench_convolve.py [--repeats N]``. The two are timed in turns
(A, B, A, B, ...) so both see the same machine load; the ratio of their medians is printed. The
loop version is the article's ``convolve`` without its progress bar and plots.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from shiftlab.classic import convolve, sobel_kernel


def article_convolve(image, filter):
    """The article's definition: a Python loop over every pixel, then ReLU."""
    filter_size = filter.shape[0]
    convolved = np.zeros(((image.shape[0] - filter_size) + 1, (image.shape[1] - filter_size) + 1))
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            try:
                convolved[i, j] = (image[i:(i + filter_size), j:(j + filter_size)] * filter).sum()
            except Exception:
                pass
    return F.relu(torch.tensor(convolved)).numpy()


def _time(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved A/B repetitions (default 5)")
    parser.add_argument("--size", type=int, default=512, help="image side (default 512)")
    args = parser.parse_args(argv)

    image = np.random.default_rng(0).random((args.size, args.size))
    kernel = sobel_kernel("vertical")
    ours = convolve(image, kernel)
    reference = article_convolve(image, kernel)
    max_diff = float(np.abs(ours - reference).max())

    fast_inner = 50  # the vectorised call is short: average it over many calls per repetition
    fast, slow = [], []
    for _ in range(args.repeats):
        fast.append(_time(lambda: convolve(image, kernel), fast_inner))
        slow.append(_time(lambda: article_convolve(image, kernel), 1))
    fast_median, slow_median = statistics.median(fast), statistics.median(slow)
    print(f"image {args.size}x{args.size} float64, 3x3 kernel, {args.repeats} interleaved repetitions")
    print(f"max |shiftlab - article loop| = {max_diff:.2e}")
    print(f"article loop:       median {slow_median * 1e3:10.2f} ms")
    print(f"shiftlab.convolve:  median {fast_median * 1e3:10.3f} ms")
    print(f"speed ratio (article loop / shiftlab.convolve): {slow_median / fast_median:.0f}x")


if __name__ == "__main__":
    main()
