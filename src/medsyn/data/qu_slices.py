"""Whole 2D axial slices of every modality, for Qu et al.'s pipeline (Sec. 2.3–2.9, 3.2).

Qu et al. build a 2D data set from BRATS2015: slices 55–105 of each 155-slice, 1 mm volume,
every image standardised (Sec. 3.2), batch size 1 (Sec. 3.1). This module loads those slices
once (:func:`load_slices` → :class:`QuSlices`) and draws training samples from them
(:class:`QuSliceSampler`): all modalities, the lesion label, the brain mask, and the
Algorithm 1/2 maps computed from real slices.

Conventions
-----------
* Slices are canonical axial slices ``volume[:, :, k]`` (medsyn's RAS+ canonical orientation),
  ``(H, W) = (X, Y)``, centre-padded with 0 or centre-cropped to ``slice_size``
  (:func:`fit_to_size`, which also gives the offset needed to write a slice back with a
  correct affine).
* The slice range is given in **mm from the first axial slice** (``slice_range=(55, 105)`` is
  the paper's "slices 55–105" on BraTS's 1 mm grid) and converted with each volume's own slice
  spacing, so the same config selects the same anatomy on the bundled 2 mm sample
  (slices 27–51) and on full BraTS (55–104).
* Intensities (:func:`standardize_image`): each image is standardised on its own (Sec. 3.2,
  "每张图进行了标准化") — z-scored over its brain pixels, clipped to ``±clip`` and mapped
  linearly to ``[floor, 1]`` inside the brain, exactly 0 outside. Qu's networks output
  sigmoids and Algorithm 2 defines the brain as ``x > 0`` (docs/qu.md, choice 5), so the
  network range is [0, 1] with the background at 0, and ``floor > 0`` keeps every brain pixel
  ``> 0``.
* Labels are integer class maps ``0 .. n_classes-1``; a slice of a subject without a label file
  has ``has_label = False`` and an all-zero label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from medsyn.data.cases import load_case
from medsyn.data.dataset import Dataset
from medsyn.data.structure import (
    LabelAugmentConfig,
    check_lesion_label,
    extract_mask,
    random_label_affine,
    remove_lesion_structure,
    structural_feature_map,
)
from medsyn.errors import ConfigError, DatasetError
from medsyn.io.image import read_header_geometry

#: Sec. 3.2: "slices 55–105 of each 3D MRI" of BRATS2015 (1 mm slices), here in mm.
PAPER_SLICE_RANGE_MM = (55.0, 105.0)
#: (choice) |z| is clipped here before mapping to [floor, 1]; 3 standard deviations keep >99 %
#: of a normal distribution and stop a few bright vessels from compressing the brain's range.
DEFAULT_STANDARDIZE_CLIP = 3.0
#: (choice) the smallest brain value after standardisation, so that ``x > 0`` is the brain.
DEFAULT_STANDARDIZE_FLOOR = 0.01
#: (choice) slices whose brain covers less than this share of the slice are skipped (the first
#: or last slices of the range can hold only a few brain pixels, too few to standardise).
MIN_BRAIN_FRACTION = 0.01


# --------------------------------------------------------------------------- geometry helpers


def slice_indices(n_slices: int, spacing_mm: float, slice_range_mm: Sequence[float] | None) -> range:
    """Axial slice indices ``k`` whose position ``k * spacing`` lies in ``[lo, hi)`` mm.

    ``slice_range_mm=None`` selects every slice. ``(55, 105)`` with 1 mm spacing gives
    ``range(55, 105)`` (the paper's 50 slices); with 2 mm spacing ``range(27, 52)``.
    """
    if slice_range_mm is None:
        return range(n_slices)
    lo, hi = float(slice_range_mm[0]), float(slice_range_mm[1])
    k0 = max(0, int(math.floor(lo / spacing_mm + 1e-6)))
    k1 = min(n_slices, int(math.floor(hi / spacing_mm + 1e-6)))
    return range(k0, max(k0, k1))


def fit_to_size(a: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Centre-pad with 0 or centre-crop the first two axes of ``a`` to ``size``.

    Returns ``(out, (off0, off1))`` with ``out[i, j] = a[i + off0, j + off1]`` where that index
    exists (0 elsewhere): the offset to put into an affine when writing ``out`` back
    (``A_out = A_in @ translate(off0, off1, 0)``).
    """
    h, w = int(size[0]), int(size[1])
    offs = ((a.shape[0] - h) // 2, (a.shape[1] - w) // 2)
    out = np.zeros((h, w) + a.shape[2:], dtype=a.dtype)
    src0 = slice(max(0, offs[0]), max(0, offs[0]) + min(h, a.shape[0] - max(0, offs[0])))
    src1 = slice(max(0, offs[1]), max(0, offs[1]) + min(w, a.shape[1] - max(0, offs[1])))
    dst0 = slice(max(0, -offs[0]), max(0, -offs[0]) + (src0.stop - src0.start))
    dst1 = slice(max(0, -offs[1]), max(0, -offs[1]) + (src1.stop - src1.start))
    out[dst0, dst1] = a[src0, src1]
    return out, (int(offs[0]), int(offs[1]))


def standardize_image(
    x: np.ndarray,
    brain: np.ndarray,
    clip: float = DEFAULT_STANDARDIZE_CLIP,
    floor: float = DEFAULT_STANDARDIZE_FLOOR,
) -> np.ndarray:
    """Per-image standardisation into Qu's network range (Sec. 3.2); ``(H, W)`` → float32.

    ``z = (x − mean) / std`` over the ``brain`` pixels, clipped to ``[−clip, clip]`` and mapped
    linearly to ``[floor, 1]`` inside the brain; exactly 0 outside. Invariant to any positive
    affine change of ``x``'s units (so real scanner units and synthetic [0, 1] images give the
    same result). A brain of fewer than two pixels, or a constant brain, gives 0.5-ish values
    (std taken as 1).
    """
    x = np.asarray(x, dtype=np.float64)
    brain = np.asarray(brain, dtype=bool)
    out = np.zeros(x.shape, dtype=np.float32)
    vals = x[brain]
    if vals.size == 0:
        return out
    mu = float(vals.mean())
    sd = float(vals.std())
    sd = sd if sd > 0 else 1.0
    z = np.clip((vals - mu) / sd, -clip, clip)
    out[brain] = (floor + (1.0 - floor) * (z + clip) / (2.0 * clip)).astype(np.float32)
    return out


def augment_slice(
    images: np.ndarray,
    label: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    config: LabelAugmentConfig = LabelAugmentConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Traditional augmentation (Sec. 3.4): one random scale/rotation/translation/flip for a slice.

    ``images`` ``(M, H, W)`` (linear interpolation), ``label`` and ``brain`` ``(H, W)``
    (nearest neighbour); the transform is :func:`medsyn.data.structure.random_label_affine`, the
    same as the lesion-label augmentation of Sec. 2.8. Images are zeroed outside the new brain
    so the background stays exactly 0.
    """
    inverse, offset = random_label_affine(rng, label.shape, config)
    images = np.asarray(images, dtype=np.float32)

    def warp(a: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(a, inverse, offset=offset, output_shape=a.shape, order=order,
                                        mode="constant", cval=0)

    new_brain = warp(brain.astype(np.uint8), 0).astype(bool)
    new_images = np.stack([warp(im, 1) * new_brain for im in images]).astype(np.float32)
    new_label = warp(label, 0).astype(label.dtype) * new_brain
    return new_images, new_label.astype(label.dtype), new_brain


# --------------------------------------------------------------------------- loading


@dataclass
class QuSlices:
    """Every usable slice of a set of subjects, standardised and on one ``(H, W)`` grid.

    images: ``(N, M, H, W)`` in [0, 1] (0 outside the brain), modalities in ``modalities``
    order, stored as **float16** (half the memory: 0.46 MB per 4-modality 240×240 slice;
    samples are float32). labels: ``(N, H, W)`` int16. has_label: ``(N,)`` bool. brain:
    ``(N, H, W)`` bool. subjects / index: the subject id and canonical axial index of each
    slice; offsets: ``(N, 2)`` :func:`fit_to_size` offsets; affines: ``subject → 4×4`` canonical
    affine of the subject's volumes; spacing: in-plane spacing (mm) of every subject.
    """

    images: np.ndarray
    labels: np.ndarray
    has_label: np.ndarray
    brain: np.ndarray
    subjects: list[str]
    index: np.ndarray
    offsets: np.ndarray
    modalities: list[str]
    affines: dict[str, np.ndarray] = field(default_factory=dict)
    spacing: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def select(self, idx: Sequence[int] | np.ndarray) -> "QuSlices":
        idx = np.asarray(idx, dtype=np.int64)
        return QuSlices(self.images[idx], self.labels[idx], self.has_label[idx], self.brain[idx],
                        [self.subjects[i] for i in idx], self.index[idx], self.offsets[idx],
                        list(self.modalities), dict(self.affines), dict(self.spacing))

    def labelled(self) -> np.ndarray:
        return np.flatnonzero(self.has_label)


def _check_label_values(lab: np.ndarray, n_classes: int | None, where: str) -> None:
    if n_classes is None:
        return
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi > n_classes - 1:
        raise DatasetError(f"{where}: label values span {lo}..{hi}, but params.n_classes = {n_classes} allows "
                           f"0..{n_classes - 1}; set params.n_classes to the number of classes including background "
                           "(BraTS 2021+: 4, BRATS2015: 5)")


def load_slices(
    dataset: Dataset,
    ids: Sequence[str],
    modalities: Sequence[str],
    *,
    label: str | None = "seg",
    slice_range_mm: Sequence[float] | None = PAPER_SLICE_RANGE_MM,
    slice_size: Sequence[int],
    n_classes: int | None = None,
    labelled_only: bool = False,
    clip: float = DEFAULT_STANDARDIZE_CLIP,
    floor: float = DEFAULT_STANDARDIZE_FLOOR,
    exclude: Mapping[str, Sequence[int]] | None = None,
    include: Mapping[str, Sequence[int]] | None = None,
) -> QuSlices:
    """Load, standardise and pad/crop the axial slices of ``ids`` (Sec. 3.2).

    Every subject must have every modality (else DatasetError naming the subject and what it
    has); images of one subject must share a grid (GeometryError otherwise). The brain is the
    dataset's ``brainmask`` when a subject has one, else computed from the first modality
    (medsyn.data.masks). ``labelled_only`` keeps slices of subjects with a ``label`` file only.
    ``exclude`` (subject → canonical axial indices) drops those slices — the pipeline's held-out
    test slices (docs/qu.md, "Held-out test data"); ``include`` keeps only the listed slices of
    the subjects it names.
    """
    if not ids:
        raise DatasetError(f"{dataset.root}: no subjects to load slices from (the split is empty)")
    imgs, labs, has, brains, subj, index, offs = [], [], [], [], [], [], []
    affines, spacing = {}, {}
    for sid in ids:
        s = dataset.subjects[sid]
        missing = [m for m in modalities if m not in s.files]
        if missing:
            raise DatasetError(f"{s.folder or dataset.root}: subject {sid!r} has no {', '.join(map(repr, missing))} "
                               f"image (has: {', '.join(sorted(s.files))}); every subject needs all of params.modalities "
                               f"= {list(modalities)}")
        has_lab = label is not None and label in s.files
        if labelled_only and not has_lab:
            continue
        case = load_case(s, list(modalities), None, label=label if has_lab else None)
        if has_lab:
            _check_label_values(case.label, n_classes, str(s.files[label]))
        affines[sid] = case.reference.affine.copy()
        spacing[sid] = case.reference.spacing
        dropped = set(int(k) for k in (exclude or {}).get(sid, ()))
        kept = None if include is None or sid not in include else set(int(k) for k in include[sid])
        for k in slice_indices(case.reference.shape[2], case.reference.spacing[2], slice_range_mm):
            if k in dropped or (kept is not None and k not in kept):
                continue
            brain = case.mask[:, :, k]
            if brain.mean() < MIN_BRAIN_FRACTION:
                continue
            stack = np.stack([standardize_image(case.sources[m].array[:, :, k], brain, clip, floor) for m in modalities])
            stack, off = fit_to_size(np.moveaxis(stack, 0, -1), slice_size)
            lab = case.label[:, :, k] if has_lab else np.zeros(brain.shape, np.int16)
            lab, _ = fit_to_size(lab.astype(np.int16) * brain, slice_size)
            br, _ = fit_to_size(brain, slice_size)
            imgs.append(np.moveaxis(stack, -1, 0))
            labs.append(lab)
            has.append(has_lab)
            brains.append(br)
            subj.append(sid)
            index.append(k)
            offs.append(off)
    if not imgs:
        what = "labelled subjects" if labelled_only else "subjects"
        raise DatasetError(f"{dataset.root}: no usable axial slice in the {what} {list(ids)[:5]} for params.slice_range "
                           f"{list(slice_range_mm) if slice_range_mm is not None else 'all'} mm (volumes too short, "
                           "empty brain, or no label file); check params.slice_range and params.label")
    return QuSlices(np.stack(imgs).astype(np.float16), np.stack(labs).astype(np.int16), np.asarray(has, bool),
                    np.stack(brains).astype(bool), subj, np.asarray(index, np.int64), np.asarray(offs, np.int64),
                    list(modalities), affines, spacing)


def scan_geometry(dataset: Dataset, ids: Sequence[str], modality: str,
                  slice_range_mm: Sequence[float] | None) -> dict[str, Any]:
    """Headers only: in-plane size, spacing, the number and ``[start, stop)`` index range of the
    in-range slices of each subject.

    Used to size the network grid (``slice_size: null``) and an epoch before any image is read.
    """
    import nibabel as nib

    sizes, spacings, counts, ranges = [], [], [], []
    for sid in ids:
        s = dataset.subjects[sid]
        if modality not in s.files:
            raise DatasetError(f"{s.folder or dataset.root}: subject {sid!r} has no {modality!r} image "
                               f"(has: {', '.join(sorted(s.files))})")
        shape, affine = read_header_geometry(s.files[modality])
        ornt = nib.orientations.io_orientation(affine)
        canon_shape = [0, 0, 0]
        for ax, (new_ax, _) in enumerate(ornt[:3]):
            canon_shape[int(new_ax)] = int(shape[ax])
        canon_aff = affine @ nib.orientations.inv_ornt_aff(ornt, shape[:3])
        sp = np.sqrt((canon_aff[:3, :3] ** 2).sum(axis=0))
        sizes.append(canon_shape[:2])
        spacings.append([float(v) for v in sp])
        r = slice_indices(canon_shape[2], float(sp[2]), slice_range_mm)
        counts.append(len(r))
        ranges.append([r.start, r.stop])
    return {"sizes": sizes, "spacings": spacings, "counts": counts, "ranges": ranges}


def auto_slice_size(sizes: Sequence[Sequence[int]], multiple: int = 8) -> list[int]:
    """The smallest ``(H, W)``, each a multiple of ``multiple``, that holds every slice uncropped."""
    h = max(int(s[0]) for s in sizes)
    w = max(int(s[1]) for s in sizes)
    return [int(math.ceil(h / multiple) * multiple), int(math.ceil(w / multiple) * multiple)]


# --------------------------------------------------------------------------- sampling


class QuSliceSampler:
    """Random whole-slice samples for the Qu stages; exact resume through :meth:`state_dict`.

    ``mode="gan"`` (structure, assist and generation stages) — a sample holds:

    * ``image`` ``(M, H, W)``: real ``x_i`` of each modality. With ``unpaired=True`` each
      modality comes from its own random slice (the paper needs no registered training data,
      Sec. 1/2.4), else all from one slice.
    * ``label`` ``(M, H, W)`` / ``has_label`` ``(M,)``: each ``x_i``'s own lesion label ``l_i``.
    * ``f`` ``(1, H, W)``: Algorithm 1 of one modality of a random real slice (the modality is
      ``f_modality``), with the slice's own tumour structure removed (Sec. 2.5,
      ``f = mask_{l,x} × f'``); ``mask`` ``(1, H, W)``: Algorithm 2 of that slice (1 outside).
    * ``label_random`` ``(1, H, W)``: a random real lesion label accepted inside ``mask``
      (Sec. 2.5–2.6: ``mask × label = 0``), or an empty label when ``label_tries`` draws fail.

    ``mode="segmenter"`` — labelled slices only, registered: ``image`` ``(M, H, W)`` and
    ``label`` ``(1, H, W)``; ``augment=True`` adds Sec. 3.4's random scale/rotation/
    translation/flip.
    """

    def __init__(
        self,
        slices: QuSlices,
        *,
        mode: Literal["gan", "segmenter"] = "gan",
        unpaired: bool = True,
        beta: float = 0.07,
        mask_padding: int = 6,
        label_tries: int = 20,
        augment: bool = False,
        seed: int = 0,
    ):
        if len(slices) == 0:
            raise DatasetError("QuSliceSampler: no slices")
        self.slices, self.mode, self.unpaired = slices, mode, unpaired
        self.beta, self.p, self.tries, self.augment = beta, mask_padding, label_tries, augment
        self.rng = np.random.default_rng(seed)
        self.labelled = slices.labelled()
        if mode == "segmenter" and self.labelled.size == 0:
            raise DatasetError("no labelled slice to train a segmenter on; the training subjects need a label file "
                               "(params.label)")

    def sample(self) -> dict[str, np.ndarray]:
        s, rng = self.slices, self.rng
        n, m = len(s), len(s.modalities)
        if self.mode == "segmenter":
            j = int(self.labelled[rng.integers(self.labelled.size)])
            image, label = s.images[j], s.labels[j]
            if self.augment:
                image, label, _ = augment_slice(image, label, s.brain[j], rng)
            return {"image": image.astype(np.float32), "label": label[None].astype(np.int64)}
        idx = rng.integers(n, size=m) if self.unpaired else np.full(m, rng.integers(n))
        image = np.stack([s.images[j, i] for i, j in enumerate(idx)]).astype(np.float32)
        label = np.stack([s.labels[j] for j in idx]).astype(np.int64)
        has = s.has_label[idx].astype(np.float32)
        j0, m0 = int(rng.integers(n)), int(rng.integers(m))
        x = s.images[j0, m0].astype(np.float32)
        f = structural_feature_map(x, self.beta)
        if s.has_label[j0]:
            f = remove_lesion_structure(f, s.labels[j0])
        mask = extract_mask(x, self.p)
        label_random = np.zeros(x.shape, np.int64)
        for _ in range(self.tries if self.labelled.size else 0):
            cand = s.labels[int(self.labelled[rng.integers(self.labelled.size)])]
            if check_lesion_label(cand, mask):
                label_random = cand.astype(np.int64)
                break
        return {"image": image, "label": label, "has_label": has, "f": f[None], "mask": mask[None],
                "f_modality": np.int64(m0), "label_random": label_random[None]}

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        samples = [self.sample() for _ in range(n)]
        return {k: torch.from_numpy(np.stack([smp[k] for smp in samples])) for k in samples[0]}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def check_slice_size(size: Sequence[int], multiple: int) -> None:
    if len(size) != 2 or any(int(v) < multiple or int(v) % multiple for v in size):
        raise ConfigError(f"config key 'params.slice_size': got {list(size)}, expected two sizes that are positive "
                          f"multiples of {multiple} (the networks halve the grid log2({multiple}) times), or null "
                          "to size it from the data")
