"""Input data: image files, the bundled real photos, and small in-memory datasets.

>>> data = load_dataset()          # the bundled photos, (N, 3, 256, 256) in [0, 1]    # doctest: +SKIP
>>> data = load_dataset("cifar-10-batches-py", limit=500)                            # doctest: +SKIP
"""

from shiftlab.data.datasets import DEFAULT_IMAGE_SIZE, ImageDataset, load_dataset
from shiftlab.data.images import (BUNDLED_PHOTOS, bundled_photo, center_crop, load_image, resize_and_crop,
                                  resize_shorter_side, to_tensor)
from shiftlab.data.photos import BUNDLED_LABELS, imagenet_class_names

__all__ = ["BUNDLED_LABELS", "BUNDLED_PHOTOS", "DEFAULT_IMAGE_SIZE", "ImageDataset", "bundled_photo", "center_crop",
           "imagenet_class_names", "load_dataset", "load_image", "resize_and_crop", "resize_shorter_side",
           "to_tensor"]
