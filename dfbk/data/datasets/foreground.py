"""Foreground of a subject that is not skull-stripped and has no mask file (e.g. IXI).

BraTS-like data is zero outside the brain, so "any modality nonzero" is its foreground. Raw
scanner images instead carry noise everywhere, so that rule would call the whole field of view
foreground: MR percentiles would then be taken over noise and every slice would pass
`min_foreground`. `otsu` thresholds each modality at its Otsu level (scikit-image), takes the
union, keeps the largest 3-D connected component (the head; noise specks and ghosts drop out)
and fills holes slice by slice (ventricles and dark CSF that fall below the threshold).
"""

from __future__ import annotations

import numpy as np

FOREGROUND_RULES = ("nonzero", "otsu", "mask")


def otsu_foreground(volumes: list[np.ndarray]) -> np.ndarray:
    """(X, Y, Z) bool: the head by Otsu threshold, union over modalities, largest component."""
    from scipy import ndimage  # here, not at import: config checks import this module
    from skimage.filters import threshold_otsu

    union = np.zeros(volumes[0].shape, dtype=bool)
    for volume in volumes:
        data = np.asarray(volume, dtype=np.float32)
        if data.max() > data.min():
            union |= data > threshold_otsu(data)
    labels, count = ndimage.label(union)
    if count == 0:
        return union
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    head = labels == int(np.argmax(sizes))
    for z in range(head.shape[2]):
        head[:, :, z] = ndimage.binary_fill_holes(head[:, :, z])
    return head
