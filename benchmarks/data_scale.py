"""Memory and speed of the preprocessed cache as the dataset grows (issue 13). A script, not a test.

Datasets of N subjects are made of symlinked copies of real cases (``--data full``: the 240×240×155
BraTS 2023 cases in /work/shared/data/brats2023; ``--data sample``: the bundled, smaller sample),
each copy a subject of its own (its own cache entry). Printed, side by side in one run:

1. cache build seconds per subject with 1 and with 2 processes (``medsyn preprocess`` on
   ``--build-subjects`` fresh subjects, interleaved), and disk size per subject;
2. peak RSS (``ru_maxrss`` of the process, from ``os.wait4``) of ``medsyn train
   configs/nie2018_brats_t1_t2.yaml --set params.base_filters=32 --max-steps 5`` with N = each
   of ``--counts`` subjects (cache built beforehand by ``medsyn preprocess``, so the figure is the
   training's own), and the ratio to the smallest N (goal: ≤ 1.15 at 200 vs 2);
3. patches/s (5×144×144, batch 10) from the cache through the engine's BatchFeed with 0, 1 and 2
   loader workers (goal: ≥ 2,000 with 2 workers).

    python benchmarks/data_scale.py --data full --counts 2 50 200
    python benchmarks/data_scale.py --data sample --counts 2 50 200 --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL = Path("/work/shared/data/brats2023")
CONFIG = REPO / "configs" / "nie2018_brats_t1_t2.yaml"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def make_dataset(real: Path, n: int, out: Path) -> Path:
    """``n`` subject folders of symlinks to the real cases, in turn."""
    cases = sorted(p for p in real.iterdir() if p.is_dir())
    if out.exists():  # made by an earlier call with the same --work
        return out
    out.mkdir(parents=True)
    for i in range(n):
        src = cases[i % len(cases)]
        d = out / f"sub-{i:04d}"
        d.mkdir()
        for f in src.iterdir():
            (d / f.name).symlink_to(f)
    return out


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """(seconds, peak RSS of the process in MB, output); raises on failure."""
    return run_all([cmd], env)[0]


def run_all(cmds: list[list[str]], env: dict[str, str]) -> list[tuple[float, int, str]]:
    """Run ``cmds`` at the same time; per command (seconds, its own peak RSS in MB from
    ``os.wait4``, output). On a shared machine this gets the runs more of the cores; peak RSS is
    per process, so running them together does not change it."""
    t0 = time.perf_counter()
    logs = [tempfile.TemporaryFile("w+") for _ in cmds]
    procs = [subprocess.Popen(c, stdout=f, stderr=subprocess.STDOUT, env=env, text=True) for c, f in zip(cmds, logs)]
    res: dict[int, tuple[float, int]] = {}
    while len(res) < len(procs):
        pid, status, usage = os.wait4(-1, 0)
        for i, p in enumerate(procs):
            if p.pid == pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                res[i] = (time.perf_counter() - t0, usage.ru_maxrss // 1024)
    out = []
    for i, (c, p, f) in enumerate(zip(cmds, procs, logs)):
        f.seek(0)
        text = f.read()
        if p.returncode != 0:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(c)}\n{text[-3000:]}")
        out.append((res[i][0], res[i][1], text))
    return out


def medsyn(*args: str) -> list[str]:
    return [sys.executable, "-m", "medsyn", *args]


def sets(root: Path, cache: Path, *extra: str) -> list[str]:
    items = [f"data.root={root}", f"data.cache_dir={cache}", "params.base_filters=32", *extra]
    return [a for s in items for a in ("--set", s)]


def patches_per_second(root: Path, cache: Path, workers: int, batches: int) -> tuple[float, float]:
    """Batches of 10 × (5, 144, 144) from the cache into the loop (the engine's BatchFeed):
    (patches per second of wall time, CPU milliseconds of this process per patch)."""
    import torch

    from medsyn.config import load_config
    from medsyn.data.pipeline import prepare_training_data
    from medsyn.data.sampling import PatchSampler25D
    from medsyn.training.engine import BatchFeed

    cfg = load_config(CONFIG, [f"data.root={root}", f"data.cache_dir={cache}"])
    data = prepare_training_data(cfg.data, log=lambda m: None)
    d = cfg.data
    sampler = PatchSampler25D(data.train, slice_axis=d.slice_axis, context=d.context_slices,
                              patch_size=tuple(d.patch_size), foreground_fraction=d.foreground_fraction, seed=0)
    feed = BatchFeed(sampler, cfg.train.batch_size, torch.device("cpu"), num_workers=workers)
    for _ in range(3):  # start the workers, fill the prefetch queue
        feed()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        b = feed()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    feed.close()
    assert tuple(b["source"].shape) == (cfg.train.batch_size, d.context_slices, *d.patch_size)
    n = batches * cfg.train.batch_size
    return n / dt, 1e3 * cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["full", "sample"], default="full")
    ap.add_argument("--counts", type=int, nargs="+", default=[2, 50, 200])
    ap.add_argument("--build-subjects", type=int, default=6, help="subjects timed per build measurement")
    ap.add_argument("--batches", type=int, default=40, help="batches timed per patches/s measurement")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="skip the training RSS runs above the two smallest counts")
    ap.add_argument("--skip", nargs="*", default=[], choices=["build", "rss", "loader"])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    if args.data == "full":
        real = FULL
    else:
        sys.path.insert(0, str(REPO / "src"))
        from medsyn.data.dataset import sample_root

        real = sample_root()
    work = args.work or Path(tempfile.mkdtemp(prefix="medsyn-data-scale-"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
    print(f"data: {args.data} ({real}); scratch: {work}; load at start: {load()}")

    if "build" not in args.skip:  # ---------------------------------------------------------- 1
        n = args.build_subjects
        ds = make_dataset(real, n, work / "build-ds")
        times: dict[int, list[float]] = {1: [], 2: []}
        size = 0
        for r in range(args.repeat):
            for procs in (1, 2):
                cache = work / f"build-cache-{procs}-{r}"
                dt, _, _ = run(medsyn("preprocess", "--workers", str(procs), *sets(ds, cache, "data.val_fraction=0",
                                                                                  "data.test_fraction=0")), env)
                times[procs].append(dt / n)
                size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
                shutil.rmtree(cache)
        print(f"\n[build] {n} subjects, seconds per subject incl. process start (min of {args.repeat}); load {load()}")
        for procs, ts in times.items():
            print(f"  {procs} process(es): {min(ts):.2f} s/subject   ({', '.join(f'{t:.2f}' for t in ts)})")
        print(f"  speed-up 2 vs 1: {min(times[1]) / min(times[2]):.2f}x;  disk per subject: {size / n / 1e6:.1f} MB")

    if "rss" not in args.skip:  # ------------------------------------------------------------ 2
        counts = sorted(args.counts)
        if args.quick:
            counts = counts[:2]
        cache = work / "rss-cache"
        dss = {n: make_dataset(real, n, work / f"rss-ds-{n}") for n in counts}
        builds = run_all([medsyn("preprocess", *sets(dss[n], cache)) for n in counts], env)  # caches ready first
        rows = []
        for r in range(args.repeat):
            for n in counts:  # left by an interrupted earlier call with the same --work
                shutil.rmtree(work / f"run-{n}-{r}", ignore_errors=True)
            runs = run_all([medsyn("train", str(CONFIG), *sets(dss[n], cache, "train.sample_every=0"), "--max-steps", "5",
                                   "--out", str(work / f"run-{n}-{r}"), "--device", "cpu") for n in counts], env)
            for n in counts:
                shutil.rmtree(work / f"run-{n}-{r}")
            rows.append(runs)
        rows = [(n, builds[i][0], [(row[i][1], row[i][0]) for row in rows]) for i, n in enumerate(counts)]  # (MB, s)
        for n, tb, runs in rows:
            print(f"  N={n}: cache build {tb:.0f} s (concurrently); train peak RSS {[r for r, _ in runs]} MB "
                  f"in {[round(t) for _, t in runs]} s", flush=True)
        base = min(r for r, _ in rows[0][2])
        print(f"\n[rss] medsyn train {CONFIG.name} base 32, 5 steps, cache ready, the counts run at the same time; load {load()}")
        for n, tb, runs in rows:
            rss = min(r for r, _ in runs)
            print(f"  {n:4d} subjects: peak RSS {rss:6d} MB  ratio to {rows[0][0]} subjects: {rss / base:.3f}")

    if "loader" not in args.skip:  # --------------------------------------------------------- 3
        n = max(2, min(args.counts))
        ds = work / f"rss-ds-{n}"
        if not ds.exists():
            make_dataset(real, n, ds)
        cache = work / "rss-cache"
        sys.path.insert(0, str(REPO / "src"))
        import torch

        torch.set_num_threads(1)
        res: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}
        for _ in range(args.repeat):
            for w in (0, 1, 2):
                res[w].append(patches_per_second(ds, cache, w, args.batches))
        print(f"\n[loader] 5×144×144 patches/s from the cache into the loop, batch 10 (max of {args.repeat}); load {load()}")
        for w, v in res.items():
            print(f"  {w} worker(s): {max(x for x, _ in v):7.0f} patches/s   ({', '.join(f'{x:.0f}' for x, _ in v)});"
                  f"  training process CPU {min(c for _, c in v):.2f} ms/patch")
        cpu0 = min(c for _, c in res[0])
        print(f"  0 workers: {cpu0:.2f} CPU ms per patch cut in the training process → {1e3 / cpu0:.0f} patches/s per "
              "free core (what each worker can deliver when it has a core to itself)")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
