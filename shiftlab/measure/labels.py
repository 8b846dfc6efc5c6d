"""Whether a data set's labels live in a model's label space, and how to map them there.

Accuracy means something only when label ``k`` of the data is output ``k`` of the model. This module decides
that from what is known about both, and says why when it cannot (accuracy is then left out, never 0.0 from a
mismatch):

1. a class map (``--class-map FILE``: JSON ``{"data class name or index": model index}``) decides alone;
   classes it leaves out are not scored;
2. labels that are ImageNet-1k indices (the bundled photos) fit a model with 1000 outputs;
3. class names (folder names of an ImageFolder layout, CIFAR-10's names) fit a 1000-output model when every
   name is an ImageNet synset id (``n01440764``) or an ImageNet class name (any of its synonyms, any case);
4. class names fit a model with exactly as many outputs, by index (the torchvision ImageFolder convention:
   sorted folder names);
5. bare integer labels (a .npz, a list file) fit when every one is below the number of outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from shiftlab.errors import InputError

__all__ = ["LabelMapping", "resolve_labels", "read_class_map", "IMAGENET_CLASSES"]

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class LabelMapping:
    """The outcome: ``labels`` in the model's label space (-1: not scored), or ``None`` and the ``reason``."""

    labels: torch.Tensor | None
    how: str

    @property
    def usable(self) -> bool:
        return self.labels is not None and bool((self.labels >= 0).any())

    def to_dict(self) -> dict:
        if self.labels is None:
            return {"used": False, "reason": self.how}
        return {"used": True, "how": self.how, "scored": int((self.labels >= 0).sum())}


def read_class_map(path) -> dict[str, int]:
    """A class map file: JSON object ``{"data class": model index}`` (keys: class names or label indices)."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--class-map: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"--class-map: {path} is not a JSON file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"--class-map: {path} must hold a JSON object {{\"data class\": model index}}")
    out = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"--class-map: the model index of {key!r} must be a non-negative integer, got {value!r}")
        out[str(key)] = value
    return out


@lru_cache(maxsize=1)
def _imagenet_lookup() -> dict[str, int]:
    from shiftlab.data.photos import imagenet_descriptions, imagenet_metadata_file

    synsets = imagenet_metadata_file("imagenet_synsets.txt").read_text(encoding="utf-8").split()
    lookup: dict[str, int] = {}
    for index, description in enumerate(imagenet_descriptions(True)):
        for synonym in description.split(","):
            lookup.setdefault(_key(synonym), index)
    for index, synset in enumerate(synsets):
        lookup[_key(synset)] = index
    return lookup


def _key(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def resolve_labels(labels: torch.Tensor, class_names, label_space, num_outputs: int,
                   class_map: dict[str, int] | None = None) -> LabelMapping:
    """Map ``labels`` (N,) of a data set into a model with ``num_outputs`` classes (see the module docstring)."""
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    known = labels >= 0
    if not bool(known.any()):
        return LabelMapping(None, "the data has no labels")
    names = list(class_names) if class_names is not None else None
    if class_map is not None:
        bad = {k: v for k, v in class_map.items() if v >= num_outputs}
        if bad:
            k, v = next(iter(bad.items()))
            raise InputError(f"--class-map maps {k!r} to {v}, but the model has {num_outputs} outputs")
        # one lookup per distinct label (not per index up to the largest: a label of 10**18 is one entry)
        present, inverse = torch.unique(labels.clamp(min=0), return_inverse=True)
        lookup = []
        for i in present.tolist():
            key = names[i] if names is not None and i < len(names) else str(i)
            lookup.append(class_map.get(key, class_map.get(str(i), -1)))
        table = torch.tensor(lookup, dtype=torch.int64)
        mapped = torch.where(known, table[inverse], torch.full_like(labels, -1))
        if not bool((mapped >= 0).any()):
            return LabelMapping(None, "the class map covers none of the data's classes")
        return LabelMapping(mapped, f"mapped by the class map ({int((mapped >= 0).sum())} of {int(known.sum())} "
                                    f"labelled images)")
    if label_space == "imagenet":
        if num_outputs == IMAGENET_CLASSES:
            return LabelMapping(torch.where(known, labels, torch.full_like(labels, -1)), "ImageNet class indices")
        return LabelMapping(None, f"the data's labels are ImageNet classes, but the model has {num_outputs} outputs; "
                                  f"pass --class-map to map them")
    if names:
        if num_outputs == IMAGENET_CLASSES:
            lookup = _imagenet_lookup()
            found = [lookup.get(_key(n)) for n in names]
            if all(f is not None for f in found):
                table = torch.tensor(found, dtype=torch.int64)
                return LabelMapping(torch.where(known, table[labels.clamp(min=0)], torch.full_like(labels, -1)),
                                    "class names matched to ImageNet classes")
        if num_outputs == len(names):
            return LabelMapping(torch.where(known, labels, torch.full_like(labels, -1)),
                                f"label i is the model's output i ({len(names)} classes, in sorted order)")
        example = next((n for n in names if num_outputs != IMAGENET_CLASSES or _key(n) not in _imagenet_lookup()),
                       names[0])
        target = "ImageNet classes" if num_outputs == IMAGENET_CLASSES else f"the model's {num_outputs} outputs"
        return LabelMapping(None, f"the data's {len(names)} classes (e.g. {example!r}) are not {target}; pass "
                                  f"--class-map to map them")
    top = int(labels[known].max())
    if top < num_outputs:
        return LabelMapping(torch.where(known, labels, torch.full_like(labels, -1)),
                            "integer labels taken as the model's class indices")
    return LabelMapping(None, f"the data has label {top}, but the model has {num_outputs} outputs; pass --class-map")
