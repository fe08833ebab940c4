"""Time to quality: medsyn's Nie et al. variants against a plain PyTorch loop, same wall-clock budget.

For each medsyn config (default: the UNet baseline and the full method, each in its paper and its
small-data configuration, and the FCN and sGAN baselines in their small-data configurations) two processes are started *together*, one thread each, and train for the
same wall-clock budget on one real case:

* ``medsyn``: ``python -m medsyn train CONFIG`` — the real CLI, engine, sampler and method;
* ``plain``: a straightforward PyTorch loop written below (a 2.5D UNet of the same width and
  depth, z-score inside the brain, L1 inside the brain mask, Adam 1e-3 with cosine decay over the
  budget, batch 8, left-right flips, patch centres in the brain), no medsyn engine. With
  ``--plain-like-generator`` the loop's network follows the FCN baseline (no skip connections)
  for ``nie-fcn``, so that row compares training, not architectures.

Both then predict the held-out case (medsyn through its own sliding-window inference with the
run's normalisation, the plain loop on whole slices) and are scored with medsyn's own metrics:
PSNR with an explicit ``data_range`` and mask, in the brain (the foreground mask) and in the
tumour (``seg > 0``). MR has no absolute unit and the two cases come from different scanners, so
prediction and reference are both z-scored inside the brain mask before scoring (each with its
own mean/std; ``data_range`` = the reference's max − min in the brain). Steps done are printed for
each.

Default data: the bundled sample (the two BraTS 2023 cases at 2 mm): train on
BraTS-MET-00110-000 (no seg), test on BraTS-GLI-00000-000 (has seg). ``--data
/work/shared/data/brats2023`` uses the same cases at 1 mm.

    python benchmarks/time_to_quality.py --minutes 12
    python benchmarks/time_to_quality.py --minutes 3 --configs configs/nie2018_unet_small.yaml
    python benchmarks/time_to_quality.py --minutes 3 --configs configs/nie2018_unet.yaml --set params.base_filters=32

Not a test: numbers depend on the machine and its load (printed with ``uptime``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SUBJECT = "BraTS-MET-00110-000"
TEST_SUBJECT = "BraTS-GLI-00000-000"
DEFAULT_CONFIGS = ["configs/nie2018_unet_small.yaml", "configs/nie2018_unet.yaml",
                   "configs/nie2018_brats_t1_t2_small.yaml", "configs/nie2018_brats_t1_t2.yaml",
                   "configs/nie2018_fcn_small.yaml", "configs/nie2018_sgan_small.yaml"]


# ------------------------------------------------------------------------------------------------
# data shared by both sides (loading only; each side normalises in its own way)
def load(root: str, subject: str, source: list[str], target: str):
    from medsyn.data.cases import load_case
    from medsyn.data.dataset import discover

    ds = discover(root)
    return load_case(ds.subjects[subject], source, target, mask=None, label="seg", resample=False)


def zscore_in(x, mask):
    import numpy as np

    v = x[mask].astype(np.float64)
    return ((x - v.mean()) / (v.std() or 1.0)).astype(np.float32)


def score(pred, case) -> dict[str, float]:
    """Brain and tumour PSNR (medsyn.metrics.psnr, explicit data_range and mask) after z-scoring
    prediction and reference inside the brain mask."""
    from medsyn.metrics import data_range_of, psnr

    ref = zscore_in(case.target.array.astype("float32"), case.mask)
    p = zscore_in(pred.astype("float32"), case.mask)
    dr = data_range_of(ref, case.mask)
    out = {"psnr_brain": psnr(p, ref, data_range=dr, mask=case.mask)}
    if case.label is not None and (case.label > 0).any():
        out["psnr_tumour"] = psnr(p, ref, data_range=dr, mask=case.label > 0)
    return out


# ------------------------------------------------------------------------------------------------
# the plain loop (no medsyn engine, sampler, method or network)
def plain_unet(in_ch: int, base: int, depth: int, skip: bool = True):
    import torch
    from torch import nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            w = [base * 2**i for i in range(depth + 1)]
            self.down = nn.ModuleList([block(in_ch if i == 0 else w[i - 1], w[i]) for i in range(depth)])
            self.mid = block(w[depth - 1], w[depth])
            self.up = nn.ModuleList([nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in reversed(range(depth))])
            self.dec = nn.ModuleList([block((2 if skip else 1) * w[i], w[i]) for i in reversed(range(depth))])
            self.out = nn.Conv2d(w[0], 1, 1)

        def forward(self, x):
            skips = []
            for d in self.down:
                x = d(x)
                skips.append(x)
                x = torch.max_pool2d(x, 2)
            x = self.mid(x)
            for u, d, s in zip(self.up, self.dec, reversed(skips)):
                x = d(torch.cat([u(x), s], 1) if skip else u(x))
            return self.out(x)

    return Net()


def plain_worker(a: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(a.plain_seed)
    rng = np.random.default_rng(a.plain_seed)
    k, (ph, pw), bs = a.context, a.patch, 8
    case = load(a.data, TRAIN_SUBJECT, ["t1n"], "t2w")
    src = zscore_in(case.sources["t1n"].array.astype(np.float32), case.mask)
    tgt = zscore_in(case.target.array.astype(np.float32), case.mask)
    src[~case.mask], tgt[~case.mask] = src[case.mask].min(), tgt[case.mask].min()
    r = k // 2
    pad = ((ph // 2 + 1,) * 2, (pw // 2 + 1,) * 2, (r, r))
    src_p = np.pad(src, pad, mode="edge")
    tgt_p, m_p = np.pad(tgt, pad, mode="edge"), np.pad(case.mask, pad)
    fg = np.argwhere(case.mask)
    net = plain_unet(k, a.base, a.depth, skip=not a.no_skip)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    budget = a.minutes * 60

    def progress() -> float:  # share of the budget spent: wall clock, or steps with --steps
        return steps / a.steps if a.steps else (time.monotonic() - t0) / budget

    t0, steps = time.monotonic(), 0
    while progress() < 1.0:
        xs, ys, ms = [], [], []
        for c in fg[rng.integers(len(fg), size=bs)]:
            i, j, s = c[0] + pad[0][0] - ph // 2, c[1] + pad[1][0] - pw // 2, c[2] + r
            x = src_p[i:i + ph, j:j + pw, s - r:s + r + 1].transpose(2, 0, 1)
            y, m = tgt_p[i:i + ph, j:j + pw, s][None], m_p[i:i + ph, j:j + pw, s][None]
            if rng.random() < 0.5:
                x, y, m = x[:, ::-1], y[:, ::-1], m[:, ::-1]
            xs.append(x), ys.append(y), ms.append(m)
        x, y, m = (torch.from_numpy(np.ascontiguousarray(np.stack(v))) for v in (xs, ys, ms))
        for g in opt.param_groups:  # cosine decay over the budget (wall clock, or steps with --steps)
            g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress())))
        loss = (net(x) - y).abs()[m].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    train_s = time.monotonic() - t0
    # predict the held-out case on whole axial slices (padded to a multiple of 2**depth)
    test = load(a.data, TEST_SUBJECT, ["t1n"], "t2w")
    ts = zscore_in(test.sources["t1n"].array.astype(np.float32), test.mask)
    ts[~test.mask] = ts[test.mask].min()
    mult = 2**a.depth
    X, Y, Z = ts.shape
    px, py = -X % mult, -Y % mult
    vol = np.pad(ts, ((0, px), (0, py), (r, r)), mode="edge")
    net.eval()
    pred = np.zeros(ts.shape, np.float32)
    with torch.no_grad():
        for z0 in range(0, Z, 16):
            zs = range(z0, min(Z, z0 + 16))
            xb = torch.from_numpy(np.stack([vol[:, :, z:z + k].transpose(2, 0, 1) for z in zs]))
            pred[:, :, z0:z0 + len(zs)] = net(xb)[:, 0, :X, :Y].numpy().transpose(1, 2, 0)
    pred[~test.mask] = 0.0
    res = {"steps": steps, "train_s": round(train_s, 1), **score(pred, test)}
    Path(a.result).write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------------
# medsyn side: the real CLI for training, medsyn's inference for the prediction
def medsyn_predict(run_dir: Path, data: str) -> dict[str, float]:
    from medsyn.data.pipeline import normalize_case
    from medsyn.inference.predict import load_run, predict_case_arrays

    run = load_run(run_dir, "last", "cpu")
    test = load(data, TEST_SUBJECT, list(run.cfg.data.source), run.cfg.data.target)
    nc = normalize_case(test, run.norm, run.cfg.data.source)
    pred_n, _ = predict_case_arrays(run.method, nc.source, run.cfg, run.device, context=run.context)
    pred = run.norm.target_normalizer().inverse(pred_n)
    pred[~test.mask] = run.norm.target_background
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    steps = json.loads((run_dir / "best.json").read_text()).get("step") if (run_dir / "best.json").is_file() else None
    last = [m for m in metrics if "g/total" in m]
    return {"steps": steps, **score(pred, test), "last_log": {k: round(v, 4) for k, v in (last[-1] if last else {}).items()
                                                              if k.startswith("g/")}}


def start_pair(config: str, a: argparse.Namespace, out: Path) -> dict:
    """Start medsyn's CLI training and the plain loop together (one thread each); returns the handles."""
    from medsyn.config import load_config, method_params

    cfg = load_config(ROOT / config if not Path(config).is_absolute() else config, a.set)
    p = method_params(cfg)  # the plain loop gets the same generator width and depth
    # the FCN baseline (no skip connections): a plain loop of the same architecture with --plain-like-generator
    no_skip = a.plain_like_generator and getattr(p, "generator", "unet") == "fcn"
    name = Path(config).stem
    out.mkdir(parents=True, exist_ok=True)
    run_dir, result = out / f"{name}-medsyn", out / f"{name}-plain.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    sets = [f"data.root={a.data}", f"data.train=[{TRAIN_SUBJECT}]", "data.val=[]", f"data.test=[{TEST_SUBJECT}]",
            "train.device=cpu", *a.set]
    if a.steps:  # equal steps instead of equal wall time (diagnosis: learning per step, free of the load)
        sets.append(f"train.max_steps={a.steps}")
    budget = [] if a.steps else ["--minutes", str(a.minutes)]
    med_cmd = [sys.executable, "-m", "medsyn", "train", str(ROOT / config), "--out", str(run_dir), *budget] + [
        x for s in sets for x in ("--set", s)]
    plain_cmd = [sys.executable, __file__, "--plain-worker", "--data", a.data, "--minutes", str(a.minutes),
                 "--steps", str(a.steps), "--plain-seed", str(a.plain_seed),
                 "--result", str(result), "--context", str(cfg.data.context_slices),
                 "--patch", *map(str, cfg.data.patch_size), "--base", str(p.base_filters), "--depth", str(p.depth),
                 *(["--no-skip"] if no_skip else [])]
    logs = [open(out / f"{name}-medsyn.log", "w"), open(out / f"{name}-plain.log", "w")]
    procs = [subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
             for cmd, log in zip((med_cmd, plain_cmd), logs)]
    return {"config": config, "method": cfg.method, "base": p.base_filters, "patch": cfg.data.patch_size,
            "plain_net": "FCN (no skips)" if no_skip else "UNet",
            "lr_schedule": cfg.train.lr_schedule, "flip": cfg.data.flip, "run_dir": run_dir, "result": result, "procs": procs, "logs": logs}


def finish_pair(job: dict, a: argparse.Namespace) -> dict:
    """Wait for both sides, then predict the held-out case with the medsyn run and score both."""
    rcs = [q.wait() for q in job["procs"]]
    for log in job["logs"]:
        log.close()
    for side, rc, log in zip(("medsyn train", "plain loop"), rcs, job["logs"]):
        if rc != 0:
            raise SystemExit(f"{side} failed (rc {rc}); see {log.name}")
    return {k: job[k] for k in ("config", "method", "base", "patch", "lr_schedule", "flip", "plain_net")} | {
        "medsyn": medsyn_predict(job["run_dir"], a.data), "plain": json.loads(job["result"].read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=12.0, help="wall-clock training budget of each side")
    ap.add_argument("--steps", type=int, default=0,
                    help="train both sides for this many steps instead of --minutes (cosine over the steps): "
                         "compares learning per step, independent of the machine's load; not the equal-time goal")
    ap.add_argument("--plain-seed", type=int, default=0, help="seed of the plain loop (weights and patches)")
    ap.add_argument("--data", default="sample", help="'sample' (bundled, 2 mm) or a folder holding the two BraTS cases")
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--set", action="append", default=[], help="extra --set for medsyn (and the plain loop's width)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/medsyn-ttq"))
    ap.add_argument("--parallel", action="store_true",
                    help="start every pair at once (all sides share the machine for the same wall time)")
    ap.add_argument("--plain-like-generator", action="store_true",
                    help="for nie-fcn, give the plain loop the same network without skip connections "
                         "(default: the plain loop is always a UNet)")
    ap.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-skip", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--context", type=int, default=5, help=argparse.SUPPRESS)
    ap.add_argument("--patch", type=int, nargs=2, default=[144, 144], help=argparse.SUPPRESS)
    ap.add_argument("--base", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, default=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.steps < 0 or a.minutes <= 0:
        ap.error(f"--steps must be >= 0 (got {a.steps}) and --minutes > 0 (got {a.minutes:g})")
    sys.path.insert(0, str(ROOT / "src"))
    if a.plain_worker:
        return plain_worker(a)
    import torch

    torch.set_num_threads(1)
    budget = f"{a.steps} steps" if a.steps else f"{a.minutes:g} min"
    print(f"time to quality: {budget} per side, plain loop seed {a.plain_seed}, data {a.data}, train {TRAIN_SUBJECT} → test {TEST_SUBJECT}")
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    out = a.out / time.strftime("%Y%m%d-%H%M%S")
    rows = []
    if a.parallel:  # every pair at once: 2 × len(configs) processes of one thread, same start and budget
        jobs = [start_pair(c, a, out) for c in a.configs]
        results = [finish_pair(j, a) for j in jobs]
    else:
        results = (finish_pair(start_pair(c, a, out), a) for c in a.configs)
    for r in results:
        rows.append(r)
        m, p = r["medsyn"], r["plain"]
        print(f"{r['config']} ({r['method']}, base {r['base']}, patch {r['patch']}, lr schedule {r['lr_schedule']}, "
              f"flip {r['flip']}; plain loop: {r['plain_net']}) {' '.join(a.set)}")
        for side, v in (("medsyn", m), ("plain", p)):
            print(f"  {side:7s} steps {v['steps']!s:>6}  brain PSNR {v['psnr_brain']:6.2f} dB  "
                  f"tumour PSNR {v.get('psnr_tumour', float('nan')):6.2f} dB")
        print(f"  medsyn − plain: brain {m['psnr_brain'] - p['psnr_brain']:+.2f} dB, "
              f"tumour {m.get('psnr_tumour', float('nan')) - p.get('psnr_tumour', float('nan')):+.2f} dB; "
              f"medsyn last losses {m['last_log']}")
        print("  load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"runs, logs and results.json: {out}")


if __name__ == "__main__":
    main()
