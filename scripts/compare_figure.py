#!/usr/bin/env python
"""The papers' qualitative figures: the same slices of every compared method side by side with
the reference and error maps (Nie et al. Figs. 3–5, MedGAN Figs. 4–8). Qu et al.'s Figs. 7–10
(synthetic cases from labels, segmentation examples: no reference image) are ``medsyn qu figure``.

Methods are given as NAME=PATH, where PATH is a prediction folder (``<subject>/<target>.nii.gz``,
what ``medsyn predict`` writes) or a run folder (it is asked to predict the subject first, into
``OUT_files/predictions/NAME``):

    python scripts/compare_figure.py --ref DATASET --subject BraTS-GLI-00000-000 --target t2w \\
        --method UNet=runs/unet --method "Dual+att"=runs/dual pred/sgan --out fig.png [--slices 3]

Slices: ``--slices N`` takes N axial slices evenly spaced over the slices holding at least a
tenth of the largest foreground area, always including the one with the largest tumour
cross-section when a label map exists; ``--slices 40,52`` names them. ``--source t1n`` adds the
input as the first column. One figure per subject (``--subject`` repeatable: OUT gets the subject
id appended).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help="reference dataset (or 'sample')")
    p.add_argument("--subject", action="append", required=True, help="subject id (repeatable)")
    p.add_argument("--target", required=True, help="modality compared, e.g. t2w or ct")
    p.add_argument("--method", action="append", required=True, metavar="NAME=PATH",
                   help="a method's prediction folder or run folder (repeatable, in column order)")
    p.add_argument("--source", help="also show this input modality as the first column")
    p.add_argument("--slices", default="3", help="N evenly spaced slices, or a comma-separated list of indices")
    p.add_argument("--view", choices=("axial", "coronal", "sagittal"), default="axial")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def choose_slices(foreground: np.ndarray, tumour: np.ndarray | None, spec: str, axis: int = 2) -> list[int]:
    """Indices along ``axis``: explicit (``"40,52"``) or N evenly spaced over slices with foreground
    (≥ 10 % of the largest), the largest tumour cross-section always among them."""
    n_sl = foreground.shape[axis]
    if "," in spec or not spec.isdigit():
        try:
            idx = [int(v) for v in spec.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--slices: got {spec!r}; expected a number or indices like 40,52") from None
        bad = [i for i in idx if not 0 <= i < n_sl]
        if bad or not idx:
            raise ValueError(f"--slices: {bad or spec} outside 0 … {n_sl - 1}")
        return idx
    n = int(spec)
    from medsyn.reports.analysis import foreground_slices

    other = tuple(a for a in range(3) if a != axis)
    cand = foreground_slices(foreground, axis)
    cand = cand if cand.size else np.arange(n_sl)
    picks = [int(cand[round(i)]) for i in np.linspace(0, len(cand) - 1, n + 2)[1:-1]] if n > 0 else []
    if tumour is not None and tumour.any():
        t = int(np.argmax(tumour.sum(axis=other)))
        if picks and t not in picks:  # the pick nearest to it gives way
            picks[int(np.argmin([abs(p - t) for p in picks]))] = t
    return sorted(set(picks))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from medsyn.data.dataset import discover, resolve_root
    from medsyn.errors import MedsynError
    from medsyn.inference.predict import load_run, predict_subjects
    from medsyn.reports.analysis import load_subject_volumes
    from medsyn.reports.figures import VIEWS, comparison_grid
    from medsyn.reports.html import units_of
    from medsyn.training.run_dir import RunDir

    methods = []
    for item in args.method:
        if "=" not in item:
            print(f"error: --method {item!r}: expected NAME=PATH", file=sys.stderr)
            return 2
        name, path = item.split("=", 1)
        if not Path(path).is_dir():
            print(f"error: --method {name}: {path} is not a folder (a prediction or run folder)", file=sys.stderr)
            return 2
        methods.append((name, Path(path)))
    try:
        ds = discover(resolve_root(args.ref))
        written = []
        for sid in args.subject:
            if sid not in ds.subjects:
                print(f"error: --subject {sid!r} is not in {ds.root}", file=sys.stderr)
                return 2
            subj = ds.subjects[sid]
            preds, base = [], None
            for name, path in methods:
                if RunDir(path).exists():  # a run folder: predict this subject with it
                    pdir = args.out.parent / f"{args.out.stem}_files" / "predictions" / name
                    predict_subjects(load_run(path, "best", args.device), [subj], pdir, force=True)
                    path = pdir
                sv = load_subject_volumes(path, subj, args.target, args.source)
                if sv is None:
                    print(f"error: {path}: no {args.target} prediction of {sid} on the reference's grid", file=sys.stderr)
                    return 2
                base = base or sv
                preds.append((name, sv.pred))
            slices = choose_slices(base.foreground, base.tumour, args.slices, VIEWS[args.view])
            out = args.out if len(args.subject) == 1 else args.out.with_name(f"{args.out.stem}_{sid}{args.out.suffix}")
            comparison_grid(base.ref, preds, base.foreground, slices, out, view=args.view, spacing=base.spacing,
                            target=args.target, units=units_of(args.target),
                            source=(args.source, base.source) if args.source else None, tumour=base.tumour)
            written.append(out)
    except (MedsynError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in written:
        print(f"wrote {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
