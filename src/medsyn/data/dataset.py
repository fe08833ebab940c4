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

Public layouts as downloaded (BraTS 2021 and 2023–2025, SynthRAD 2023/2025, BIDS anatomical,
files prefixed by the subject's name) are recognised without a manifest; see
medsyn.data.layouts, which also holds the one modality-alias map (``t1ce`` → ``t1c`` …).

Splits are subject-level and deterministic: explicit lists (config or manifest) win, otherwise a
seeded shuffle of the sorted subject ids. Slices/patches of one subject never cross splits.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medsyn.data.layouts import (LAYOUT_DESCRIPTIONS, FolderLayout, bids_sessions, canonical_modality, classify_folder,
                                  is_bids_root)
from medsyn.errors import ConfigError, DatasetError
from medsyn.io.image import IMAGE_SUFFIXES, is_image_path

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
    """One subject: modality name → file (or DICOM folder), and an optional manifest split.

    layout: how its folder names files (None for manifest subjects); group: the participant a
    subject-visit belongs to (BIDS sessions) — the seeded split keeps a group together.
    """

    id: str
    files: dict[str, Path]
    folder: Path | None = None
    split: str | None = None
    extra: list[Path] = field(default_factory=list)  # files that are not images
    layout: FolderLayout | None = None
    group: str | None = None

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

    def layouts(self) -> list[str]:
        """Layout names of its subjects, most common first (``["manifest"]`` for a manifest)."""
        if self.manifest is not None:
            return ["manifest"]
        counts: dict[str, int] = {}
        for s in self.subjects.values():
            name = s.layout.layout if s.layout else "plain"
            counts[name] = counts.get(name, 0) + 1
        return sorted(counts, key=lambda k: (-counts[k], k))

    def describe_layout(self) -> str:
        """One line for ``medsyn verify``: ``brats2023: BraTS 2023-2025 (...)`` (or a mix)."""
        names = self.layouts()
        if len(names) == 1:
            return f"{names[0]}: {LAYOUT_DESCRIPTIONS[names[0]]}"
        return "mixed: " + ", ".join(names)

    def output_relpath(self, subject: str, modality: str) -> Path:
        """Where a synthesised ``modality`` of ``subject`` goes, relative to an output folder, in
        this dataset's own naming: ``<id>/<id>-t2w.nii.gz`` (BraTS 2023), ``<id>/<id>_t2.nii.gz``
        (BraTS 2021), ``sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz`` (BIDS), ``<id>/t2w.nii.gz``
        (plain or manifest)."""
        s = self.subjects[subject]
        modality = canonical_modality(modality)
        if s.layout is None or s.folder is None:
            return Path(s.id) / f"{modality}.nii.gz"
        try:
            rel = s.folder.relative_to(self.root)
        except ValueError:
            rel = Path(s.folder.name)
        return rel / s.layout.file_name(modality)


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
    subjects = _bids_subjects(r) if is_bids_root(r) else _folder_subjects(r)
    if not subjects:
        # a nested release (SynthRAD's Task1/brain/1BA001): subject folders one level further down
        for d in _child_dirs(r):
            for sid, subj in _folder_subjects(d).items():
                if sid in subjects:
                    raise DatasetError(f"{r}: subject id {sid!r} occurs in {subjects[sid].folder} and {subj.folder}; "
                                       "point medsyn at one of the sub-folders or write a manifest")
                subjects[sid] = subj
    if not subjects:
        # maybe the root itself is one subject folder
        subj = read_subject_folder(r)
        if subj.files:
            return Dataset(r.parent, {subj.id: subj})
        raise DatasetError(f"{r}: no subject folders with images found (expected <subject>/<modality>.nii.gz)")
    return Dataset(r, subjects)


def _child_dirs(r: Path) -> list[Path]:
    return sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_subjects(r: Path) -> dict[str, Subject]:
    subjects: dict[str, Subject] = {}
    for d in _child_dirs(r):
        subj = read_subject_folder(d)
        if subj.files:
            subjects[subj.id] = subj
    return subjects


def _bids_subjects(r: Path) -> dict[str, Subject]:
    subjects: dict[str, Subject] = {}
    for d in _child_dirs(r):
        if not d.name.startswith("sub-"):
            continue
        for sid, group, anat in bids_sessions(d):
            subj = read_subject_folder(anat, sid=sid, group=group, bids=True)
            if subj.files:
                subjects[sid] = subj
    return subjects


def read_subject_folder(d: Path, *, sid: str | None = None, group: str | None = None, bids: bool = False) -> Subject:
    """One subject folder → Subject, its files keyed by canonical modality (see medsyn.data.layouts).

    ``sid`` defaults to the folder's name; ``bids`` marks a BIDS ``anat`` folder whose files start
    with ``<sid>_``.
    """
    sid = sid or d.name
    images: list[Path] = []
    extra: list[Path] = []
    for p in sorted(d.iterdir()):
        if p.name.startswith("."):
            continue
        if is_image_path(p):
            images.append(p)
        elif p.is_file():
            extra.append(p)
    layout, canon = classify_folder(d.name, [p.name for p in images], IMAGE_SUFFIXES,
                                    bids_prefix=f"{sid}_" if bids else None)
    files: dict[str, Path] = {}
    for p in images:
        m = canon[p.name]
        if m in files:
            raise DatasetError(f"{d}: two files for modality {m!r}: {files[m].name} and {p.name}; keep one")
        files[m] = p
    return Subject(sid, files, folder=d, extra=extra, layout=layout, group=group)


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
            mod = canonical_modality(mod)
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
    shuffle (``random.Random(seed)`` on sorted ids — on sorted groups when subjects are visits of one
    participant, so visits never cross splits; at least one training subject; val/test get
    ``round(fraction · n)`` subjects (groups) each, at least one each when the fraction > 0 and n ≥ 3 —
    for the test split already when n = 2, so that even two subjects leave one held-out prediction;
    :func:`split_notes` says what is missing).
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
    # shuffle groups (a BIDS participant's visits stay together); a subject without a group is its own
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(ds.subjects[i].group or i, []).append(i)
    shuffled = sorted(groups)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)

    def count(frac: float, n_min: int) -> int:
        if frac <= 0 or n < n_min:
            return 0
        return max(1, int(round(frac * n)))

    n_test, n_val = count(test_fraction, 2), count(val_fraction, 3)
    while n - n_test - n_val < 1:
        if n_val > 0:
            n_val -= 1
        elif n_test > 0:
            n_test -= 1
    parts = {"test": shuffled[:n_test], "val": shuffled[n_test:n_test + n_val], "train": shuffled[n_test + n_val:]}
    return {k: sorted(i for g in v for i in groups[g]) for k, v in parts.items()}


def split_notes(splits: dict[str, list[str]]) -> list[str]:
    """What a split lacks and what follows from it, in words (printed at the start of training,
    kept in the run's provenance.json and shown by the report)."""
    n = sum(len(v) for v in splits.values())
    notes = []
    if not splits.get("val"):
        notes.append(f"no validation subject ({n} subject(s) in all): no validation during training, and the 'best' "
                     "checkpoint is the last one; set data.val or data.val_fraction (needs ≥ 3 subjects)")
    if not splits.get("test"):
        notes.append(f"no test subject ({n} subject(s) in all): nothing is held out for `medsyn report` and "
                     "`medsyn evaluate`; set data.test or data.test_fraction (needs ≥ 2 subjects)")
    return notes


def _check_disjoint(splits: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for k, v in splits.items():
        for s in v:
            if s in seen:
                raise ConfigError(f"subject {s!r} is in both data.{seen[s]} and data.{k}; a subject belongs to one split")
            seen[s] = k
