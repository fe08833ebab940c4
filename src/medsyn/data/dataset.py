"""The dataset convention: subject folders of per-modality images, or a CSV manifest.

Folder layout (the default)::

    DATASET/
      <subject>/
        t1n.nii.gz  t1c.nii.gz  t2w.nii.gz  t2f.nii.gz  ct.nii.gz  pet.nii.gz ...
        seg.nii.gz          (optional labels)
        brainmask.nii.gz    (optional mask; or bodymask)

Each file is named by its modality (any string; the names above are conventions). Any reader
format works (.nii/.nii.gz/.nrrd/.mha/.png/.npy, or a DICOM series sub-folder named by its
modality). A CSV manifest with columns ``subject, modality, path[, split]`` describes data laid
out otherwise (paths relative to the manifest's folder).

Splits are subject-level and deterministic: explicit lists (config or manifest) win, otherwise a
seeded shuffle of the sorted subject ids. Slices/patches of one subject never cross splits.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medsyn.errors import ConfigError, DatasetError
from medsyn.io.image import image_stem, is_image_path

LABEL_NAMES = ("seg", "label", "labels")
MASK_NAMES = ("brainmask", "bodymask", "mask")
SPLITS = ("train", "val", "test")


def sample_root() -> Path:
    """Folder of the bundled two-case BraTS sample (see sample_data/README.md)."""
    return Path(str(resources.files("medsyn") / "sample_data"))


def resolve_root(root: str | Path) -> Path:
    """``"sample"`` → the bundled sample; ``"prepared:<task>"`` → a dataset prepared from the
    sample and cached (medsyn.data.prepared); anything else is a path."""
    if str(root) == "sample":
        return sample_root()
    if str(root).startswith("prepared:"):
        from medsyn.data.prepared import prepared_root

        return prepared_root(str(root).split(":", 1)[1])
    return Path(root).expanduser()


@dataclass
class Subject:
    """One subject: modality name → file (or DICOM folder), and an optional manifest split."""

    id: str
    files: dict[str, Path]
    folder: Path | None = None
    split: str | None = None
    extra: list[Path] = field(default_factory=list)  # files that are not images

    def path(self, modality: str) -> Path:
        if modality not in self.files:
            where = self.folder or "the manifest"
            raise DatasetError(
                f"{where}: subject {self.id!r} has no {modality!r} image "
                f"(has: {', '.join(sorted(self.files)) or 'nothing'})"
            )
        return self.files[modality]


@dataclass
class Dataset:
    root: Path
    subjects: dict[str, Subject]
    manifest: Path | None = None

    def ids(self) -> list[str]:
        return sorted(self.subjects)

    def modalities(self) -> set[str]:
        out: set[str] = set()
        for s in self.subjects.values():
            out |= set(s.files)
        return out


def discover(root: str | Path, manifest: str | Path | None = None) -> Dataset:
    """Find subjects under ``root`` (folder convention) or in a CSV ``manifest``.

    Raises DatasetError when the folder does not exist or holds no subject.
    """
    if manifest is not None:
        return read_manifest(manifest)
    r = resolve_root(root)
    if not r.exists():
        raise DatasetError(f"{r}: dataset folder not found; pass a folder of subject folders (or 'sample')")
    if r.is_file() and r.suffix.lower() == ".csv":
        return read_manifest(r)
    if not r.is_dir():
        raise DatasetError(f"{r}: not a folder; a dataset is a folder of subject folders or a CSV manifest")
    subjects: dict[str, Subject] = {}
    for d in sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")):
        subj = read_subject_folder(d)
        if subj.files:
            subjects[subj.id] = subj
    if not subjects:
        # maybe the root itself is one subject folder
        subj = read_subject_folder(r)
        if subj.files:
            return Dataset(r.parent, {subj.id: subj})
        raise DatasetError(f"{r}: no subject folders with images found (expected <subject>/<modality>.nii.gz)")
    return Dataset(r, subjects)


def read_subject_folder(d: Path) -> Subject:
    files: dict[str, Path] = {}
    extra: list[Path] = []
    for p in sorted(d.iterdir()):
        if p.name.startswith("."):
            continue
        if is_image_path(p):
            m = image_stem(p)
            if m in files:
                raise DatasetError(f"{d}: two files for modality {m!r}: {files[m].name} and {p.name}; keep one")
            files[m] = p
        elif p.is_file():
            extra.append(p)
    return Subject(d.name, files, folder=d, extra=extra)


def read_manifest(path: str | Path) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: manifest not found")
    subjects: dict[str, Subject] = {}
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        need = {"subject", "modality", "path"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DatasetError(f"{p}: manifest needs columns subject, modality, path[, split]; found {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            sid, mod, rel = (row["subject"] or "").strip(), (row["modality"] or "").strip(), (row["path"] or "").strip()
            if not sid or not mod or not rel:
                raise DatasetError(f"{p}:{i}: empty subject, modality or path")
            fp = Path(rel) if Path(rel).is_absolute() else p.parent / rel
            s = subjects.setdefault(sid, Subject(sid, {}))
            if mod in s.files:
                raise DatasetError(f"{p}:{i}: subject {sid!r} lists modality {mod!r} twice")
            s.files[mod] = fp
            split = (row.get("split") or "").strip() or None
            if split is not None:
                if split not in SPLITS:
                    raise DatasetError(f"{p}:{i}: split {split!r} must be one of {', '.join(SPLITS)}")
                if s.split not in (None, split):
                    raise DatasetError(f"{p}:{i}: subject {sid!r} is in two splits ({s.split}, {split}); splits are per subject")
                s.split = split
    if not subjects:
        raise DatasetError(f"{p}: manifest lists no images")
    return Dataset(p.parent, subjects, manifest=p)


def split_subjects(
    ds: Dataset,
    *,
    train: list[str] | None = None,
    val: list[str] | None = None,
    test: list[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> dict[str, list[str]]:
    """Deterministic subject-level split → {"train": [...], "val": [...], "test": [...]}.

    Priority: explicit lists (any given list is used as is; subjects not listed anywhere go to
    train only when ``train`` is not given), then the manifest's split column, then a seeded
    shuffle (``random.Random(seed)`` on sorted ids; at least one training subject; val/test get
    ``round(fraction · n)`` subjects each, at least one each when n ≥ 3 and the fraction > 0).
    """
    ids = ds.ids()
    explicit = {"train": train, "val": val, "test": test}
    if any(v is not None for v in explicit.values()):
        out: dict[str, list[str]] = {}
        for k, v in explicit.items():
            for s in v or []:
                if s not in ds.subjects:
                    raise ConfigError(f"config key 'data.{k}': subject {s!r} is not in the dataset {ds.root} "
                                      f"(has: {', '.join(ids[:10])}{'...' if len(ids) > 10 else ''})")
            out[k] = list(v or [])
        if train is None:
            used = set(out["val"]) | set(out["test"])
            out["train"] = [s for s in ids if s not in used]
        _check_disjoint(out)
        return out
    if any(s.split for s in ds.subjects.values()):
        out = {k: [s.id for s in ds.subjects.values() if s.split == k] for k in SPLITS}
        missing = [s for s in ids if ds.subjects[s].split is None]
        out["train"] += missing
        return {k: sorted(v) for k, v in out.items()}
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)

    def count(frac: float) -> int:
        if frac <= 0 or n < 3:
            return 0
        return max(1, int(round(frac * n)))

    n_test, n_val = count(test_fraction), count(val_fraction)
    while n - n_test - n_val < 1:
        if n_val > 0:
            n_val -= 1
        elif n_test > 0:
            n_test -= 1
    out = {"test": sorted(shuffled[:n_test]), "val": sorted(shuffled[n_test:n_test + n_val]),
           "train": sorted(shuffled[n_test + n_val:])}
    return out


def _check_disjoint(splits: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for k, v in splits.items():
        for s in v:
            if s in seen:
                raise ConfigError(f"subject {s!r} is in both data.{seen[s]} and data.{k}; a subject belongs to one split")
            seen[s] = k
