"""Table 1 of Nie et al. 2018: every baseline and ablation trained with the same budget, evaluated
on the same test subjects (MAE, PSNR, tumour-region PSNR, SSIM; mean ± std over subjects).

    python scripts/reproduce_nie2018.py --steps 300 --out runs/nie2018_table1 [--set key=value ...]

Every variant uses configs/nie2018_brats_t1_t2.yaml (or --config) with only ``method`` changed,
the same seed, data split and step budget; ``--set`` overrides apply to all of them. Writes
``table1.md`` and ``table1.json`` into ``--out``, beside one run folder and one prediction folder
per variant. On full BraTS with a GPU (the paper's budget is epochs, not steps):

    python scripts/reproduce_nie2018.py --steps 100000 --out runs/table1 \\
        --set data.root=/data/BraTS --set train.device=cuda --set train.amp=true
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from medsyn.config import load_config
from medsyn.data.pipeline import open_dataset
from medsyn.errors import MedsynError
from medsyn.inference.predict import load_run, predict_subjects
from medsyn.metrics.evaluate import evaluate_predictions, json_safe
from medsyn.training.distributed import launch_train

VARIANTS = [("FCN", "nie-fcn"), ("UNet", "nie-unet"), ("sGAN", "nie-sgan"), ("sGAN-1 (D1)", "nie-sgan1"),
            ("sGAN-2 (D2)", "nie-sgan2"), ("dual-D", "nie-dual"), ("dual-D + attention (ours)", "nie-dual-attention")]
COLUMNS = [("MAE", "foreground", "mae", False), ("PSNR", "foreground", "psnr", True),
           ("tumour PSNR", "tumour", "psnr", True), ("SSIM", "foreground", "ssim", True)]


def run_variant(config: str, method: str, steps: int, overrides: list[str], out: Path) -> dict:
    cfg = load_config(config, [*overrides, f"method={method}", f"train.max_steps={steps}", "train.sample_every=0"])
    run_dir = out / "runs" / method
    if (run_dir / "best.json").is_file():
        print(f"[{method}] already trained: {run_dir}")
    else:
        launch_train(cfg, run_dir, console=None)
    splits = json.loads((run_dir / "splits.json").read_text())
    test_ids = splits["test"] or splits["val"]
    if not test_ids:
        raise MedsynError("no test (or validation) subjects: set data.test=[...] or test_fraction > 0")
    ds = open_dataset(cfg.data)
    run = load_run(run_dir, "best")
    pred_dir = out / "predictions" / method
    predict_subjects(run, [ds.subjects[i] for i in test_ids], pred_dir, force=True)
    return evaluate_predictions(pred_dir, ds.root, cfg.data.target, metrics=["mae", "psnr", "ssim"])


def fmt(stats: dict | None) -> str:
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "–"
    std = stats.get("std")
    return f"{stats['mean']:.4g} ({std:.2g})" if std is not None and math.isfinite(std) else f"{stats['mean']:.4g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/nie2018_brats_t1_t2.yaml")
    ap.add_argument("--steps", type=int, default=300, help="generator updates per variant (same for all)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--only", default=None, help="comma-separated method names (default: all seven)")
    args = ap.parse_args()
    chosen = [(n, m) for n, m in VARIANTS if not args.only or m in args.only.split(",")]
    results = {}
    try:
        for name, method in chosen:
            print(f"== {name} ({method}), {args.steps} steps")
            results[method] = run_variant(args.config, method, args.steps, args.overrides, args.out)
    except MedsynError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = {m: {col: results[m]["summary"].get(region, {}).get(metric) for col, region, metric, _ in COLUMNS}
             for _, m in chosen}
    best = {}
    for col, _, _, higher in COLUMNS:
        vals = {m: (table[m][col] or {}).get("mean") for m in table}
        vals = {m: v for m, v in vals.items() if v is not None and math.isfinite(v)}
        if vals:
            best[col] = (max if higher else min)(vals, key=vals.get)
    n_test = {m: len(results[m]["subjects"]) for m in table}
    lines = [f"Nie et al. 2018, Table 1 protocol — {args.steps} steps per variant, config {args.config}, "
             f"overrides: {' '.join(args.overrides) or 'none'}; mean (std) over {max(n_test.values())} test subject(s); "
             "data range per subject = max − min of the reference in the brain mask; best in bold.", "",
             "| Method | " + " | ".join(c for c, *_ in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, m in chosen:
        cells = [(f"**{fmt(table[m][c])}**" if best.get(c) == m else fmt(table[m][c])) for c, *_ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table1.md").write_text(md)
    (args.out / "table1.json").write_text(json.dumps(json_safe({"steps": args.steps, "config": args.config,
                                                                "overrides": args.overrides, "table": table,
                                                                "per_subject": {m: results[m]["subjects"] for m in table}}), indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
