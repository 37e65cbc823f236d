"""MONAI training augmentation for (C, Z, Y, X) volumes: left-right flip, small rotation and shift,
intensity scale/shift. One resampling (RandAffined does rotation + translation together) keeps it fast."""

from __future__ import annotations

import math

from monai.transforms import Compose, RandAffined, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

#: Array axes are (channel, z, y, x); spatial axis 2 is x = patient left-right in LPS orientation.
LEFT_RIGHT_AXIS = 2
ROTATE_DEGREES = 10.0
SHIFT_FRACTION = 0.0625  # of the array size along each axis (2 voxels at 32)


def train_transform(shape: tuple[int, int, int] | None = None, keys: tuple[str, ...] = ("image",)) -> Compose:
    """Random flip (left-right), rotation +-10 deg in the axial plane, small shifts, intensity jitter."""
    shift = tuple(SHIFT_FRACTION * s for s in shape) if shape else (2.0, 2.0, 2.0)
    return Compose([
        RandFlipd(keys=keys, prob=0.5, spatial_axis=LEFT_RIGHT_AXIS),
        RandAffined(keys=keys, prob=0.5, rotate_range=(math.radians(ROTATE_DEGREES), 0.0, 0.0),
                    translate_range=shift, mode="bilinear", padding_mode="zeros"),
        RandScaleIntensityd(keys=keys, factors=0.1, prob=0.5),
        RandShiftIntensityd(keys=keys, offsets=0.1, prob=0.5),
    ])
