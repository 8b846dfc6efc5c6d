"""The ImageNet class each bundled photo shows, where one fits, and the ImageNet class names.

A label is kept only where a person looking at the photo would agree with it, and it was checked
against what the pretrained network (``pretrained:efficientnet_lite0``) predicts.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from shiftlab.errors import InputError

__all__ = ["BUNDLED_LABELS", "imagenet_class_names", "imagenet_descriptions", "imagenet_metadata_file"]

# photo name (shiftlab.data.images.BUNDLED_PHOTOS) -> ImageNet-1k class index.
# Left out on purpose: astronaut (no ImageNet class for a person or a space suit), rocket (a Falcon 9 on
# its pad: the network says "missile"/"projectile"), motorcycle_left (ImageNet has no motorcycle class;
# "moped" is wrong), flower (a pompon dahlia; the network says "daisy", which it is not),
# immunohistochemistry (a microscope slide).
BUNDLED_LABELS: dict[str, int] = {
    "chelsea": 285,  # Egyptian cat (the network's top-3 are the three cat classes 282, 285, 281)
    "coffee": 967,  # espresso (a cup of it, seen from above)
    "camera": 872,  # tripod (the cameraman's, in full view)
    "china": 698,  # palace (the Summer Palace in Beijing)
}


def imagenet_metadata_file(name: str) -> Path:
    """The path of one of the ImageNet metadata files timm ships as package data (no network).

    ``name`` is a file of ``timm/data/_info/``, e.g. ``"imagenet_synsets.txt"`` (the 1000 WordNet ids, by
    class index) or ``"imagenet_synset_to_lemma.txt"`` (id, tab, description). These are what
    ``timm.data.ImageNetInfo`` reads; they are read directly, which spares importing all of timm. Raises
    :class:`~shiftlab.errors.InputError` when timm or the file is missing.
    """
    spec = importlib.util.find_spec("timm")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder, "data", "_info", name)
        if path.is_file():
            return path
    raise InputError(f"timm's bundled ImageNet class list ({name}) was not found; reinstall timm")


@lru_cache(maxsize=2)
def imagenet_descriptions(full: bool = False) -> tuple[str, ...]:
    """The 1000 ImageNet-1k class descriptions by class index, cached (what :func:`imagenet_class_names` lists).

    With ``full=True`` the whole description (``"tench, Tinca tinca"``: the synonyms, comma-separated), else
    its first synonym (``"tench"``). Raises :class:`~shiftlab.errors.InputError` if timm's list is not
    1000 entries long.

    >>> imagenet_descriptions(True)[0]
    'tench, Tinca tinca'
    """
    synsets = imagenet_metadata_file("imagenet_synsets.txt").read_text(encoding="utf-8").split()
    lemmas = dict(line.split("\t", 1) for line in
                  imagenet_metadata_file("imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines()
                  if line)
    descriptions = [lemmas[s].strip() for s in synsets]
    if len(descriptions) != 1000:
        raise InputError(f"timm's ImageNet class list has {len(descriptions)} entries, expected 1000")
    return tuple(descriptions if full else (d.split(",")[0].strip() for d in descriptions))


def imagenet_class_names(full: bool = False) -> list[str]:
    """The 1000 ImageNet-1k class names, by class index, from timm's bundled metadata (no network).

    The first synonym by default (``"Egyptian cat"``; a few repeat, e.g. ``"crane"`` the bird and the
    machine), or the whole description with ``full=True`` (``"tench, Tinca tinca"``).

    >>> imagenet_class_names()[285]
    'Egyptian cat'
    """
    return list(imagenet_descriptions(bool(full)))
