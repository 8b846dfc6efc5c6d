"""Input data: image files, the bundled real photos, and small in-memory datasets.

>>> data = load_dataset()          # the bundled photos, (N, 3, 256, 256) in [0, 1]    # doctest: +SKIP
>>> data = load_dataset("cifar-10-batches-py", limit=500)                            # doctest: +SKIP
"""

from shiftlab.data.datasets import DEFAULT_IMAGE_SIZE, ImageDataset, load_dataset
from shiftlab.data.digit_masks import DIGIT_CLASSES, DigitMasks, digit_segmentation
from shiftlab.data.mask_decoding import VOC_CLASSES, MaskPalette, decode_mask, voc_colormap
from shiftlab.data.mask_files import MaskFiles, mask_layout, open_masks
from shiftlab.data.masks import DEFAULT_IGNORE_INDEX, MaskedImages, TensorMasks
from shiftlab.data.images import (BUNDLED_PHOTOS, bundled_photo, center_crop, load_image, resize_and_crop,
                                  resize_shorter_side, to_tensor)
from shiftlab.data.photos import BUNDLED_LABELS, imagenet_class_names

__all__ = ["BUNDLED_LABELS", "BUNDLED_PHOTOS", "DEFAULT_IMAGE_SIZE", "ImageDataset", "bundled_photo", "center_crop",
           "DEFAULT_IGNORE_INDEX", "DIGIT_CLASSES", "DigitMasks", "MaskFiles", "MaskPalette", "MaskedImages",
           "TensorMasks", "VOC_CLASSES", "decode_mask", "digit_segmentation", "mask_layout", "open_masks",
           "voc_colormap",
           "imagenet_class_names", "load_dataset", "load_image", "resize_and_crop", "resize_shorter_side",
           "to_tensor"]
