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

Memory (issue 13): with a :class:`SliceStore`, each subject's slices are computed once and
written to an on-disk cache (``$MEDSYN_CACHE/qu-slices``), then **memory-mapped**; a
:class:`QuSlices` then holds :class:`Rows` — lazy row selections of those memory maps — so the
stages and the segmentation experiments read one slice at a time, and memory no longer grows
with the number of subjects or synthetic slices (the OS page cache holds what is hot).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

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
from medsyn.errors import ConfigError, DatasetError, OutputError
from medsyn.io.image import publish_dir, read_header_geometry

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
    return warp_slice(images, label, brain, inverse, offset)


def warp_slice(images: np.ndarray, label: np.ndarray, brain: np.ndarray, inverse: np.ndarray,
               offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`augment_slice` with a given transform (output → input ``inverse``, ``offset``)."""
    images = np.asarray(images, dtype=np.float32)

    def warp(a: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(a, inverse, offset=offset, output_shape=a.shape, order=order,
                                        mode="constant", cval=0)

    new_brain = warp(brain.astype(np.uint8), 0).astype(bool)
    new_images = np.stack([warp(im, 1) * new_brain for im in images]).astype(np.float32)
    new_label = warp(label, 0).astype(label.dtype) * new_brain
    return new_images, new_label.astype(label.dtype), new_brain


# --------------------------------------------------------------------------- lazy rows


class Rows:
    """A lazy, read-only concatenation of row selections of arrays (memory maps, usually).

    ``Rows([(a, rows_a), (b, rows_b)])`` behaves like ``np.concatenate([a[rows_a], b[rows_b]])``
    for what the Qu code does with slice stacks — ``r[j]``, ``r[j, i]``, ``len(r)``, ``r.shape``,
    iteration, ``r[idx]`` / ``r[a:b]`` (another :class:`Rows`, still lazy) — but reads a row only
    when it is indexed. ``np.asarray(r)`` materialises it (tests, small sets).
    """

    def __init__(self, parts: Sequence[tuple[Any, Sequence[int] | np.ndarray]]):
        self.parts = [(a, np.asarray(r, dtype=np.int64)) for a, r in parts if len(r)]
        self._starts = np.cumsum([0] + [len(r) for _, r in self.parts])
        first = parts[0][0] if parts else np.zeros((0,))
        self.dtype = first.dtype
        self._row_shape = tuple(first.shape[1:])

    @staticmethod
    def whole(a: Any) -> "Rows":
        return Rows([(a, np.arange(a.shape[0]))])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),) + self._row_shape

    def _locate(self, j: int) -> tuple[Any, int]:
        n = len(self)
        if not -n <= j < n:
            raise IndexError(f"row {j} out of range for {n} rows")
        j %= n
        p = int(np.searchsorted(self._starts, j, side="right")) - 1
        a, rows = self.parts[p]
        return a, int(rows[j - self._starts[p]])

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            a, r = self._locate(int(key))
            return np.asarray(a[r])
        if isinstance(key, tuple):
            return self[key[0]][key[1:]] if len(key) > 1 else self[key[0]]
        idx = np.arange(len(self))[key]  # slices, integer or boolean arrays
        return self.take(idx)

    def take(self, idx: Sequence[int] | np.ndarray) -> "Rows":
        idx = np.asarray(idx, dtype=np.int64) % max(1, len(self))
        parts: list[tuple[Any, list[int]]] = []
        for j in idx:
            p = int(np.searchsorted(self._starts, j, side="right")) - 1
            a, rows = self.parts[p]
            row = int(rows[j - self._starts[p]])
            if parts and parts[-1][0] is a:
                parts[-1][1].append(row)
            else:
                parts.append((a, [row]))
        out = Rows(parts) if parts else Rows([(self.parts[0][0] if self.parts else np.zeros((0,) + self._row_shape,
                                                                                         self.dtype), [])])
        out.dtype, out._row_shape = self.dtype, self._row_shape
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for j in range(len(self)):
            yield self[j]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.stack(list(self)) if len(self) else np.zeros(self.shape, self.dtype)
        return out.astype(dtype) if dtype is not None else out

    @staticmethod
    def concat(items: Sequence[Any]) -> "Rows":
        """Rows of several :class:`Rows` / arrays, in order."""
        parts = []
        for it in items:
            parts += it.parts if isinstance(it, Rows) else [(it, np.arange(it.shape[0]))]
        if not parts:
            raise ValueError("Rows.concat: nothing to concatenate")
        return Rows(parts)


def concat_rows(items: Sequence[Any]) -> Any:
    """``np.concatenate`` for arrays, a lazy :class:`Rows` as soon as one item is one."""
    if any(isinstance(it, Rows) for it in items):
        return Rows.concat(items)
    return np.concatenate(items)


# --------------------------------------------------------------------------- the slice store

#: bump when an entry's format changes (old entries are then not found and rebuilt elsewhere)
STORE_FORMAT = 1
STORE_ARRAYS = ("images", "labels", "brain", "index", "offsets")


#: memory maps kept open at once (a synthetic set can have 10⁵ one-slice subjects; Linux allows ~65 000
#: maps). Pages of mapped files count in RSS while mapped, so this bounds RSS at ~OPEN_MAPS entries
#: (sample: 1.9 MB each; BraTS: 50 slices ≈ 24 MB each), whatever the number of subjects.
OPEN_MAPS = 32


@functools.lru_cache(maxsize=OPEN_MAPS)
def _memmap(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r")


class LazyNpy:
    """A ``.npy`` file read through a bounded pool of memory maps: ``shape``/``dtype`` from the
    entry's meta (the file is not opened), ``a[i]`` maps the file on first use."""

    def __init__(self, path: Path, shape: Sequence[int], dtype: str):
        self.path, self.shape, self.dtype = str(path), tuple(int(v) for v in shape), np.dtype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        return _memmap(self.path)[key]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = np.asarray(_memmap(self.path))
        return a.astype(dtype) if dtype is not None else a


def default_store_root() -> Path:
    """``$MEDSYN_CACHE/qu-slices`` (``~/.cache/medsyn/qu-slices``)."""
    from medsyn.data.prepared import cache_dir

    return cache_dir() / "qu-slices"


def _file_ids(files: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    out = {}
    for m, p in sorted(files.items()):
        try:
            st = os.stat(p)
        except OSError as e:
            raise DatasetError(f"{p}: cannot read ({e.strerror or e})") from None
        out[m] = {"path": str(Path(p).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


class SliceStore:
    """Per-subject slice stacks on disk, memory-mapped when read (issue 13, item 5).

    ``<root>/<dataset>-<key>/<subject>/{images,labels,brain,index,offsets}.npy + meta.json``;
    ``key`` hashes every setting that changes an entry (modalities, label, slice range, grid,
    classes, standardisation); each entry's ``meta.json`` records the size and mtime of every
    file it was made from. An entry is written in a temporary folder and renamed into place
    (a reader never sees half an entry; two builders of one entry both succeed, the second
    keeps the first's). A missing, truncated or stale entry (a source file changed) is rebuilt.
    A cache folder that cannot be written raises OutputError naming it.
    """

    def __init__(self, dataset: Dataset, modalities: Sequence[str], *, label: str | None, slice_range_mm: Any,
                 slice_size: Sequence[int], n_classes: int | None, clip: float, floor: float,
                 root: str | Path | None = None):
        self.dataset = dataset
        self.settings = {"format": STORE_FORMAT, "modalities": list(modalities), "label": label,
                         "slice_range_mm": None if slice_range_mm is None else [float(v) for v in slice_range_mm],
                         "slice_size": [int(v) for v in slice_size], "n_classes": n_classes, "clip": float(clip),
                         "floor": float(floor), "dtype": "float16"}
        key = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        base = Path(root).expanduser() if root else default_store_root()
        self.dir = base / f"{Path(dataset.root).resolve().name}-{key}"
        self.rebuilt: list[tuple[str, str]] = []  # (subject, why) of every entry (re)built

    def _sources(self, sid: str) -> dict[str, Path]:
        s = self.dataset.subjects[sid]
        names = [*self.settings["modalities"], self.settings["label"], "brainmask"]
        return {m: s.files[m] for m in names if m and m in s.files}

    def check(self, sid: str) -> tuple[dict[str, Any] | None, str]:
        """``(meta, "")`` for a usable entry of ``sid``, else ``(None, why)``."""
        path = self.dir / sid
        if not path.is_dir():
            return None, "missing"
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as e:
            return None, f"meta.json unreadable ({type(e).__name__})"
        if meta.get("settings") != self.settings or meta.get("id") != sid:
            return None, "written with other settings"
        if meta.get("files") != _file_ids(self._sources(sid)):
            return None, "a source file changed since it was cached"
        for k in STORE_ARRAYS:
            try:
                a = np.load(path / f"{k}.npy", mmap_mode="r")
            except (OSError, ValueError) as e:
                return None, f"{k}.npy unreadable or truncated ({str(e).splitlines()[0][:60]})"
            if list(a.shape) != meta["shapes"][k] or str(a.dtype) != meta["dtypes"][k]:
                return None, f"{k}.npy holds {a.dtype}{list(a.shape)}, meta.json says {meta['dtypes'][k]}{meta['shapes'][k]}"
        return meta, ""

    def open(self, sid: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The arrays (:class:`LazyNpy`, memory-mapped on use) and meta of ``sid``'s entry, built
        first when needed."""
        meta, why = self.check(sid)
        if meta is None:
            self.rebuilt.append((sid, why))
            self._build(sid)
            meta, why = self.check(sid)
            if meta is None:
                raise OutputError(f"{self.dir / sid}: the slice cache entry just written is not readable ({why}); "
                                  "check the disk, or set params.slice_cache: false")
        arrays = {k: LazyNpy(self.dir / sid / f"{k}.npy", meta["shapes"][k], meta["dtypes"][k]) for k in STORE_ARRAYS}
        return arrays, meta

    def _build(self, sid: str) -> None:
        st = self.settings
        files = _file_ids(self._sources(sid))  # before reading: a change while building makes the entry stale
        arrays, info = _subject_slices(self.dataset, sid, st["modalities"], label=st["label"],
                                       slice_range_mm=st["slice_range_mm"], slice_size=st["slice_size"],
                                       n_classes=st["n_classes"], clip=st["clip"], floor=st["floor"])
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sid}-", dir=self.dir))
        except OSError as e:
            raise OutputError(f"{self.dir}: cannot write the Qu slice cache ({e.strerror or e}); set "
                              "params.slice_cache_dir to a writable folder, or params.slice_cache: false") from None
        try:
            for k in STORE_ARRAYS:
                np.save(tmp / f"{k}.npy", arrays[k])
            meta = {"id": sid, "settings": st, "files": files, **info,
                    "shapes": {k: list(arrays[k].shape) for k in STORE_ARRAYS},
                    "dtypes": {k: str(arrays[k].dtype) for k in STORE_ARRAYS}}
            (tmp / "meta.json").write_text(json.dumps(meta))  # last: an entry without it is never used
            _memmap.cache_clear()  # no map of a replaced entry may survive
            publish_dir(tmp, self.dir / sid)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(f"{self.dir}: cannot write the Qu slice cache ({e.strerror or e}); free space, set "
                              "params.slice_cache_dir to a writable folder, or params.slice_cache: false") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


# --------------------------------------------------------------------------- loading


@dataclass
class QuSlices:
    """Every usable slice of a set of subjects, standardised and on one ``(H, W)`` grid.

    images: ``(N, M, H, W)`` in [0, 1] (0 outside the brain), modalities in ``modalities``
    order, stored as **float16** (half the memory: 0.46 MB per 4-modality 240×240 slice;
    samples are float32); with a :class:`SliceStore` images, labels and brain are lazy
    :class:`Rows` of memory maps instead. labels: ``(N, H, W)`` int16. has_label: ``(N,)`` bool. brain:
    ``(N, H, W)`` bool. subjects / index: the subject id and canonical axial index of each
    slice; offsets: ``(N, 2)`` :func:`fit_to_size` offsets; affines: ``subject → 4×4`` canonical
    affine of the subject's volumes; spacing: in-plane spacing (mm) of every subject.
    """

    images: np.ndarray | Rows
    labels: np.ndarray | Rows
    has_label: np.ndarray
    brain: np.ndarray | Rows
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


def _subject_slices(dataset: Dataset, sid: str, modalities: Sequence[str], *, label: str | None,
                    slice_range_mm: Sequence[float] | None, slice_size: Sequence[int], n_classes: int | None,
                    clip: float, floor: float) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every usable in-range slice of one subject: ``images`` ``(n, M, H, W)`` float16,
    ``labels`` ``(n, H, W)`` int16, ``brain`` ``(n, H, W)`` bool, ``index`` ``(n,)``,
    ``offsets`` ``(n, 2)``; and ``{"has_label", "affine", "spacing"}``."""
    s = dataset.subjects[sid]
    has_lab = label is not None and label in s.files
    case = load_case(s, list(modalities), None, label=label if has_lab else None)
    if has_lab:
        _check_label_values(case.label, n_classes, str(s.files[label]))
    imgs, labs, brains, index, offs = [], [], [], [], []
    h, w = int(slice_size[0]), int(slice_size[1])
    for k in slice_indices(case.reference.shape[2], case.reference.spacing[2], slice_range_mm):
        brain = case.mask[:, :, k]
        if brain.mean() < MIN_BRAIN_FRACTION:
            continue
        stack = np.stack([standardize_image(case.sources[m].array[:, :, k], brain, clip, floor) for m in modalities])
        stack, off = fit_to_size(np.moveaxis(stack, 0, -1), slice_size)
        lab = case.label[:, :, k] if has_lab else np.zeros(brain.shape, np.int16)
        lab, _ = fit_to_size(lab.astype(np.int16) * brain, slice_size)
        br, _ = fit_to_size(brain, slice_size)
        imgs.append(np.moveaxis(stack, -1, 0).astype(np.float16))
        labs.append(lab.astype(np.int16))
        brains.append(br.astype(bool))
        index.append(k)
        offs.append(off)
    m = len(modalities)
    arrays = {"images": np.stack(imgs) if imgs else np.zeros((0, m, h, w), np.float16),
              "labels": np.stack(labs) if labs else np.zeros((0, h, w), np.int16),
              "brain": np.stack(brains) if brains else np.zeros((0, h, w), bool),
              "index": np.asarray(index, np.int64), "offsets": np.asarray(offs, np.int64).reshape(-1, 2)}
    info = {"has_label": bool(has_lab), "affine": case.reference.affine.tolist(),
            "spacing": [float(v) for v in case.reference.spacing]}
    return arrays, info


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
    store: str | Path | bool | None = None,
) -> QuSlices:
    """Load, standardise and pad/crop the axial slices of ``ids`` (Sec. 3.2).

    Every subject must have every modality (else DatasetError naming the subject and what it
    has); images of one subject must share a grid (GeometryError otherwise). The brain is the
    dataset's ``brainmask`` when a subject has one, else computed from the first modality
    (medsyn.data.masks). ``labelled_only`` keeps slices of subjects with a ``label`` file only.
    ``exclude`` (subject → canonical axial indices) drops those slices — the pipeline's held-out
    test slices (docs/qu.md, "Held-out test data"); ``include`` keeps only the listed slices of
    the subjects it names.

    ``store``: ``None``/``False`` — everything in memory (float16 arrays); ``True`` or a folder —
    through a :class:`SliceStore` (default root ``$MEDSYN_CACHE/qu-slices``): images, labels and
    brains are lazy :class:`Rows` of memory maps, the same values.
    """
    if not ids:
        raise DatasetError(f"{dataset.root}: no subjects to load slices from (the split is empty)")
    st = None
    if store is not None and store is not False:
        st = SliceStore(dataset, modalities, label=label, slice_range_mm=slice_range_mm, slice_size=slice_size,
                        n_classes=n_classes, clip=clip, floor=floor, root=None if store is True else store)
    parts: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
    has, subj, affines, spacing = [], [], {}, {}
    for sid in ids:
        s = dataset.subjects[sid]
        missing = [m for m in modalities if m not in s.files]
        if missing:
            raise DatasetError(f"{s.folder or dataset.root}: subject {sid!r} has no {', '.join(map(repr, missing))} "
                               f"image (has: {', '.join(sorted(s.files))}); every subject needs all of params.modalities "
                               f"= {list(modalities)}")
        if labelled_only and not (label is not None and label in s.files):
            continue
        if st is not None:
            arrays, info = st.open(sid)
        else:
            arrays, info = _subject_slices(dataset, sid, modalities, label=label, slice_range_mm=slice_range_mm,
                                           slice_size=slice_size, n_classes=n_classes, clip=clip, floor=floor)
        affines[sid] = np.asarray(info["affine"], dtype=np.float64)
        spacing[sid] = tuple(float(v) for v in info["spacing"])
        dropped = set(int(k) for k in (exclude or {}).get(sid, ()))
        kept = None if include is None or sid not in include else set(int(k) for k in include[sid])
        rows = np.asarray([r for r, k in enumerate(np.asarray(arrays["index"]))
                           if int(k) not in dropped and (kept is None or int(k) in kept)], dtype=np.int64)
        if rows.size:
            parts.append((arrays, rows))
            has += [info["has_label"]] * rows.size
            subj += [sid] * rows.size
    if not parts:
        what = "labelled subjects" if labelled_only else "subjects"
        raise DatasetError(f"{dataset.root}: no usable axial slice in the {what} {list(ids)[:5]} for params.slice_range "
                           f"{list(slice_range_mm) if slice_range_mm is not None else 'all'} mm (volumes too short, "
                           "empty brain, or no label file); check params.slice_range and params.label")

    def join(k: str) -> Any:
        if st is not None:
            return Rows([(a[k], r) for a, r in parts])
        return np.concatenate([np.asarray(a[k])[r] for a, r in parts])

    index = np.concatenate([np.asarray(a["index"])[r] for a, r in parts]).astype(np.int64)
    offsets = np.concatenate([np.asarray(a["offsets"])[r] for a, r in parts]).astype(np.int64)
    return QuSlices(join("images"), join("labels"), np.asarray(has, bool), join("brain"), subj, index, offsets,
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
