"""The preprocessed cache: every subject read, checked, cropped and normalised once, then
memory-mapped by the training samplers (nnU-Net's preprocessing, STYLE.md §11).

Layout (``data.cache_dir``, default ``$MEDSYN_CACHE/preprocessed`` or
``~/.cache/medsyn/preprocessed``)::

    <cache_dir>/<dataset>-<key>/          key: sha256 of every config field that changes an entry
        key.json                          those fields, readable
        .lock                             held (flock) while entries are built
        <subject>/                        one entry, renamed into place when complete
            source.npy   (M, S, A, B) float16   sources, normalised per image (≈[-1, 1])
            target.npy   (S, A, B)  the target in its own units and storage type (int16 stays
                                    int16; floats become float32) — normalised per patch
            mask.npy     (S, A, B)  bool foreground
            label.npy    (S, A, B)  int16, when the config names a label and the subject has one
            hist.npz     target histograms inside/outside the mask (streaming normalisation)
            meta.json    ids, source files (size, mtime), crop box, geometry, fills, statistics

Arrays are stored *slice-major*: ``S`` is the configured slice axis (``data.slice_axis``), ``A``
and ``B`` the two in-plane axes in canonical order, so a 2.5D patch reads k contiguous planes.
Every array is cropped to the foreground mask's bounding box plus ``data.cache_margin`` voxels;
``meta.json`` keeps the crop box (canonical X, Y, Z), the full canonical shape and affine, and
each source file's own geometry, so a prediction on the crop can be put back.

Entries are written in a temporary folder and renamed into place (a reader never sees half an
entry); the builders of one cache take a file lock, so two trainings sharing a cache build each
entry once. An entry whose files are missing or truncated, whose ``meta.json`` does not parse, or
whose source files changed size or mtime is named in one line and rebuilt. ``medsyn preprocess``
also checks every array's CRC-32 (bit rot), which a training start skips for speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from medsyn.config import DataConfig
from medsyn.data.dataset import Dataset, Subject, resolve_root
from medsyn.errors import ConfigError, DatasetError, OutputError
from medsyn.io.image import publish_dir

#: bump when the entry format changes (old entries are then simply not found)
FORMAT = 1
SOURCE_DTYPE = np.float16
#: bins of each per-case target histogram (the streaming fit's resolution: range / 16384)
HIST_BINS = 16384
#: bins of the merged histogram over all training cases
MERGED_BINS = 1 << 16
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
ARRAYS = ("source", "target", "mask", "label")


def cache_root(data: DataConfig) -> Path:
    """``data.cache_dir``, else ``$MEDSYN_CACHE/preprocessed``, else ``~/.cache/medsyn/preprocessed``."""
    if data.cache_dir:
        return Path(data.cache_dir).expanduser()
    from medsyn.data.prepared import cache_dir

    return cache_dir() / "preprocessed"


def layout(slice_axis: str) -> tuple[int, int, int]:
    """Canonical axes in stored order: (slice axis, in-plane A, in-plane B)."""
    ax = AXES[slice_axis]
    return (ax, *[a for a in range(3) if a != ax])


def key_fields(data: DataConfig, ds: Dataset) -> dict[str, Any]:
    """Every config field that changes what an entry holds (not the split, not the target's
    normaliser: the target is stored in its own units)."""
    from medsyn.data.pipeline import source_recipes

    return {"format": FORMAT, "root": str(Path(ds.root).resolve()),
            "manifest": str(Path(data.manifest).resolve()) if data.manifest else None,
            "source": list(data.source), "target": data.target, "mask": data.mask, "label": data.label,
            "resample": data.resample, "slice_axis": data.slice_axis, "margin": int(data.cache_margin),
            "source_normalization": source_recipes(data), "source_dtype": np.dtype(SOURCE_DTYPE).name}


def _file_ids(subject: Subject, data: DataConfig) -> dict[str, dict[str, Any]]:
    """size and mtime of each file the entry is made from (a change invalidates the entry)."""
    names = [*data.source, data.target, data.mask, data.label, "brainmask", "bodymask", "mask"]
    out = {}
    for m in dict.fromkeys(n for n in names if n):
        if m in subject.files:
            p = subject.files[m]
            try:
                st = os.stat(p)
            except OSError as e:
                raise DatasetError(f"{p}: cannot read ({e.strerror or e})") from None
            out[m] = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


# ------------------------------------------------------------------------------- statistics


def _histogram(v: np.ndarray) -> dict[str, Any]:
    """Counts and value sums of ``v`` in HIST_BINS equal bins over [min, max], plus moments."""
    if v.size == 0:
        return {"n": 0}
    v = v.astype(np.float64, copy=False)
    lo, hi = float(v.min()), float(v.max())
    width = (hi - lo) / HIST_BINS or 1.0
    idx = np.minimum(((v - lo) / width).astype(np.int64), HIST_BINS - 1)
    return {"n": int(v.size), "lo": lo, "hi": hi, "sum": float(v.sum()), "sumsq": float(np.square(v).sum()),
            "counts": np.bincount(idx, minlength=HIST_BINS), "sums": np.bincount(idx, weights=v, minlength=HIST_BINS)}


class MergedHistogram:
    """Per-case histograms merged onto one grid: percentiles, median, mean and std of the pooled
    voxels without holding them.

    Each case bin is represented by the mean of its values and placed in one of ``MERGED_BINS``
    bins over the pooled [lo, hi]; a merged bin's value is the mean of what fell into it. A
    percentile is then off by at most a case bin plus a merged bin, (1/16384 + 1/65536) of the
    range, and exact when the values at that rank are all equal (a zero background).
    """

    def __init__(self, lo: float, hi: float, bins: int = MERGED_BINS):
        self.lo, self.bins = lo, bins
        self.width = (hi - lo) / bins or 1.0
        self.counts = np.zeros(bins, np.float64)
        self.sums = np.zeros(bins, np.float64)
        self.n, self.total, self.totalsq = 0, 0.0, 0.0

    def add(self, counts: np.ndarray, sums: np.ndarray, n: int, total: float, totalsq: float) -> None:
        nz = counts > 0
        means = sums[nz] / counts[nz]
        idx = np.clip(((means - self.lo) / self.width).astype(np.int64), 0, self.bins - 1)
        self.counts += np.bincount(idx, weights=counts[nz], minlength=self.bins)
        self.sums += np.bincount(idx, weights=sums[nz], minlength=self.bins)
        self.n += n
        self.total += total
        self.totalsq += totalsq

    def _value_at(self, cum: np.ndarray, rank: float) -> float:
        b = int(np.searchsorted(cum, rank, side="right"))
        b = min(b, self.bins - 1)
        return float(self.sums[b] / self.counts[b]) if self.counts[b] else self.lo + (b + 0.5) * self.width

    def percentile(self, q: float) -> float:
        """``np.percentile(pooled, q)`` (linear interpolation between order statistics)."""
        cum = np.cumsum(self.counts)
        v = (self.n - 1) * q / 100.0
        i = int(np.floor(v))
        a = self._value_at(cum, i)
        b = self._value_at(cum, min(i + 1, self.n - 1))
        return a + (v - i) * (b - a)

    @property
    def mean(self) -> float:
        return self.total / self.n

    @property
    def std(self) -> float:
        return float(np.sqrt(max(self.totalsq / self.n - self.mean**2, 0.0)))


# ------------------------------------------------------------------------------- one entry


def _crc(path: Path) -> int:
    c = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            c = zlib.crc32(chunk, c)
    return c


def build_entry(subject: Subject, data: DataConfig, key_dir: Path) -> dict[str, Any]:
    """Read, check, normalise and crop one subject; write it atomically as ``key_dir/<id>``.

    Returns the entry's ``meta.json`` content. Runs in a worker process of the build pool.
    """
    from medsyn.data.cases import load_case
    from medsyn.data.pipeline import source_recipes
    from medsyn.data.normalization import NormalizationState

    files = _file_ids(subject, data)
    with np.errstate(over="ignore", invalid="ignore"):
        case = load_case(subject, list(data.source), data.target, mask=data.mask, label=data.label,
                         resample=data.resample, require_target=True)
        recipes = NormalizationState(source_recipes(data), {}, data.target)
        src = np.stack([recipes.source_normalizer(m, case.sources[m].array, case.mask).forward(case.sources[m].array)
                        for m in data.source]).astype(np.float32)
    for i, m in enumerate(data.source):
        if not np.isfinite(src[i]).all():
            raise DatasetError(f"{subject.files.get(m, subject.id)}: values do not fit float32 after normalisation "
                               "(magnitudes beyond ~3e38); rescale the image or store it in its real units")
    mask = case.mask
    tgt = case.target.array
    tdtype = np.dtype(case.target.original_dtype)
    store_dtype = tdtype if np.issubdtype(tdtype, np.integer) and np.array_equal(tgt, tgt.astype(tdtype)) else np.dtype(np.float32)
    # crop box: the mask's bounding box plus the margin, in canonical (X, Y, Z)
    nz = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], np.nonzero(mask.any(axis=(0, 1)))[0]
    margin = int(data.cache_margin)
    box = [[max(0, int(n[0]) - margin), min(s, int(n[-1]) + 1 + margin)] for n, s in zip(nz, mask.shape)]
    crop = tuple(slice(lo, hi) for lo, hi in box)
    order = layout(data.slice_axis)
    t3 = lambda a: np.ascontiguousarray(np.transpose(a[crop], order))  # noqa: E731
    src_q = np.ascontiguousarray(np.transpose(src[(slice(None),) + crop], (0, *[o + 1 for o in order]))).astype(SOURCE_DTYPE)
    arrays = {"source": src_q, "target": t3(tgt).astype(store_dtype), "mask": t3(mask)}
    if case.label is not None:
        arrays["label"] = t3(case.label).astype(np.int16)
    inside, outside = _histogram(tgt[mask]), _histogram(tgt[~mask])
    ref = case.reference
    s_mask = arrays["mask"]
    plane_counts = {"fg": s_mask.reshape(s_mask.shape[0], -1).sum(1).tolist()}
    if "label" in arrays:
        lab = arrays["label"]
        plane_counts["label"] = (lab > 0).reshape(lab.shape[0], -1).sum(1).tolist()
    meta: dict[str, Any] = {
        "format": FORMAT, "id": subject.id, "files": files, "modalities": list(data.source), "target": data.target,
        "slice_axis": data.slice_axis, "layout": list(order), "crop_box": box, "full_shape": list(mask.shape),
        "affine": np.asarray(ref.affine).tolist(), "spacing": list(ref.spacing),
        "original_shape": list(ref.original_shape), "original_affine": np.asarray(ref.original_affine).tolist(),
        "mask_source": case.mask_source,
        "target_dtype": str(tdtype), "target_store_dtype": str(store_dtype),
        # padding values beyond the crop: each modality's minimum over the full volume (the
        # background after normalisation), the target's minimum in its units
        "source_fill": [float(SOURCE_DTYPE(src[i].min())) for i in range(src.shape[0])],
        "target_min": float(tgt.min()),
        "target_range_in_mask": float(tgt[mask].max() - tgt[mask].min()),
        "source_median_in_mask": {m: float(np.median(case.sources[m].array[mask])) for m in data.source},
        "source_spacing": {m: list(case.sources[m].spacing) for m in data.source},
        "target_hist": {k: {kk: vv for kk, vv in h.items() if kk not in ("counts", "sums")}
                        for k, h in (("inside", inside), ("outside", outside))},
        "plane_counts": plane_counts,
        "shapes": {k: list(a.shape) for k, a in arrays.items()},
        "dtypes": {k: str(a.dtype) for k, a in arrays.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    del src, case
    final = key_dir / subject.id
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{subject.id}-", dir=key_dir))
    try:
        for k, a in arrays.items():
            np.save(tmp / f"{k}.npy", a)
        np.savez_compressed(tmp / "hist.npz", **{f"{k}_{kk}": h[kk] for k, h in (("inside", inside), ("outside", outside))
                                                   for kk in ("counts", "sums") if h["n"]})
        meta["crc32"] = {k: _crc(tmp / f"{k}.npy") for k in arrays}
        (tmp / "meta.json").write_text(json.dumps(meta))
        for p in tmp.iterdir():  # on disk before the rename makes the entry visible
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        publish_dir(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{key_dir}: cannot write the preprocessed cache ({e.strerror or e}); free space or set "
                          "data.cache_dir (or MEDSYN_CACHE) to a writable folder") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def check_entry(path: Path, subject: Subject, data: DataConfig, *, full: bool = False) -> tuple[dict[str, Any] | None, str]:
    """(meta, "") for a usable entry, else (None, why). ``full`` also checks every CRC-32."""
    if not path.is_dir():
        return None, "missing"
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        return None, "meta.json missing"
    except (OSError, ValueError) as e:
        return None, f"meta.json unreadable ({e})"
    if meta.get("format") != FORMAT or meta.get("id") != subject.id:
        return None, "written by another medsyn version"
    if meta.get("files") != _file_ids(subject, data):
        changed = [m for m, f in _file_ids(subject, data).items() if meta.get("files", {}).get(m) != f]
        names = ", ".join(str(subject.files[m]) for m in changed) or "the subject's file list"
        return None, f"{names} changed since it was cached"
    for k, shape in meta.get("shapes", {}).items():
        try:
            a = np.load(path / f"{k}.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            return None, f"{k}.npy unreadable or truncated ({str(e).splitlines()[0][:80]})"
        if list(a.shape) != shape or str(a.dtype) != meta["dtypes"][k]:
            return None, f"{k}.npy holds {a.dtype}{list(a.shape)}, meta.json says {meta['dtypes'][k]}{shape}"
        del a
        if full and _crc(path / f"{k}.npy") != meta["crc32"][k]:
            return None, f"{k}.npy is corrupted (CRC-32 differs)"
    if not (path / "hist.npz").is_file():
        return None, "hist.npz missing"
    return meta, ""


# ------------------------------------------------------------------------------- the cache


@dataclass
class CachedCase:
    """One cache entry, opened memory-mapped on first use (in each process: the maps are not
    pickled, a loader worker opens its own).

    source (M, S, A, B) float16, target (S, A, B) in the target's units, mask (S, A, B) bool,
    label (S, A, B) int16 or None — slice-major, cropped (see the module docstring).
    ``target_normalizer`` (set once the run's normalisation is known) maps target values to the
    network range; the samplers apply it per patch.
    """

    id: str
    path: Path
    meta: dict[str, Any]
    target_normalizer: Any = None
    _maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}

    def array(self, name: str) -> np.ndarray | None:
        if name not in self.meta["shapes"]:
            return None
        if name not in self._maps:
            try:
                self._maps[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DatasetError(f"{self.path / (name + '.npy')}: preprocessed cache entry unreadable ({e}); "
                                   f"run `medsyn preprocess` to rebuild it") from None
        return self._maps[name]

    @property
    def source(self) -> np.ndarray:
        return self.array("source")

    @property
    def target(self) -> np.ndarray:
        return self.array("target")

    @property
    def mask(self) -> np.ndarray:
        return self.array("mask")

    @property
    def label(self) -> np.ndarray | None:
        return self.array("label")

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """The cropped volume's shape in canonical (X, Y, Z) order."""
        return tuple(hi - lo for lo, hi in self.meta["crop_box"])  # type: ignore[return-value]

    @property
    def layout(self) -> tuple[int, int, int]:
        return tuple(self.meta["layout"])  # type: ignore[return-value]

    def foreground_slices(self) -> np.ndarray:
        """Indices (along the slice axis) of the slices holding foreground."""
        return np.flatnonzero(np.asarray(self.meta["plane_counts"]["fg"]) > 0)

    def stacks(self, slices: np.ndarray, k: int) -> np.ndarray:
        """2.5D inputs of ``slices``: (M·k, n, A, B) float32, channel m·k + j = modality m at
        slice s + j − k//2 (first/last slices replicated, as in training and inference)."""
        src, r = self.source, k // 2
        n_s = src.shape[1]
        idx = np.clip(np.asarray(slices)[None, :] + np.arange(-r, r + 1)[:, None], 0, n_s - 1)  # (k, n)
        out = np.stack([src[:, i] for i in idx], axis=1).astype(np.float32)  # (M, k, n, A, B)
        return out.reshape(-1, *out.shape[2:])

    def canonical_source(self) -> np.ndarray:
        """The cropped sources in canonical (M, X, Y, Z) order, float32, in memory."""
        back = np.argsort(self.layout)
        return np.ascontiguousarray(np.transpose(self.source, (0, *[int(b) + 1 for b in back]))).astype(np.float32)

    def histograms(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "hist.npz") as z:
            return {k: z[k] for k in z.files}

    def slice_major(self, slice_axis: int):
        """The sampler's view (:class:`medsyn.data.sampling.SliceMajor`); stored in that layout."""
        from medsyn.data.sampling import SliceMajor, plane_points

        if self.layout[0] != slice_axis:
            raise ConfigError(f"{self.path}: cached with slice axis {self.meta['slice_axis']}; the sampler wants "
                              f"axis {slice_axis} (data.slice_axis is part of the cache key: rebuild)")
        tn = self.target_normalizer
        plain = lambda a: None if a is None else np.asarray(a)  # noqa: E731  (ndarray views of the maps: cheaper slicing)
        mask, label = plain(self.mask), plain(self.label)
        counts = self.meta["plane_counts"]
        lab = (plane_points(np.asarray(counts["label"]), lambda s: label[s] > 0) if label is not None
               else plane_points(np.zeros(mask.shape[0], np.int64), None))
        return SliceMajor(self.id, plain(self.source), np.asarray(self.meta["source_fill"], np.float32), plain(self.target),
                          self.meta["target_min"], None if tn is None else tn.forward, mask,
                          plane_points(np.asarray(counts["fg"]), lambda s: mask[s]), lab)


def validation_slices(cases: list[CachedCase], total: int) -> list[tuple[CachedCase, np.ndarray]]:
    """A fixed, spread-out set of validation slices: ``total`` slices over the subjects (the
    first ``total`` subjects when there are more), each subject's share evenly spaced over its
    foreground slices; ``total`` = 0 → every foreground slice. The same slices at every
    validation, so the best-checkpoint metric compares like with like."""
    if total == 0:
        return [(c, c.foreground_slices()) for c in cases]
    use = cases[:total]
    per = int(np.ceil(total / max(1, len(use))))
    out = []
    for c in use:
        fg = c.foreground_slices()
        if fg.size:
            out.append((c, np.unique(fg[np.linspace(0, fg.size - 1, min(per, fg.size)).round().astype(int)])))
    return out


class PreprocessedCache:
    """The cache folder of one dataset + config; :meth:`ensure` builds what is missing."""

    def __init__(self, data: DataConfig, ds: Dataset, root: Path | None = None):
        self.data, self.ds = data, ds
        self.fields = key_fields(data, ds)
        digest = hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()[:16]
        name = Path(str(resolve_root(data.root))).name if not data.manifest else Path(data.manifest).stem
        self.root = Path(root) if root is not None else cache_root(data)
        self.dir = self.root / f"{name or 'dataset'}-{digest}"

    # -- building --------------------------------------------------------------------------------
    def _mkdir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not (self.dir / "key.json").is_file():
                fd, tmp = tempfile.mkstemp(prefix=".key-", dir=self.dir)
                with os.fdopen(fd, "w") as f:
                    json.dump(self.fields, f, indent=1)
                os.replace(tmp, self.dir / "key.json")
        except OSError as e:
            raise OutputError(f"{self.dir}: cannot create the preprocessed cache ({e.strerror or e}); set "
                              "data.cache_dir (or MEDSYN_CACHE) to a writable folder with free space") from None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        import fcntl

        try:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise OutputError(f"{self.dir}: cannot lock the preprocessed cache ({e.strerror or e}); set "
                              "data.cache_dir (or MEDSYN_CACHE) to a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def scan(self, ids: list[str], *, full: bool = False) -> tuple[dict[str, dict], dict[str, str]]:
        """(usable entries' meta by id, reason by id for the others)."""
        good, bad = {}, {}
        for i in ids:
            meta, why = check_entry(self.dir / i, self.ds.subjects[i], self.data, full=full)
            if meta is None:
                bad[i] = why
            else:
                good[i] = meta
        return good, bad

    def ensure(self, ids: list[str], *, workers: int | None = None, full: bool = False,
               log: Callable[[str], None] = print) -> dict[str, dict]:
        """Build the entries of ``ids`` that are missing, stale or damaged; return every meta."""
        good, bad = self.scan(ids, full=full)
        if not bad:
            return good
        self._mkdir()
        with self._lock():
            good2, bad = self.scan(list(bad), full=full)  # another process may have built them meanwhile
            good.update(good2)
            for i, why in bad.items():
                if why != "missing":
                    log(f"preprocessed cache: entry {self.dir / i} {why}; rebuilding it")
            todo = list(bad)
            if todo:
                good.update(self._build(todo, workers if workers is not None else self.data.cache_workers, log))
            self._clean_temporaries()
        return {i: good[i] for i in ids}

    def _build(self, ids: list[str], workers: int, log: Callable[[str], None]) -> dict[str, dict]:
        t0 = time.monotonic()
        log(f"preprocessing {len(ids)} subject(s) into {self.dir} ({max(1, min(workers, len(ids)))} process(es))")
        out: dict[str, dict] = {}
        if workers <= 1 or len(ids) == 1:
            for i in ids:
                out[i] = build_entry(self.ds.subjects[i], self.data, self.dir)
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
            with ProcessPoolExecutor(max_workers=min(workers, len(ids)), mp_context=ctx) as pool:
                futures = {i: pool.submit(build_entry, self.ds.subjects[i], self.data, self.dir) for i in ids}
                for i, f in futures.items():
                    out[i] = f.result()
        log(f"preprocessed {len(ids)} subject(s) in {time.monotonic() - t0:.1f} s")
        return out

    def _clean_temporaries(self) -> None:
        """Half-written entries of interrupted builds (we hold the lock: nobody is writing)."""
        for p in self.dir.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in self.dir.glob(".trash-*"):
            shutil.rmtree(p, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------------
    def open(self, ids: list[str], metas: dict[str, dict]) -> list[CachedCase]:
        return [CachedCase(i, self.dir / i, metas[i]) for i in ids]


def prepare_cache(data: DataConfig, ds: Dataset, ids: list[str], *, dist: Any = None, full: bool = False,
                  log: Callable[[str], None] = print) -> tuple[PreprocessedCache, dict[str, dict]]:
    """Ensure the entries of ``ids``; under torchrun local rank 0 of each node builds while the
    other ranks wait, then every rank reads the (now complete) entries."""
    cache = PreprocessedCache(data, ds)
    if dist is None or not dist.enabled:
        return cache, cache.ensure(ids, full=full, log=log)
    metas = dist.agree(lambda: cache.ensure(ids, full=full, log=log) if dist.local_rank == 0 else None)
    if metas is None:
        good, bad = cache.scan(ids)
        if bad:  # e.g. the node's builder wrote to a folder this rank does not see
            i, why = next(iter(bad.items()))
            raise DatasetError(f"{cache.dir / i}: preprocessed entry {why} after local rank 0 built the cache; "
                               "put data.cache_dir on a filesystem every process of a node sees")
        metas = good
    return cache, metas


def preprocess_dataset(data: DataConfig, *, workers: int | None = None, full: bool = True,
                       log: Callable[[str], None] = print) -> tuple[PreprocessedCache, dict[str, dict]]:
    """``medsyn preprocess``: the entries of the training and validation subjects, every array's
    CRC-32 checked (``full``), missing/stale/damaged ones (re)built."""
    from medsyn.data.pipeline import make_splits, open_dataset

    ds = open_dataset(data)
    splits = make_splits(ds, data)
    cache = PreprocessedCache(data, ds)
    return cache, cache.ensure([*splits["train"], *splits["val"]], workers=workers, full=full, log=log)
