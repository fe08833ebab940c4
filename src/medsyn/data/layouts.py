"""Public dataset layouts as downloaded, recognised without a manifest.

``discover`` (medsyn.data.dataset) reads a subject folder's image files and asks this module
which layout they follow and which modality each file holds:

===========  ======================================================  ==========================
layout       files of subject ``<id>``                               modality names
===========  ======================================================  ==========================
plain        ``<id>/t1n.nii.gz`` (medsyn's own convention)           the file stem
brats2023    ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz``  t1n t1c t2w t2f seg
             (BraTS 2023–2025, every sub-challenge: GLI, MET, PED …)
brats2021    ``BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz``         t1→t1n, t1ce→t1c, t2→t2w,
                                                                      flair→t2f, seg
synthrad     ``1BA001/mr.nii.gz`` ``ct`` ``cbct`` ``mask``             mr ct cbct mask
             (SynthRAD 2023 .nii.gz, SynthRAD 2025 .mha)
bids         ``sub-01/[ses-1/]anat/sub-01_[ses-1_]T1w.nii.gz``       T1w T2w FLAIR … (the suffix;
                                                                      other entities kept:
                                                                      ``acq-mprage_T1w``)
prefixed     every file starts with the folder's name + ``-``/``_``/``.``  the rest of the stem
===========  ======================================================  ==========================

Modality aliases are resolved in one place, :func:`canonical_modality`: the BraTS 2021 names
(``t1``, ``t1ce``, ``t2``, ``flair``) are the BraTS 2023 ones (``t1n``, ``t1c``, ``t2w``,
``t2f``) everywhere — in discovered files of any layout and in configs (``data.source: [t1ce]``
means ``t1c``). Aliases are exact, lower-case names; BIDS suffixes (``T1w`` …) are their own
standard and are left alone.

BIDS subject ids: a session is a subject-visit, so a subject with sessions gives one medsyn
subject per session, ``sub-01_ses-1`` (the BIDS file prefix, hence unique and readable); its
``group`` is ``sub-01`` so that the seeded split keeps all visits of one participant in one split
(no leakage between visits). Without sessions the id is ``sub-01``.

Nested releases (SynthRAD's ``Task1/brain/1BA001``) are found one level further down when the
dataset folder's own sub-folders hold no images.

:func:`output_relpath` names a prediction in the dataset's own convention, e.g. BraTS 2023
``<id>/<id>-t2w.nii.gz`` or BraTS 2021 ``<id>/<id>_t2.nii.gz``, so a completed dataset reads
back with the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# BraTS 2021 name → BraTS 2023 name (the canonical one)
MODALITY_ALIASES: dict[str, str] = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
BRATS2021_NAMES: dict[str, str] = {v: k for k, v in MODALITY_ALIASES.items()}  # canonical → 2021 token
BRATS2023_TOKENS = ("t1n", "t1c", "t2w", "t2f", "seg")
BRATS2021_TOKENS = ("t1", "t1ce", "t2", "flair", "seg")
SYNTHRAD_TOKENS = ("mr", "ct", "cbct", "mask")
PREFIX_SEPARATORS = "-_."

LAYOUTS = ("plain", "brats2023", "brats2021", "synthrad", "bids", "prefixed")
LAYOUT_DESCRIPTIONS = {
    "plain": "medsyn folders (<subject>/<modality>.nii.gz)",
    "brats2023": "BraTS 2023-2025 (<id>/<id>-t1n.nii.gz)",
    "brats2021": "BraTS 2021 (<id>/<id>_t1ce.nii.gz; t1/t1ce/t2/flair read as t1n/t1c/t2w/t2f)",
    "synthrad": "SynthRAD 2023/2025 (<id>/mr|ct|cbct|mask)",
    "bids": "BIDS anatomical (sub-*/[ses-*/]anat/sub-*_[ses-*_]<suffix>.nii.gz)",
    "prefixed": "files named <subject>-<modality> / <subject>_<modality>",
    "manifest": "CSV manifest",
}


def canonical_modality(name: str) -> str:
    """``t1ce`` → ``t1c`` (BraTS 2021 → 2023 names); every other name is returned unchanged."""
    return MODALITY_ALIASES.get(name, name)


@dataclass(frozen=True)
class FolderLayout:
    """How one subject folder names its files.

    layout: one of :data:`LAYOUTS`. prefix: what precedes the modality token in every file name
    (``"BraTS-GLI-00000-000-"``; empty for plain/synthrad). tokens: canonical modality → the token
    as written in this folder (``t1c`` → ``t1ce`` in BraTS 2021). suffix: the image suffix most
    files use (``.nii.gz``, ``.mha``), for writing new files alike.
    """

    layout: str
    prefix: str
    tokens: dict[str, str]
    suffix: str = ".nii.gz"

    def token_for(self, modality: str) -> str:
        """The file token for ``modality`` (canonical name) in this layout, present or not."""
        if modality in self.tokens:
            return self.tokens[modality]
        if self.layout == "brats2021":
            return BRATS2021_NAMES.get(modality, modality)
        return modality

    def file_name(self, modality: str) -> str:
        return f"{self.prefix}{self.token_for(modality)}{self.suffix}"


def _split_suffix(name: str, suffixes: tuple[str, ...]) -> tuple[str, str]:
    for s in suffixes:
        if name.lower().endswith(s):
            return name[: -len(s)], name[len(name) - len(s):]
    return name, ""


def classify_folder(folder_name: str, file_names: list[str], suffixes: tuple[str, ...],
                    bids_prefix: str | None = None) -> tuple[FolderLayout, dict[str, str]]:
    """Image file names of one subject folder → (its layout, {file name: canonical modality}).

    ``bids_prefix`` (``"sub-01_ses-1_"``) marks a BIDS ``anat`` folder; otherwise the layout is
    read from the names: all start with the folder's name + a separator → brats2023 / brats2021
    (when every token is one of that release's names) or prefixed; all stems among
    mr/ct/cbct/mask → synthrad; else plain.
    """
    stems = {}
    suffix_count: dict[str, int] = {}
    for n in file_names:
        stem, suf = _split_suffix(n, suffixes)
        stems[n] = stem
        suffix_count[suf.lower()] = suffix_count.get(suf.lower(), 0) + 1
    suffix = max(sorted(suffix_count), key=lambda s: suffix_count[s]) if suffix_count else ".nii.gz"
    suffix = suffix or ".nii.gz"  # DICOM folders have none
    if bids_prefix is not None:
        layout, prefix = "bids", bids_prefix
        raw = {n: s[len(prefix):] if s.startswith(prefix) and len(s) > len(prefix) else s for n, s in stems.items()}
    else:
        prefix = _common_prefix(folder_name, list(stems.values()))
        if prefix:
            raw = {n: s[len(prefix):] for n, s in stems.items()}
            tokens = set(raw.values())
            if tokens <= set(BRATS2023_TOKENS):
                layout = "brats2023"
            elif tokens <= set(BRATS2021_TOKENS):
                layout = "brats2021"
            else:
                layout = "prefixed"
        else:
            raw = dict(stems)
            layout = "synthrad" if raw and set(raw.values()) <= set(SYNTHRAD_TOKENS) and set(raw.values()) != {"mask"} else "plain"
    canon = {n: canonical_modality(t) for n, t in raw.items()}
    tokens_map = {canon[n]: raw[n] for n in raw}
    return FolderLayout(layout, prefix, tokens_map, suffix), canon


def _common_prefix(folder_name: str, stems: list[str]) -> str:
    """``folder_name`` + the one separator every stem continues with, or "" when they do not."""
    if not stems:
        return ""
    for sep in PREFIX_SEPARATORS:
        p = folder_name + sep
        if all(s.startswith(p) and len(s) > len(p) for s in stems):
            return p
    return ""


def bids_sessions(sub_dir: Path) -> list[tuple[str, str, Path]]:
    """A BIDS ``sub-*`` folder → [(subject id, group, anat folder)]: one per session with an
    ``anat`` folder (id ``sub-01_ses-1``), or the subject's own ``anat`` (id ``sub-01``)."""
    out = []
    for ses in sorted(p for p in sub_dir.iterdir() if p.is_dir() and p.name.startswith("ses-")):
        if (ses / "anat").is_dir():
            out.append((f"{sub_dir.name}_{ses.name}", sub_dir.name, ses / "anat"))
    if (sub_dir / "anat").is_dir():
        out.append((sub_dir.name, sub_dir.name, sub_dir / "anat"))
    return out


def is_bids_root(root: Path) -> bool:
    """A folder is a BIDS dataset when some ``sub-*`` folder holds ``anat`` or ``ses-*/anat``."""
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("sub-") and bids_sessions(p):
            return True
    return False
