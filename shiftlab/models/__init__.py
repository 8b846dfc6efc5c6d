"""Models: loading any model by name, its preprocessing, and the bundled pretrained ImageNet network.

Images are (B, 3, H, W) in [0, 1]; ``preprocessing(model)`` resizes, crops and normalises them.

>>> from shiftlab.data import bundled_photo
>>> model = load_model("pretrained:efficientnet_lite0")
>>> prep = preprocessing(model)                  # resize 256, centre crop 224, scale to [-1, 1]
>>> logits = model(prep(bundled_photo("coffee")))
>>> imagenet_class_names()[int(logits.argmax())]
'espresso'
"""

from shiftlab.data.photos import imagenet_class_names
from shiftlab.models._device import resolve_device
from shiftlab.models.alias_free import (
    AliasFreeConvNeXt,
    AliasFreeResNet,
    alias_free_convnext,
    alias_free_resnet,
    shift_guarantee,
)
from shiftlab.models.unet import UNET_GUARANTEES, UNET_SUBSAMPLINGS, UNET_UPSAMPLINGS, UNet, unet, unet_guarantee
from shiftlab.models.loading import SelectOutput, load_model, load_weights, output_kind, select_output
from shiftlab.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, prepare, preprocessing
from shiftlab.models.pretrained import PRETRAINED_NAMES, available_pretrained, convert_state_dict, pretrained

__all__ = [
    "AliasFreeConvNeXt", "AliasFreeResNet", "alias_free_convnext", "alias_free_resnet", "shift_guarantee",
    "IMAGENET_MEAN", "IMAGENET_STD", "PRETRAINED_NAMES", "Preprocessing", "SelectOutput", "available_pretrained",
    "convert_state_dict", "imagenet_class_names", "load_model", "load_weights", "output_kind", "prepare",
    "preprocessing", "pretrained", "resolve_device", "select_output",
    "UNet", "unet", "unet_guarantee", "UNET_SUBSAMPLINGS", "UNET_UPSAMPLINGS", "UNET_GUARANTEES",
]
