"""Layers: anti-aliased and polyphase subsampling, each as a function and a Module.

- :func:`blur_pool2d` / :class:`BlurPool2d`: binomial blur then subsampling (Zhang 2019).
- :func:`max_blur_pool2d` / :class:`MaxBlurPool2d`: max-pool at stride 1, then blur-pool.
- :func:`aps_pool2d` / :class:`APSPool2d`: adaptive polyphase sampling (Chaman & Dokmanic 2021), with
  :class:`SharedPhase` to make several layers keep one phase choice.
"""

from shiftlab.layers.aps import (
    APSPool2d,
    SharedPhase,
    aps_phase,
    aps_pool2d,
    polyphase_energies,
    polyphase_norms,
)
from shiftlab.layers.blur_pool import (
    PADDING_MODES,
    BlurPool2d,
    MaxBlurPool2d,
    binomial_filter,
    blur_pool2d,
    max_blur_pool2d,
)

__all__ = [
    "PADDING_MODES", "binomial_filter", "blur_pool2d", "BlurPool2d", "max_blur_pool2d", "MaxBlurPool2d",
    "polyphase_norms", "polyphase_energies", "aps_phase", "aps_pool2d", "APSPool2d", "SharedPhase",
]
