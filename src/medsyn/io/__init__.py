"""Image input/output with geometry: see :mod:`medsyn.io.image`."""

from medsyn.io.image import (  # noqa: F401
    IMAGE_SUFFIXES,
    Volume,
    atomic_write_bytes,
    image_stem,
    is_image_path,
    read_image,
    resample_to,
    same_grid,
    write_like,
    write_nifti,
)
