"""Input data: image files, the bundled real photos, and datasets."""

from shiftlab.data.images import BUNDLED_PHOTOS, bundled_photo, load_image, to_tensor

__all__ = ["BUNDLED_PHOTOS", "bundled_photo", "load_image", "to_tensor"]
