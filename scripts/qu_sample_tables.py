"""Qu et al. Tables 1 and 2 on the bundled two-subject sample, CPU, tiny budgets.

What it runs (every step is a medsyn command or the library call behind it):

1. For each lesion-supervision variant (4SEG first, then 1SEG and 1ECL+4DCL for Table 1):
   ``medsyn train configs/qu_brats.yaml --out OUT/run-<V> --max-steps STEPS`` with small networks
   (``--set params.base_channels=8 …``) — through ``medsyn.pipelines.qu.run_pipeline`` directly,
   the function that command dispatches to.
2. ``medsyn generate OUT/run-4SEG --n 3R --out OUT/syn-4SEG`` with both filters at
   the paper's thresholds first; when a few-hundred-step CPU model cannot pass them, the
   thresholds that did let cases through are used and printed (``--filter-mae 1 --min-dice 0``
   switches them off), together with the rejection counts.
3. ``medsyn segment-experiment OUT/run-4SEG --synthetic OUT/syn-4SEG --out OUT/table2 --steps …``
   (Table 2, all 25 rows) and ``--table 1`` with one unfiltered synthetic set per variant.

The numbers on a 2-subject sample and a few hundred CPU steps say nothing about the method;
they show the pipeline end to end. The full BraTS command is in docs/qu.md.

    python scripts/qu_sample_tables.py --out runs/qu-sample [--steps 100] [--seg-steps 300] [--table1-repeats 3] \
        [--table2-repeats 1] [--examples 4]

``--examples K`` keeps K test slices with every segmenter's predictions beside each table, for
``medsyn qu figure OUT/table1`` / ``OUT/table2`` (Figs. 9–10); ``medsyn qu figure OUT/syn-4SEG``
draws the synthetic cases (Figs. 7–8).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from medsyn.cli.main import main as medsyn
from medsyn.config import load_config
from medsyn.pipelines.qu import run_pipeline

SMALL = ["params.base_channels=8", "params.code_channels=16", "params.seg_channels=[8,16,32,64]",
         "train.sample_every=0", "train.checkpoint_every=50", "train.log_every=10", "train.device=cpu"]


def sh(*args) -> int:
    cmd = " ".join(str(a) for a in args)
    print(f"\n$ medsyn {cmd}", flush=True)
    t = time.time()
    rc = medsyn([str(a) for a in args])
    print(f"(exit {rc}, {time.time() - t:.0f} s)", flush=True)
    return rc


def train(out: Path, variant: str, steps: int) -> Path:
    run = out / f"run-{variant}"
    overrides = SMALL + [f"params.lesion_segmenter={variant}", f"train.max_steps={steps}"]
    print(f"\n$ medsyn train configs/qu_brats.yaml --out {run} " + " ".join(f"--set {o}" for o in overrides), flush=True)
    t = time.time()
    resume = (run / "config.yaml").is_file()
    res = run_pipeline(load_config("configs/qu_brats.yaml", overrides), run, resume=resume, progress=False)
    print(f"({res.stopped}, {res.step} steps over all stages, {time.time() - t:.0f} s)", flush=True)
    return run


def generate(run: Path, n: int, out: Path, seed: int, strict_first: bool) -> None:
    if out.exists():
        return
    if strict_first:
        rc = sh("generate", run, "--n", n, "--out", out, "--seed", seed, "--max-attempts", 50)
        if rc == 0:
            return
        for p in sorted(out.glob("*")) if out.exists() else []:  # keep the record of the strict attempt
            if p.name == "generate.json":
                p.rename(out.parent / f"{out.name}-strict-attempt.json")
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        if out.exists():
            out.rename(out.parent / f"{out.name}-strict-partial")
    assert sh("generate", run, "--n", n, "--out", out, "--seed", seed,
              "--filter-mae", 1, "--min-dice", 0) == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/qu-sample"))
    ap.add_argument("--steps", type=int, default=100, help="training steps per pipeline stage")
    ap.add_argument("--seg-steps", type=int, default=300, help="segmenter updates per Table 1/2 experiment")
    ap.add_argument("--variants", default="4SEG,1SEG,1ECL+4DCL")
    ap.add_argument("--table1-repeats", type=int, default=3, help="segmenters trained for Table 1 (mean ± std)")
    ap.add_argument("--table2-repeats", type=int, default=1,
                    help="segmenters trained per Table 2 row (the best, Sec. 3.1, and mean ± std)")
    ap.add_argument("--examples", type=int, default=4, help="test slices kept with the predictions for the figures")
    ap.add_argument("--experiments", default="all", help="Table 2 rows (the paper's numbers), e.g. 1,2,15, or all")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny networks: one thread beats two busy cores
    args.out.mkdir(parents=True, exist_ok=True)
    variants = args.variants.split(",")
    runs = {v: train(args.out, v, args.steps) for v in variants}
    main_run = runs[variants[0]]
    from medsyn.pipelines.qu_segment import real_data

    real_train, test, split = real_data(main_run)
    R, n_test = len(real_train), len(test)
    print(f"\nreal slices: R = {R} training, {n_test} test (split by {split['split']})", flush=True)
    generate(main_run, 3 * R, args.out / f"syn-{variants[0]}", 0, strict_first=True)
    for v in variants:  # Table 1: no segmenter filter (Sec. 3.5)
        generate(runs[v], n_test, args.out / f"syn1-{v}", 1, strict_first=False)
    if not (args.out / "table2" / "table2.md").exists():
        sh("segment-experiment", main_run, "--synthetic", args.out / f"syn-{variants[0]}", "--out", args.out / "table2",
           "--steps", args.seg_steps, "--experiments", args.experiments, "--repeats", args.table2_repeats,
           "--examples", args.examples)
    if not (args.out / "table1" / "table1.md").exists():
        sh("segment-experiment", main_run, "--table", 1, *[x for v in variants for x in ("--synthetic", f"{v}={args.out / f'syn1-{v}'}")],
           "--out", args.out / "table1", "--steps", args.seg_steps, "--repeats", args.table1_repeats,
           "--examples", args.examples)
    counts = json.loads((args.out / f"syn-{variants[0]}" / "generate.json").read_text())["counts"]
    print(f"\nsynthetic set for Table 2: {counts}")


if __name__ == "__main__":
    main()
