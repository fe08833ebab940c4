"""Peak memory of Qu et al.'s slice data with and without the on-disk slice store (issue 13, item 5).

Builds a data set of N subjects (symlinks to the bundled sample's labelled case), then, in a fresh
subprocess per (mode, N), loads every subject's in-range slices the way the stages and
`segment-experiment` do (`load_slices`), and reads every slice once as a Table 2 segmenter would
(one slice at a time, float32). Prints peak RSS (`ru_maxrss`) and its growth from the smallest N,
and the anonymous RSS at the end (`RssAnon`: without the pages of mapped files, which the kernel
can drop at any time; the store keeps at most `OPEN_MAPS` files mapped).
The store's entries are built in a first pass (not measured), then read memory-mapped.

    .venv/bin/python benchmarks/qu_slice_memory.py [--sizes 4 32 128] [--work /tmp/qu-mem]

Goal: with the store, memory does not grow with N (the growth column stays near 0 MB); in memory
it grows by ~1.4 MB per sample subject (25 slices × 4 modalities × 72×96 float16 + labels, brains).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def make_dataset(root: Path, n: int) -> Path:
    from medsyn.data.dataset import discover

    src = discover("sample").subjects["BraTS-GLI-00000-000"]
    for i in range(n):
        d = root / f"s{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        for m, f in src.files.items():
            link = d / Path(f).name
            if not link.exists():
                link.symlink_to(Path(f).resolve())
    return root


def measure(root: Path, mode: str, cache: Path) -> dict:
    import numpy as np

    from medsyn.data.dataset import discover
    from medsyn.data.qu_slices import load_slices

    ds = discover(root)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.time()
    s = load_slices(ds, ds.ids(), ["t1n", "t1c", "t2w", "t2f"], slice_range_mm=(55, 105), slice_size=(72, 96),
                    n_classes=4, store=cache if mode == "store" else None)
    total = 0.0
    for j in range(len(s)):  # a segmenter's pass: one float32 slice at a time
        total += float(np.asarray(s.images[j], dtype=np.float32).mean()) + float(s.labels[j].mean())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    anon = float(status.get("RssAnon", "0 kB").split()[0]) / 1024  # not counting mapped file pages
    return {"slices": len(s), "peak_mb": peak, "anon_mb": anon, "after_import_mb": base, "seconds": time.time() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 32, 128])
    ap.add_argument("--work", type=Path, default=Path("/tmp/qu-slice-memory"))
    ap.add_argument("--modes", nargs="+", default=["memory", "store"], choices=["memory", "store"])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        root, mode, cache = args.child
        print(json.dumps(measure(Path(root), mode, Path(cache))))
        return
    print(f"load: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f} (1/5/15 min)")
    cache = args.work / "cache"
    rows = []
    for n in args.sizes:
        root = make_dataset(args.work / f"data-{n}", n)
        subprocess.run([sys.executable, __file__, "--child", str(root), "store", str(cache)], check=True,
                       capture_output=True)  # build the entries (not measured)
        for mode in args.modes:
            out = subprocess.run([sys.executable, __file__, "--child", str(root), mode, str(cache)], check=True,
                                 capture_output=True, text=True).stdout
            rows.append((n, mode, json.loads(out.strip().splitlines()[-1])))
    first = {mode: r for n, mode, r in rows if n == args.sizes[0]}
    print(f"{'subjects':>8} {'mode':>7} {'slices':>7} {'peak RSS MB':>12} {'growth MB':>10} {'anon RSS MB':>12} "
          f"{'growth MB':>10} {'seconds':>8}")
    for n, mode, r in rows:
        print(f"{n:>8} {mode:>7} {r['slices']:>7} {r['peak_mb']:>12.1f} {r['peak_mb'] - first[mode]['peak_mb']:>10.1f} "
              f"{r['anon_mb']:>12.1f} {r['anon_mb'] - first[mode]['anon_mb']:>10.1f} {r['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
