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
   loader workers (goal: ≥ 2,000 with 2 workers), beside a plain DataLoader over the same sampler
   (fresh batch tensors per batch), with the CPU ms per patch of the training process and of each
   worker — on a shared machine the stable figures — and what 2 workers on free cores deliver.

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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc, Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _PlainStream:
    """The DataLoader use medsyn had before (and most training code has): each worker yields
    fresh batch tensors, which the DataLoader moves into new shared memory per batch; the
    training process maps them and unmaps them when the batch is freed."""

    def __init__(self, sampler, n: int):
        import torch

        class Stream(torch.utils.data.IterableDataset):
            def __iter__(self_):
                info = torch.utils.data.get_worker_info()
                k = info.id
                while True:
                    yield sampler.batch_at(k * n, n)
                    k += info.num_workers

        self.stream = Stream()

    def start(self, workers: int):
        import torch

        self.loader = torch.utils.data.DataLoader(self.stream, batch_size=None, num_workers=workers, prefetch_factor=2,
                                                  multiprocessing_context="fork")
        self._it = iter(self.loader)
        return self

    def __call__(self):
        return next(self._it)  # already the trainer's own (fresh shared memory)

    def close(self):
        self._it._shutdown_workers()


def patches_per_second(root: Path, cache: Path, workers: int, batches: int,
                       handover: str = "medsyn") -> dict[str, float]:
    """Batches of 10 × (5, 144, 144) from the cache into the loop: the engine's BatchFeed
    (``handover`` "medsyn"), or a plain DataLoader over the same sampler ("plain"). Returns patches
    per second of wall time, CPU milliseconds per patch of this (the training) process, and of
    each loader worker (mean over workers, per patch that worker produced)."""
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
    n = cfg.train.batch_size
    if handover == "plain" and workers:
        feed = _PlainStream(sampler, n).start(workers)
    else:
        feed = BatchFeed(sampler, n, torch.device("cpu"), num_workers=workers)
    for _ in range(3 + 4 * workers):  # start the workers, fill the prefetch queue, first use of every slot
        feed()
    it = feed._it if workers else None
    pids = [p.pid for p in it._workers] if it is not None else []
    w0 = [_cpu_seconds(p) for p in pids]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        b = feed()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    w1 = [_cpu_seconds(p) for p in pids]
    feed.close()
    assert tuple(b["source"].shape) == (n, d.context_slices, *d.patch_size)
    total = batches * n
    per_worker = [1e3 * (b_ - a_) / (total / len(pids)) for a_, b_ in zip(w0, w1)]
    return {"rate": total / dt, "main_ms": 1e3 * cpu / total,
            "worker_ms": sum(per_worker) / len(per_worker) if per_worker else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["full", "sample"], default="full")
    ap.add_argument("--counts", type=int, nargs="+", default=[2, 50, 200])
    ap.add_argument("--build-subjects", type=int, default=6, help="subjects timed per build measurement")
    ap.add_argument("--batches", type=int, default=150, help="batches timed per patches/s measurement")
    ap.add_argument("--handover", nargs="*", default=["plain"], choices=["plain"],
                    help="loader rows besides medsyn's BatchFeed: 'plain' = a plain DataLoader "
                         "(fresh tensors per batch)")
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

        from medsyn.allocator import keep_freed_memory

        keep_freed_memory()  # as in `medsyn train` (the Trainer sets it; forked workers inherit it)
        torch.set_num_threads(1)
        rows = [("medsyn", w) for w in (0, 1, 2)] + [("plain", w) for w in (1, 2) if "plain" in args.handover]
        res: dict[tuple[str, int], list[dict[str, float]]] = {r: [] for r in rows}
        for _ in range(args.repeat):  # interleaved: every row sees the same load
            for h, w in rows:
                res[h, w].append(patches_per_second(ds, cache, w, args.batches, h))
        print(f"\n[loader] 5×144×144 patches/s from the cache into the loop, batch 10, {args.batches} batches "
              f"(max of {args.repeat}); load {load()}")
        print("  hand-over                 workers  patches/s (runs)              CPU ms/patch: trainer  each worker")
        for (h, w), v in res.items():
            name = "BatchFeed (reused slots)" if h == "medsyn" else "plain DataLoader"
            runs = ", ".join(f"{x['rate']:.0f}" for x in v)
            wk = f"{min(x['worker_ms'] for x in v):11.2f}" if w else " " * 11
            print(f"  {name:25s} {w:7d}  {max(x['rate'] for x in v):7.0f} ({runs:20s})  "
                  f"{min(x['main_ms'] for x in v):20.2f}  {wk}")
        cut = min(x["main_ms"] for x in res["medsyn", 0])
        for h in ("medsyn", "plain"):
            if (h, 2) not in res:
                continue
            main_ms = min(x["main_ms"] for x in res[h, 2])
            worker_ms = min(x["worker_ms"] for x in res[h, 2])
            cap = min(2 / worker_ms, 1 / main_ms) * 1e3
            print(f"  {h}: with 2 workers on cores of their own (and one for the trainer): min(2 / {worker_ms:.2f}, "
                  f"1 / {main_ms:.2f}) ms → {cap:.0f} patches/s")
        print(f"  cutting alone (0 workers): {cut:.2f} ms/patch → {1e3 / cut:.0f} patches/s per core")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
