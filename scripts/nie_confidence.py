#!/usr/bin/env python
"""Does D2 rate tumour regions as hard? Nie et al. 2018, Sec. 3.2, checked on a test set.

The paper shows confidence maps M (its Fig. 4–5) and reads low confidence in tumour regions as
"hard to synthesise". This script measures it: it predicts each test subject with a trained run
(``nie-dual-attention``, ``nie-dual`` or ``nie-sgan2`` — any method with D2), exports M, and
compares the mean of M inside the tumour (label > 0) with its mean in the healthy foreground
(mask without tumour):

* per subject: mean M_tumour and M_healthy, paired Wilcoxon signed-rank test over subjects
  (``medsyn.reports.tables.paired_wilcoxon``; at n < 6 the smallest possible p is stated);
* per axial slice holding both regions: the same test over slices (more pairs, but slices of one
  subject are not independent — read it as a description, not as evidence across subjects).

``--bn eval`` (default) exports M with D2's running batch-norm statistics, so each window's map
depends on that window only — the map a deployed model gives. ``--bn train`` uses the statistics
of each batch of windows, as D2 computed M for the attention loss during training; M then also
depends on which windows share a batch (``inference.batch_size``).

    python scripts/nie_confidence.py RUN --out conf/ [--data DATASET] [--subjects A,B] [--bn eval|train]

Writes ``OUT/predictions/<subject>/<target>_confidence.nii.gz``, ``OUT/confidence.json`` and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run folder of a method with the local discriminator D2")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--data", help="dataset with the test subjects' sources, labels (seg) and masks "
                                  "(default: the run's data.root)")
    p.add_argument("--subjects", help="comma-separated subjects (default: the run's test split, else val)")
    p.add_argument("--bn", choices=("eval", "train"), default="eval", help="D2's batch norm for M (see above)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    return p.parse_args(argv)


def region_means(conf: np.ndarray, mask: np.ndarray, label: np.ndarray) -> dict[str, object]:
    """Mean M in tumour (label > 0) and healthy foreground (mask & label == 0), for the volume and
    per axial slice holding both regions. conf, mask, label: (X, Y, Z)."""
    tumour = label > 0
    healthy = mask & ~tumour
    out: dict[str, object] = {
        "tumour": float(conf[tumour].mean()) if tumour.any() else math.nan,
        "healthy": float(conf[healthy].mean()) if healthy.any() else math.nan,
        "tumour_voxels": int(tumour.sum()), "healthy_voxels": int(healthy.sum()), "slices": []}
    for k in range(conf.shape[2]):
        t, h = tumour[:, :, k], healthy[:, :, k]
        if t.any() and h.any():
            out["slices"].append((k, float(conf[:, :, k][t].mean()), float(conf[:, :, k][h].mean())))
    return out


def analyse(per_subject: dict[str, dict[str, object]]) -> dict[str, object]:
    """Paired tests tumour vs healthy: over subjects, and over slices holding both regions."""
    from medsyn.reports.tables import paired_wilcoxon

    subj = {s: r for s, r in per_subject.items() if math.isfinite(r["tumour"]) and math.isfinite(r["healthy"])}
    n, med, p, note = paired_wilcoxon({s: r["healthy"] for s, r in subj.items()},
                                      {s: r["tumour"] for s, r in subj.items()})
    slices_t = {f"{s}:{k}": t for s, r in subj.items() for k, t, _ in r["slices"]}
    slices_h = {f"{s}:{k}": h for s, r in subj.items() for k, _, h in r["slices"]}
    ns, meds, ps, notes = paired_wilcoxon(slices_h, slices_t)
    mean = lambda d: float(np.mean(list(d))) if d else math.nan  # noqa: E731
    return {"subjects": {"n": n, "mean_tumour": mean(r["tumour"] for r in subj.values()),
                         "mean_healthy": mean(r["healthy"] for r in subj.values()),
                         "median_tumour_minus_healthy": med, "wilcoxon_p": p, "note": note},
            "slices": {"n": ns, "mean_tumour": mean(slices_t.values()), "mean_healthy": mean(slices_h.values()),
                       "median_tumour_minus_healthy": meds, "wilcoxon_p": ps, "note": notes}}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from medsyn.data.cases import load_case
    from medsyn.data.dataset import discover
    from medsyn.errors import MedsynError
    from medsyn.inference.predict import load_run, predict_subjects
    from medsyn.io.image import read_image

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run = load_run(args.run, args.checkpoint, args.device)
        if "D2" not in run.method.networks:
            print(f"error: {args.run}: method {run.cfg.method!r} has no local discriminator D2 (no confidence map)",
                  file=sys.stderr)
            return 2
        run.method.confidence_bn = args.bn
        d = run.cfg.data
        ds = discover(args.data or d.root, None if args.data else d.manifest)
        if args.subjects:
            ids = [s.strip() for s in args.subjects.split(",") if s.strip()]
        else:
            splits = json.loads((Path(args.run) / "splits.json").read_text())
            ids = splits.get("test") or splits.get("val") or []
        missing = [s for s in ids if s not in ds.subjects]
        if not ids or missing:
            print(f"error: no test subjects to analyse ({'missing: ' + ', '.join(missing) if missing else 'none given'}); "
                  "pass --subjects and --data", file=sys.stderr)
            return 2
        no_label = [s for s in ids if (d.label or "seg") not in ds.subjects[s].files]
        if no_label:
            print(f"error: {', '.join(no_label)}: no {d.label or 'seg'!r} label map; the tumour region is needed",
                  file=sys.stderr)
            return 2
        pred_dir = args.out / "predictions"
        predict_subjects(run, [ds.subjects[s] for s in ids], pred_dir, force=True, write_confidence=True)
        per_subject = {}
        for s in ids:
            case = load_case(ds.subjects[s], list(d.source), None, mask=d.mask, label=d.label or "seg",
                             resample=d.resample, require_target=False)
            conf = read_image(pred_dir / s / f"{d.target}_confidence.nii.gz").array
            per_subject[s] = region_means(np.asarray(conf, np.float64), case.mask, case.label)
    except MedsynError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = {"run": str(args.run), "method": run.cfg.method, "checkpoint": str(run.checkpoint), "bn": args.bn,
           "per_subject": per_subject, "tests": analyse(per_subject)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "confidence.json").write_text(json.dumps(res, indent=1))
    print(f"D2 confidence M, tumour vs healthy foreground ({run.cfg.method}, BN {args.bn}); "
          "paired Wilcoxon signed-rank, two-sided")
    print("| unit | n | mean M tumour | mean M healthy | median (tumour − healthy) | p |")
    print("|---|---|---|---|---|---|")
    for unit, t in res["tests"].items():
        print(f"| {unit} | {t['n']} | {t['mean_tumour']:.4f} | {t['mean_healthy']:.4f} | "
              f"{t['median_tumour_minus_healthy']:.4f} | {t['wilcoxon_p']:.3g} {t['note']} |")
    print(f"wrote {args.out / 'confidence.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
