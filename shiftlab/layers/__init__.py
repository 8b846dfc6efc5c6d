"""Layers: anti-aliased and polyphase subsampling, each as a function and a Module.

- :func:`blur_pool2d` / :class:`BlurPool2d`: binomial blur then subsampling (Zhang 2019).
- :func:`max_blur_pool2d` / :class:`MaxBlurPool2d`: max-pool at stride 1, then blur-pool.
- :func:`aps_pool2d` / :class:`APSPool2d`: adaptive polyphase sampling (Chaman & Dokmanic 2021), with
  :class:`SharedPhase` to make several layers keep one phase choice.
- :func:`lps_pool2d` / :class:`LPSPool2d`: learnable polyphase sampling (Rojas-Gomez et al. 2022), exactly
  invariant like APS whatever it learned, with :class:`LearnedPhase` to share one choice in a residual block and
  :class:`TemperatureSchedule` to anneal its Gumbel-softmax; :func:`tips_pool2d` / :class:`TIPSPool2d`: translation
  invariant polyphase sampling (Saha & Gokhale 2025), whose invariance is learned, not guaranteed.
- :mod:`~shiftlab.layers.unpool`: decoders that move with the encoder: :func:`aps_unpool2d` / :class:`APSUnpool2d`
  (APS-U), :func:`lps_unpool2d` / :class:`LPSUnpool2d` (LPU), paired with their encoder layer by a
  :class:`PhaseLink`; :class:`UnpoolConvTranspose2d` (a ``ConvTranspose2d`` at the encoder's phase);
  :func:`blur_upsample2d` / :class:`BlurUpsample2d` (the BlurPool route).
- :mod:`~shiftlab.layers.alias_free`: alias-free layers (Michaeli et al. 2023), exactly equivariant to fractional
  circular shifts of band-limited maps: :func:`ideal_downsample2d` / :class:`IdealDownsample2d` (and the
  low-pass and upsampling), :class:`AliasFreeActivation`, :class:`AliasFreeLayerNorm`.
- :mod:`~shiftlab.layers.group`: p4 / p4m group convolutions (Cohen & Welling 2016), exactly equivariant to
  quarter turns and mirrors: :class:`LiftConv2d`, :class:`GroupConv2d`, :class:`GroupPool`, :func:`group_act`.
- :mod:`~shiftlab.layers.harmonic`: circular-harmonic layers (Worrall et al. 2017), equivariant to every
  rotation angle up to the grid: :class:`HarmonicConv2d`, :class:`HarmonicReLU`, :class:`HarmonicBatchNorm2d`,
  :class:`HarmonicBlurPool2d`, :class:`HarmonicMagnitude`.

Argument checks raise :class:`~shiftlab.errors.InputError` (see :mod:`shiftlab.errors`);
:func:`check_filter_size` is the one check of a ``filter_size``, shared with :func:`shiftlab.antialias`.
"""

from shiftlab.layers.alias_free import (
    GELU_FIT,
    AliasFreeActivation,
    AliasFreeLayerNorm,
    IdealDownsample2d,
    IdealLowpass2d,
    IdealUpsample2d,
    alias_free_activation,
    alias_free_layer_norm,
    band_limit,
    ideal_downsample2d,
    ideal_lowpass2d,
    ideal_upsample2d,
)
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
    check_filter_size,
    max_blur_pool2d,
)
from shiftlab.layers.lps import (
    LearnedPhase,
    LPSPool2d,
    PolyphaseScorer,
    TemperatureSchedule,
    TIPSPool2d,
    TIPSShiftTerm,
    has_learned_subsampling,
    lps_logits,
    lps_pool2d,
    parameter_groups,
    scoring_parameters,
    set_temperature,
    tips_pool2d,
    tips_shift_loss,
    tips_weights,
)
from shiftlab.layers.unpool import (
    UPSAMPLE_MODES,
    APSUnpool2d,
    BlurUpsample2d,
    LPSUnpool2d,
    PhaseLink,
    UnpoolConvTranspose2d,
    aps_unpool2d,
    blur_upsample2d,
    lps_unpool2d,
    transposed_conv_weight,
    unpool_conv_transpose2d,
)
from shiftlab.layers.unpool_interpolate import (
    INTERPOLATION_MODES,
    UnpoolInterpolate2d,
    WrapPad2d,
    compose_phases,
    interpolation_taps,
    unpool_interpolate2d,
    wrap_pad2d,
)
from shiftlab.layers.group import (
    GroupConv2d,
    GroupPool,
    LiftConv2d,
    group_act,
    group_conv2d,
    group_pool,
    lift_conv2d,
)
from shiftlab.layers.windows import (
    PolyphasePatchMerging,
    PolyphaseWindowBlock,
    polyphase_patch_merging,
    polyphase_window_attention,
    roll_to_offset,
    window_border_mask,
    window_offset,
)
from shiftlab.layers.tokenize import (
    ConvPositionEncoding,
    PolyphasePatchEmbed,
    PolyphaseTokenize,
    conv_position_encoding,
    patch_size_of,
    polyphase_offset,
    polyphase_tokenize,
)
from shiftlab.layers.harmonic import (
    HarmonicBatchNorm2d,
    HarmonicBlurPool2d,
    HarmonicConv2d,
    HarmonicMagnitude,
    HarmonicReLU,
    harmonic_basis,
    harmonic_blur_pool2d,
    harmonic_conv2d,
    harmonic_magnitude,
    harmonic_relu,
)

__all__ = [
    "PADDING_MODES", "check_filter_size", "binomial_filter", "blur_pool2d", "BlurPool2d", "max_blur_pool2d", "MaxBlurPool2d",
    "polyphase_norms", "polyphase_energies", "aps_phase", "aps_pool2d", "APSPool2d", "SharedPhase",
    "PolyphaseScorer", "lps_logits", "lps_pool2d", "LPSPool2d", "LearnedPhase", "TemperatureSchedule", "set_temperature",
    "tips_weights", "tips_pool2d", "TIPSPool2d", "tips_shift_loss", "TIPSShiftTerm", "scoring_parameters",
    "parameter_groups", "has_learned_subsampling",
    "PhaseLink", "aps_unpool2d", "APSUnpool2d", "lps_unpool2d", "LPSUnpool2d", "blur_upsample2d", "BlurUpsample2d",
    "transposed_conv_weight", "unpool_conv_transpose2d", "UnpoolConvTranspose2d", "UPSAMPLE_MODES",
    "INTERPOLATION_MODES", "interpolation_taps", "compose_phases", "wrap_pad2d", "WrapPad2d", "unpool_interpolate2d",
    "UnpoolInterpolate2d",
    "GELU_FIT", "band_limit", "ideal_lowpass2d", "IdealLowpass2d", "ideal_downsample2d", "IdealDownsample2d",
    "ideal_upsample2d", "IdealUpsample2d", "alias_free_activation", "AliasFreeActivation", "alias_free_layer_norm",
    "AliasFreeLayerNorm",
    "group_act", "lift_conv2d", "LiftConv2d", "group_conv2d", "GroupConv2d", "group_pool", "GroupPool",
    "harmonic_basis", "harmonic_conv2d", "HarmonicConv2d", "harmonic_relu", "HarmonicReLU", "HarmonicBatchNorm2d",
    "harmonic_blur_pool2d", "HarmonicBlurPool2d", "harmonic_magnitude", "HarmonicMagnitude",
    "polyphase_offset", "polyphase_tokenize", "PolyphaseTokenize", "PolyphasePatchEmbed", "conv_position_encoding",
    "ConvPositionEncoding", "patch_size_of",
    "window_offset", "roll_to_offset", "window_border_mask", "polyphase_window_attention", "PolyphaseWindowBlock",
    "polyphase_patch_merging", "PolyphasePatchMerging",
]
