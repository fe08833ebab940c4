"""``medsyn reader-study create``: draw trials and render them under opaque names.

A study folder holds only what a reader may see plus what ``analyse`` needs:

    STUDY/
      study.json      public: title, trial count, image names per trial, reader names, seed
      readers.json    private: reader → access token (0600)
      manifest.json   private: trial → subject, slice; image → method (0600) — read by analyse only
      images/<32 hex>.png

The server serves study.json's trials and images/ to readers with a valid token, never the
manifest, the tokens of others or any NIfTI file; image names are random, so they tell nothing.

Trial drawing (seeded, recorded): for each trial a subject (round-robin over a seeded shuffle of
the subjects every method predicted) and an axial slice inside the reference's foreground (≥ 10 %
of the subject's largest foreground area), with ``stratify`` alternating slices with and without
tumour (label > 0) where a label exists. The same slice is rendered from the reference and from
every method.

Window (one per trial, shared by all its images): the 0.5–99.5th percentiles of the *reference*
slice inside its foreground — the reference's own display window, so no method is favoured by a
window fitted to it; outside the window values clip. Images are the slice's foreground box plus a
margin, made square by padding with the window's low end, then resized to ``size`` × ``size``
(256, as MedGAN's study) with bilinear interpolation, or kept at native size (``size=0``).
Displayed in radiological convention (patient's left on the image's right, anterior up).
"""

from __future__ import annotations

import io
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsyn.errors import ConfigError, DatasetError, OutputError
from medsyn.io.image import atomic_write_bytes

REFERENCE = "reference"  # the method name of the real images in manifest and analysis
PUBLIC, PRIVATE, TOKENS = "study.json", "manifest.json", "readers.json"
IMAGE_DIR = "images"


@dataclass
class Slice:
    subject: str
    index: int
    tumour: bool


def _load_subject(pred_dirs: dict[str, Path], subject: Any, modality: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    """Reference and every method's volume (X, Y, Z) on the reference grid, foreground, label."""
    from medsyn.reports.analysis import load_subject_volumes

    vols: dict[str, np.ndarray] = {}
    fg = lab = None
    for name, d in pred_dirs.items():
        sv = load_subject_volumes(d, subject, modality, None)
        if sv is None:
            raise DatasetError(f"{d}: no {modality} prediction of subject {subject.id!r} on the reference's grid")
        vols[name] = sv.pred
        if fg is None:
            vols[REFERENCE], fg, lab = sv.ref, sv.foreground, sv.label
    return vols, fg, lab


def draw_slices(cases: dict[str, tuple[np.ndarray, np.ndarray | None]], n: int, seed: int, stratify: bool) -> list[Slice]:
    """n (subject, axial slice) pairs inside the foreground; see the module doc."""
    from medsyn.reports.analysis import foreground_slices

    rng = np.random.default_rng(seed)
    pools: dict[str, dict[bool, list[int]]] = {}
    for sid, (fg, lab) in cases.items():
        ok = foreground_slices(fg)
        tum = (lab > 0).any(axis=(0, 1)) if lab is not None else np.zeros(fg.shape[2], bool)
        pools[sid] = {True: [int(k) for k in ok if tum[k]], False: [int(k) for k in ok if not tum[k]]}
    order = sorted(cases)
    rng.shuffle(order)
    used: set[tuple[str, int]] = set()
    out: list[Slice] = []
    for i in range(n):
        want = (i % 2 == 0) if stratify else None
        for j in range(len(order)):
            sid = order[(i + j) % len(order)]
            kinds = [want] if want is not None and pools[sid][want] else [True, False]
            cand = [(k, t) for t in kinds for k in pools[sid][t] if (sid, k) not in used]
            if cand:
                k, t = cand[int(rng.integers(len(cand)))]
                used.add((sid, k))
                out.append(Slice(sid, k, t))
                break
        else:
            raise DatasetError(f"only {len(out)} distinct slices with foreground in the predicted subjects; "
                               f"ask for fewer trials (--trials {len(out)})")
    return out


def render(img2d: np.ndarray, window: tuple[float, float], box: tuple[slice, slice], size: int) -> bytes:
    """An (X, Y) slice → PNG bytes: windowed to 8 bit, cropped to ``box``, squared, resized."""
    from PIL import Image

    lo, hi = window
    a = np.clip((img2d[box] - lo) / (hi - lo), 0.0, 1.0)
    # canonical RAS (X, Y): rows = anterior (up) … posterior, columns = patient's right … left (radiological)
    a = np.flipud(a.T)[:, ::-1]
    h, w = a.shape
    side = max(h, w)
    sq = np.zeros((side, side))
    sq[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = a
    im = Image.fromarray(np.rint(sq * 255).astype(np.uint8), mode="L")
    if size:
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def create_study(ref_root: str | Path, methods: dict[str, str | Path], modality: str, out: str | Path, *,
                 readers: list[str], trials: int = 60, seed: int = 0, size: int = 256, stratify: bool = True,
                 title: str | None = None, subjects: list[str] | None = None) -> Path:
    """Write a study folder (see the module doc); returns its path. ``methods``: name → prediction folder."""
    from medsyn.data.dataset import discover, resolve_root
    from medsyn.reports.figures import _crop_box, _window

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out}: folder exists and is not empty; choose a new study folder")
    if not methods:
        raise ConfigError("reader-study create: give at least one method as NAME=PREDICTION_FOLDER")
    if REFERENCE in methods:
        raise ConfigError(f"method name {REFERENCE!r} is reserved for the real images; rename it")
    if not readers or len(set(readers)) != len(readers) or any(not r.replace("-", "").replace("_", "").isalnum() for r in readers):
        raise ConfigError(f"--readers: got {readers}; give distinct names of letters, digits, '-' or '_'")
    if trials < 1 or size < 0 or (0 < size < 32):
        raise ConfigError(f"--trials must be ≥ 1 and --size 0 (native) or ≥ 32; got {trials}, {size}")
    pred_dirs = {n: Path(p) for n, p in methods.items()}
    for n, p in pred_dirs.items():
        if not p.is_dir():
            raise DatasetError(f"{p}: prediction folder of method {n!r} not found")
    ds = discover(resolve_root(ref_root))
    common = [s for s in ds.ids() if modality in ds.subjects[s].files
              and all((p / s).is_dir() for p in pred_dirs.values())]
    if subjects:
        bad = [s for s in subjects if s not in common]
        if bad:
            raise DatasetError(f"--subjects: {bad[0]!r} has no reference {modality} or no prediction of every method")
        common = list(subjects)
    if not common:
        raise DatasetError(f"no subject of {ds.root} has a reference {modality} and a prediction from every method")
    loaded = {sid: _load_subject(pred_dirs, ds.subjects[sid], modality) for sid in common}
    slices = draw_slices({s: (v[1], v[2]) for s, v in loaded.items()}, trials, seed, stratify)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    (tmp / IMAGE_DIR).mkdir(parents=True, exist_ok=False)
    names = [REFERENCE, *methods]
    public_trials, private_trials = [], []
    for i, sl in enumerate(slices):
        vols, fg, _ = loaded[sl.subject]
        fg2 = fg[:, :, sl.index]
        ref2 = vols[REFERENCE][:, :, sl.index]
        window = _window(ref2[fg2])
        box = _crop_box(fg2)  # the report figures' foreground box, margin 4
        images = {}
        for name in names:
            key = secrets.token_hex(16)
            (tmp / IMAGE_DIR / f"{key}.png").write_bytes(render(vols[name][:, :, sl.index], window, box, size))
            images[key] = name
        keys = list(images)
        public_trials.append({"trial": i, "images": sorted(keys)})
        private_trials.append({"trial": i, "subject": sl.subject, "slice": sl.index, "tumour": sl.tumour,
                               "window": list(window), "images": images})
    tokens = {r: secrets.token_urlsafe(18) for r in readers}
    public = {"title": title or f"Which image is real? ({modality})", "modality": modality, "n_trials": trials,
              "n_images_per_trial": len(names), "readers": readers, "seed": seed, "size": size,
              "scale": {"1": "clearly synthetic", "2": "probably synthetic", "3": "probably real", "4": "most realistic"},
              "trials": public_trials}
    private = {"reference": str(ds.root), "methods": {n: str(p) for n, p in pred_dirs.items()},
               "seed": seed, "stratify": stratify, "size": size,
               "window": "0.5-99.5th percentile of the reference slice inside its foreground, shared by the trial",
               "trials": private_trials}
    (tmp / PUBLIC).write_text(json.dumps(public, indent=1))
    for name, data in ((PRIVATE, private), (TOKENS, tokens)):
        path = tmp / name
        path.write_text(json.dumps(data, indent=1))
        os.chmod(path, 0o600)
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)
    return out


def read_study(study: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(study.json, readers → tokens) of a study folder, with a clear error when it is not one."""
    study = Path(study)
    try:
        return json.loads((study / PUBLIC).read_text()), json.loads((study / TOKENS).read_text())
    except FileNotFoundError:
        raise DatasetError(f"{study}: not a reader-study folder (no {PUBLIC}/{TOKENS}); "
                           "make one with `medsyn reader-study create`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{study}: unreadable study files ({e})") from None


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())
