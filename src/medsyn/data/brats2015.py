"""BRATS2015, the data set of Qu et al. (Sec. 3.2), as downloaded → medsyn's subject-folder layout.

The BRATS2015 training archive (Menze et al. 2014) holds one folder per case under a grade
folder, each image in its own ``VSD.*`` folder as a MetaImage (``.mha``)::

    BRATS2015_Training/HGG/brats_2013_pat0001_1/VSD.Brain.XX.O.MR_Flair.54512/VSD.Brain.XX.O.MR_Flair.54512.mha
                                               /VSD.Brain.XX.O.MR_T1.54513/…mha
                                               /VSD.Brain.XX.O.MR_T1c.54514/…mha
                                               /VSD.Brain.XX.O.MR_T2.54515/…mha
                                               /VSD.Brain_3more.XX.O.OT.54517/…mha   (labels 0–4)
    BRATS2015_Training/LGG/…

(some copies keep the ``.mha`` files directly in the case folder; both are read). The testing
archive has no ``OT`` file. :func:`convert_brats2015` writes::

    OUT/<case>/{t1n,t1c,t2w,t2f}.nii.gz   the images, their own geometry and integer type
    OUT/<case>/seg.nii.gz                 the OT labels, uint8, values kept (0–4: BRATS2015's five classes)
    OUT/brats2015.json                    each case's grade folder and source files

i.e. the BraTS 2023 names medsyn's Qu config uses (T1 → t1n, T1c → t1c, T2 → t2w, Flair → t2f).
Train on it with ``--set params.n_classes=5`` (labels 0–4). Each case is written under a
temporary name and renamed when complete; a case already in ``OUT`` is skipped, so an
interrupted conversion resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from medsyn.errors import DatasetError, OutputError
from medsyn.io.image import atomic_write_bytes, read_image, write_like

#: BRATS2015 image tag → medsyn (BraTS 2023) modality name
MODALITY_NAMES = {"MR_T1": "t1n", "MR_T1c": "t1c", "MR_T2": "t2w", "MR_Flair": "t2f", "OT": "seg"}
IMAGE_TAGS = ("MR_T1", "MR_T1c", "MR_T2", "MR_Flair")
#: BRATS2015 labels: 0 background, 1 necrosis, 2 oedema, 3 non-enhancing tumour, 4 enhancing tumour
N_CLASSES = 5
_NAME = re.compile(r"^VSD\.[^.]+\.XX\.O\.(MR_[A-Za-z0-9]+|OT)\.\d+\.mha$")
RECORD_FILE = "brats2015.json"


@dataclass
class Case:
    """One BRATS2015 case: its folder, grade folder name and ``tag → .mha`` files."""

    name: str
    folder: Path
    grade: str
    files: dict[str, Path] = field(default_factory=dict)


def find_cases(src: str | Path) -> list[Case]:
    """Every case folder under ``src`` holding BRATS2015 ``VSD.*.mha`` files, sorted by name.

    Raises DatasetError when ``src`` has none, when a case lacks one of the four MR images, holds
    one tag twice, or two cases share a name.
    """
    root = Path(src)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give the extracted BRATS2015 folder (with HGG/ and LGG/)")
    cases: dict[Path, Case] = {}
    for f in sorted(root.rglob("*.mha")):
        m = _NAME.match(f.name)
        if m is None:
            continue
        folder = f.parent.parent if f.parent.name.startswith("VSD.") else f.parent
        case = cases.setdefault(folder, Case(folder.name, folder, folder.parent.name))
        tag = m.group(1)
        if tag in case.files:
            raise DatasetError(f"{folder}: two {tag} images ({case.files[tag].name}, {f.name}); keep one")
        case.files[tag] = f
    if not cases:
        raise DatasetError(f"{root}: no BRATS2015 image (VSD.Brain.XX.O.MR_*.<id>.mha / VSD.Brain_3more.XX.O.OT."
                           "<id>.mha) found; give the extracted BRATS2015_Training folder")
    names: dict[str, Path] = {}
    for c in cases.values():
        missing = [t for t in IMAGE_TAGS if t not in c.files]
        if missing:
            raise DatasetError(f"{c.folder}: no {', '.join(missing)} image (has: {', '.join(sorted(c.files))}); every "
                               "BRATS2015 case has MR_T1, MR_T1c, MR_T2 and MR_Flair — re-extract the archive")
        if c.name in names:
            raise DatasetError(f"{c.folder}: case name {c.name!r} also at {names[c.name]}; convert the two copies "
                               "into different output folders")
        names[c.name] = c.folder
    return sorted(cases.values(), key=lambda c: c.name)


def _write_case(case: Case, out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".tmp-{case.name}-"))
    try:
        os.chmod(tmp, 0o755)
        ref = None
        for tag, path in sorted(case.files.items()):
            vol = read_image(path)
            if ref is None:
                ref = vol
            elif vol.shape != ref.shape or not np.allclose(vol.affine, ref.affine, atol=1e-3):
                raise DatasetError(f"{path}: grid {vol.shape} differs from {ref.path}'s {ref.shape}; BRATS2015 images of "
                                   "a case are co-registered — the file may be damaged")
            if tag == "OT":
                lab = np.asarray(vol.array)
                values = np.unique(lab)
                if values.min() < 0 or values.max() > N_CLASSES - 1 or not np.all(values == np.round(values)):
                    raise DatasetError(f"{path}: label values {values[:8].tolist()}, expected integers 0–{N_CLASSES - 1}")
                write_like(vol, lab, tmp / "seg.nii.gz", np.uint8)
            else:
                write_like(vol, vol.array, tmp / f"{MODALITY_NAMES[tag]}.nii.gz", vol.original_dtype)
        os.replace(tmp, out / case.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_brats2015(src: str | Path, out: str | Path,
                      progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Convert every BRATS2015 case under ``src`` into ``out`` (module docstring); returns the record.

    Cases already in ``out`` are skipped (resume). ``out`` may not be inside ``src``.
    """
    cases = find_cases(src)
    out = Path(out)
    if out.resolve().is_relative_to(Path(src).resolve()):
        raise OutputError(f"{out}: inside the source folder {src}; choose an output folder outside it")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    record = {"source": str(Path(src).resolve()), "format": "BRATS2015 (.mha, VSD.*)", "n_classes": N_CLASSES,
              "modalities": {t: MODALITY_NAMES[t] for t in (*IMAGE_TAGS, "OT")}, "cases": {}}
    skipped = 0
    for i, case in enumerate(cases, start=1):
        if (out / case.name).is_dir():
            skipped += 1
        else:
            _write_case(case, out)
        record["cases"][case.name] = {"grade": case.grade, "labelled": "OT" in case.files,
                                      "files": {MODALITY_NAMES[t]: str(p) for t, p in sorted(case.files.items())}}
        if progress is not None:
            progress(i, len(cases), case.name)
    record["skipped_existing"] = skipped
    atomic_write_bytes(out / RECORD_FILE, json.dumps(record, indent=1).encode())
    return record
