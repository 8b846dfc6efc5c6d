"""Polyphase tokenization's cost: against the plain patch embedding, and a whole converted ViT against the original.

Two comparisons, each timed in the same process with the candidates interleaved (one call of each per round,
order rotated), medians over the rounds, the whole measurement repeated in fresh processes (``--processes``):

1. the patch embedding of ``vit_tiny_patch16_224`` (a 16 x 16, stride-16 convolution to 192 channels, timm's
   ``PatchEmbed``) on (8, 3, 224, 224) float32, against ``PolyphasePatchEmbed`` around the very same module
   (choose the offset grid of largest norm, roll, embed) without and with the circular position encoding, and
   ``polyphase_tokenize`` alone (choice and roll);
2. a whole forward pass of ``vit_tiny_patch16_224`` (random weights, no download) at 224, batch 8, in eval mode
   without gradients, against the same model converted by ``shiftlab.antialias(vit, method="aps")``.
   Target: the converted model within 1.1x of the original at inference.

Run: ``python benchmarks/bench_vit.py [--rounds 15] [--processes 3] [--threads N] [--batch 8]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import child_or_runs, interleaved, print_runs, process_options, ratio_summary  # noqa: E402

EMBED = "PatchEmbed (stride-16 conv)"
WHOLE = "vit_tiny_patch16_224"
SIZE = 224


def _models():
    import timm

    from shiftlab import antialias

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    fixed, _ = antialias(vit, method="aps")
    return vit, fixed.eval()


def measure(rounds: int, batch: int = 8) -> dict[str, float]:
    """Median seconds of each candidate in this process."""
    from shiftlab.layers import ConvPositionEncoding, PolyphasePatchEmbed, polyphase_tokenize

    vit, fixed = _models()
    x = torch.randn(batch, 3, SIZE, SIZE)
    embed = vit.patch_embed
    polyphase = PolyphasePatchEmbed(embed, 16).eval()
    with_position = PolyphasePatchEmbed(embed, 16, ConvPositionEncoding(vit.embed_dim)).eval()
    candidates = {
        EMBED: lambda: embed(x),
        "polyphase_tokenize (choice + roll)": lambda: polyphase_tokenize(x, 16),
        "PolyphasePatchEmbed": lambda: polyphase(x),
        "PolyphasePatchEmbed + position conv": lambda: with_position(x),
        WHOLE: lambda: vit(x),
        f"{WHOLE}, converted (aps)": lambda: fixed(x),
    }
    with torch.inference_mode():
        return interleaved(candidates, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=15, processes=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    runs = child_or_runs(args, __file__, measure, batch=args.batch)
    if runs is None:
        return
    print(f"input ({args.batch}, 3, {SIZE}, {SIZE}) float32, patch 16; {torch.get_num_threads()} threads; "
          f"{args.processes} processes x {args.rounds} interleaved rounds (medians per process)")
    print_runs(runs, width=40)
    print()
    for name in ("polyphase_tokenize (choice + roll)", "PolyphasePatchEmbed", "PolyphasePatchEmbed + position conv"):
        print(f"{name} / {EMBED}: {ratio_summary(runs, name, EMBED)}")
    for name in ("polyphase_tokenize (choice + roll)", "PolyphasePatchEmbed + position conv"):
        print(f"{name} / whole {WHOLE}: {ratio_summary(runs, name, WHOLE)}")
    print(f"{WHOLE}, converted / original: {ratio_summary(runs, f'{WHOLE}, converted (aps)', WHOLE)}  "
          "(target < 1.1)")


if __name__ == "__main__":
    main()
