"""Build the bundled sample (src/medsyn/sample_data/) from ../shared/data/brats2023.

Each case is cropped to the brain's bounding box (union over modalities, 4-voxel margin) and
downsampled 2× along every axis (2×2×2 block mean for images, rounded to int16; the block's
majority label for ``seg``), so a case is
~75×90×75 voxels at 2 mm. The affine is updated exactly, so the sample keeps each case's own
orientation (the two cases have different axis flips, which exercises medsyn's geometry code).

Run from the repository root:  python tools/make_sample_data.py ../shared/data/brats2023
"""

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

CASES = ["BraTS-GLI-00000-000", "BraTS-MET-00110-000"]
MODALITIES = ["t1n", "t1c", "t2w", "t2f"]
F = 2  # downsampling factor
MARGIN = 4


def block_mean(a: np.ndarray) -> np.ndarray:
    s = [d // F * F for d in a.shape]
    a = a[: s[0], : s[1], : s[2]].astype(np.float64)
    return a.reshape(s[0] // F, F, s[1] // F, F, s[2] // F, F).mean(axis=(1, 3, 5))


def block_majority(a: np.ndarray) -> np.ndarray:
    s = [d // F * F for d in a.shape]
    a = a[: s[0], : s[1], : s[2]].astype(np.int16)
    blocks = a.reshape(s[0] // F, F, s[1] // F, F, s[2] // F, F).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(*blocks.shape[:3], -1)
    labels = np.unique(a)
    counts = np.stack([(blocks == l).sum(-1) for l in labels], axis=-1)
    return labels[counts.argmax(-1)].astype(np.uint8)


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        imgs = {m: nib.load(src / case / f"{m}.nii.gz") for m in MODALITIES}
        if (src / case / "seg.nii.gz").exists():
            imgs["seg"] = nib.load(src / case / "seg.nii.gz")
        fg = np.zeros(imgs["t1n"].shape, bool)
        for m in MODALITIES:
            fg |= np.asarray(imgs[m].dataobj) != 0
        idx = np.argwhere(fg)
        lo = np.maximum(idx.min(0) - MARGIN, 0)
        hi = np.minimum(idx.max(0) + 1 + MARGIN, fg.shape)
        hi = lo + (hi - lo) // F * F
        out = dst / case
        out.mkdir(exist_ok=True)
        for m, img in imgs.items():
            a = np.asarray(img.dataobj)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            small = block_majority(a) if m == "seg" else np.rint(block_mean(a)).astype(np.int16)
            # voxel (i, j, k) of the new grid is the centre of block [lo + F*i, lo + F*i + F)
            scale = np.diag([F, F, F, 1.0])
            scale[:3, 3] = lo + (F - 1) / 2.0
            aff = img.affine @ scale
            new = nib.Nifti1Image(small, aff)
            new.set_qform(aff, code=1)
            new.set_sform(aff, code=1)
            new.header.set_xyzt_units("mm", "sec")
            nib.save(new, out / f"{m}.nii.gz")
            print(case, m, small.shape, small.dtype, (out / f"{m}.nii.gz").stat().st_size)


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/brats2023")
    main(src, Path("src/medsyn/sample_data"))
