"""What :func:`shiftlab.inspect` says beside its findings: whether the input size keeps the stride-multiple
guarantee (and the nearest sizes that do), and which layers a conversion by ``shiftlab fix`` / ``finetune`` put
in. (The total stride probed for the input-size rule: :mod:`shiftlab.measure.stride_probe`.)

The guarantee: circular shifts by multiples of the total stride ``s`` commute with every subsampling layer only
when every map is a whole number of subsampling periods, that is when the input size is a multiple of ``s``. At
60x60 with ``s = 8`` the maps are 30, 15 and 8 (padded) pixels: a shift by 8 input pixels is not a whole shift of
the 15-pixel map, and the statement does not hold.
"""

from __future__ import annotations

from torch import nn

__all__ = ["nearest_valid_sizes", "size_warnings", "converted_layers"]


def nearest_valid_sizes(input_size: tuple[int, int], total_stride: tuple[int, int]) -> list[tuple[int, int]]:
    """The sizes nearest ``input_size`` (the largest below, the smallest above) that are multiples of
    ``total_stride`` on both axes; empty when ``input_size`` is one already.

    >>> nearest_valid_sizes((60, 60), (8, 8)), nearest_valid_sizes((30, 30), (32, 32))
    ([(56, 56), (64, 64)], [(32, 32)])
    """
    if all(n % s == 0 for n, s in zip(input_size, total_stride)):
        return []
    below = tuple((n // s) * s for n, s in zip(input_size, total_stride))
    above = tuple(-(-n // s) * s for n, s in zip(input_size, total_stride))
    return ([below] if min(below) > 0 else []) + [above]


def size_warnings(input_size: tuple[int, int], total_stride: tuple[int, int]) -> list[str]:
    """One warning when ``input_size`` is not a multiple of ``total_stride`` (none when it is)."""
    nearest = nearest_valid_sizes(input_size, total_stride)
    if not nearest:
        return []
    (h, w), (sy, sx) = input_size, total_stride
    sizes = " or ".join(f"{a}x{b}" for a, b in nearest)
    return [f"input size {h}x{w} is not a multiple of the total stride {sy}x{sx}: the stride-multiple guarantee "
            f"(circular shifts by multiples of the total stride commute with every subsampling layer) does not hold "
            f"at this size; the nearest sizes where it does: {sizes}"]


def converted_layers(model: nn.Module, findings) -> dict | None:
    """The layers a conversion (``shiftlab fix`` / ``finetune``, :func:`shiftlab.antialias`) put in, with their
    kinds, in data-flow order: ``{"fix": ..., "file": ..., "layers": [{"name", "module_type", "kind"}]}``; None
    for a model that was not converted. A layer is listed when a finding names it and its class is shiftlab's."""
    conversion = getattr(model, "shiftlab_fix", None)
    if not isinstance(conversion, dict):
        return None
    source = getattr(model, "shiftlab_source", None)
    source = source if isinstance(source, dict) else {}
    fix = source.get("fix") or conversion.get("method")
    modules = dict(model.named_modules())
    layers, seen = [], set()
    for f in findings:
        module = modules.get(f.name)
        if module is None or not type(module).__module__.startswith("shiftlab.") or (f.name, f.kind) in seen:
            continue
        seen.add((f.name, f.kind))
        layers.append({"name": f.name, "module_type": f.module_type, "kind": f.kind})
    return {"fix": None if fix is None else str(fix), "file": source.get("weights"), "layers": layers}
