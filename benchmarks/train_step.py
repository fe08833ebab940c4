"""Training step of Nie et al.'s dual-D + attention: time, efficiency against the machine's own
peak, and memory churn — medsyn's step vs a straightforward one, and glibc's default allocator
vs medsyn's setting (allocator.py), side by side in one run.

    python benchmarks/train_step.py                          # paper size: UNet base 64, batch 10, 144²
    python benchmarks/train_step.py --threads 1 --base 32    # the issue's CPU-sized run, one thread
    python benchmarks/train_step.py --device cuda --amp      # GPU: bf16 autocast, MFU
    python benchmarks/train_step.py --allocator tuned --versions medsyn   # one row

Every row runs in its own process (its peak RSS, page faults and allocator setting are its own)
on the same real mini-batches: 2.5D patches of the bundled BraTS sample (or ``--data ROOT``) cut
by the engine's own sampler for ``configs/nie2018_brats_t1_t2.yaml``; same networks and initial
weights (2.5D UNet G, WGAN-GP critic D1, dense-FCN D2) and the same algorithm (D1 and D2 on one
mini-batch, then G on another — Sec. 2.3).

Rows:

* ``medsyn``: :meth:`medsyn.methods.nie2018.NieDualGAN.train_step` — G under no_grad for the D
  step, D frozen during G's step, D2's logits reused, losses kept on the device, bf16 autocast on
  CUDA with ``--amp``.
* ``straightforward``: what one writes first — G's graph kept and detached for the D step, D2 run
  twice in G's step, D's weights accumulating gradients during G's step, ``.item()`` per loss.
* allocator ``default`` (``MEDSYN_MALLOC=default``: glibc as it comes, large blocks mmap'd and
  unmapped on free) vs ``tuned`` (what ``medsyn train`` runs with).

Per row: seconds per step (median of ``--steps`` after ``--warmup``), FLOPs per step
(``torch.utils.flop_counter``, counted on the first warm-up step), achieved GFLOP/s and its share
of the peak measured in the same process right after the steps (CPU: float32 2048² matmul and a
large 3×3 convolution; CUDA: bf16 tensor-core matmul → MFU), minor page faults per step, the
kernel's share of CPU time, and peak memory. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "nie2018_brats_t1_t2.yaml"
VERSIONS = ("medsyn", "straightforward")
ALLOCATORS = ("default", "tuned")


def straightforward_step(m, batches, i: int, log: list) -> int:
    """One step written plainly on ``batches`` (a list of ``(x, y)``); returns the next batch index."""
    import torch
    import torch.nn.functional as F

    from medsyn.losses.adversarial import gradient_penalty

    cfg = m.cfg
    G, D1, D2 = m.networks["G"], m.networks["D1"], m.networks["D2"]
    o = m.optimizers
    x, y = batches[i % len(batches)]
    fake = G(x)  # graph kept, then detached
    o["D1"].zero_grad()
    l1 = D1(fake.detach()).mean() - D1(y).mean() + gradient_penalty(D1, y, fake.detach(), lambda_gp=cfg.lambda_gp)
    l1.backward()
    o["D1"].step()
    o["D2"].zero_grad()
    lr_, lf_ = D2(y, return_logits=True), D2(fake.detach(), return_logits=True)
    l2 = F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_)) + F.binary_cross_entropy_with_logits(lf_, torch.zeros_like(lf_))
    l2.backward()
    o["D2"].step()
    x, y = batches[(i + 1) % len(batches)]
    fake = G(x)
    o["G"].zero_grad()
    M = torch.sigmoid(D2(fake, return_logits=True)).detach()
    att = ((1 - M) ** cfg.beta * (fake - y).abs()).mean()
    adv1 = -D1(fake).mean()
    la = D2(fake, return_logits=True)
    adv2 = F.binary_cross_entropy_with_logits(la, torch.ones_like(la))
    lg = att + cfg.lambda1 * adv1 + cfg.lambda2 * adv2
    lg.backward()
    o["G"].step()
    log.append([l1.item(), l2.item(), att.item(), adv1.item(), adv2.item(), lg.item()])
    return i + 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for medsyn's step (CUDA only)")
    p.add_argument("--base", type=int, default=64, help="UNet base filters (paper: 64)")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--patch", type=int, default=144)
    p.add_argument("--steps", type=int, default=3, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the allocator settles in 1–2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--data", default="sample", help="data.root: 'sample' (bundled BraTS cases) or a dataset folder")
    p.add_argument("--versions", nargs="+", choices=VERSIONS, default=list(VERSIONS))
    p.add_argument("--allocator", nargs="+", choices=ALLOCATORS, default=list(ALLOCATORS),
                   help="rows per version: glibc's default malloc and/or medsyn's setting")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", nargs=2, metavar=("VERSION", "ALLOCATOR"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def real_batches(args, device, n: int = 4):
    """``n`` mini-batches of real 2.5D patches, cut by the engine's sampler for the paper config."""
    from medsyn.cli.bench import make_sampler
    from medsyn.config import load_config
    from medsyn.data.pipeline import prepare_training_data

    cfg = load_config(CONFIG, [f"data.root={args.data}", f"data.patch_size=[{args.patch},{args.patch}]",
                               f"train.batch_size={args.batch}"])
    data = prepare_training_data(cfg.data)
    sampler = make_sampler(cfg, data, seed=0)
    return [{k: v.to(device) for k, v in sampler.batch(args.batch).items()} for _ in range(n)]


def worker(args) -> dict:
    """One row in this process."""
    from medsyn.allocator import keep_freed_memory

    applied = keep_freed_memory()  # honours MEDSYN_MALLOC=default (set by the driver for that row)
    import torch

    from medsyn.cli.bench import profile_steps
    from medsyn.methods.base import Runtime
    from medsyn.methods.nie2018 import NieConfig, NieDualGAN

    version = args.worker[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = real_batches(args, device)
    pairs = [(b["source"], b["target"]) for b in batches]
    torch.manual_seed(0)
    m = NieDualGAN(NieConfig(base_filters=args.base), in_channels=pairs[0][0].shape[1],
                   patch_size=(args.patch, args.patch)).to(device)
    m.train()
    amp = version == "medsyn" and args.amp and device.type == "cuda"
    if amp:
        m.runtime = Runtime(device, torch.bfloat16)
    state = {"i": 0, "step": 0}
    log: list = []

    def next_batch():
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        return b

    def step() -> None:
        if version == "medsyn":
            state["step"] += 1
            log.append(m.train_step(next_batch, state["step"]))
        else:
            state["i"] = straightforward_step(m, pairs, state["i"], log)

    res = profile_steps(step, device, steps=args.steps, warmup=args.warmup)
    res.pop("first")
    res.update({"version": version, "allocator": "tuned" if applied else "default", "amp": amp,
                "threads": torch.get_num_threads(),
                "params_m": {k: sum(p.numel() for p in n.parameters()) / 1e6 for k, n in m.networks.items()}})
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0
    from medsyn.cli.bench import run_worker

    rows = []
    for version in args.versions:
        for alloc in args.allocator:
            cmd = [sys.executable, __file__, "--worker", version, alloc, "--device", args.device, "--base", str(args.base),
                   "--batch", str(args.batch), "--patch", str(args.patch), "--steps", str(args.steps),
                   "--warmup", str(max(1, args.warmup)), "--data", args.data]
            if args.amp:
                cmd.append("--amp")
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            print(f"running {version} / allocator {alloc} …", flush=True)
            row = run_worker(cmd, allocator=alloc)
            if row is None:
                return 1
            rows.append(row)
    report(args, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "load_1min": os.getloadavg()[0]}, f, indent=1)
    return 0


def report(args, rows: list[dict]) -> None:
    from medsyn.cli.bench import EFFICIENCY_HEADER, efficiency_cells

    r0 = rows[0]
    cuda = args.device.startswith("cuda")
    where = r0.get("gpu") or f"CPU, {r0['threads']} thread(s)"
    pk = r0["peak"]
    print()
    print(f"Nie et al. dual-D + attention, one training step (D1 + D2 on one mini-batch, G on another): "
          f"batch {args.batch} × 5×{args.patch}² real BraTS patches ({args.data}), UNet base {args.base}; parameters "
          + ", ".join(f"{k} {v:.1f} M" for k, v in r0["params_m"].items()))
    print(f"device: {args.device} ({where}); 1-min load average {os.getloadavg()[0]:.1f}; median of {args.steps} "
          f"steps after {args.warmup} warm-up; peak measured in each row's process: {pk['dtype']} {pk['matmul']} "
          f"and {pk['conv']}")
    head = EFFICIENCY_HEADER.format(ref="matmul" if cuda else "conv", mem="GPU peak" if cuda else "peak RSS")
    print()
    print(f"| version | allocator | AMP | {head} |")
    print("|---|---|---|" + "---|" * (head.count("|") + 1))
    for r in rows:
        print(f"| {r['version']} | {r['allocator']} | {'bf16' if r['amp'] else 'no'} | {efficiency_cells(r, cuda=cuda)} |")
    by = {(r["version"], r["allocator"]): statistics.median(r["seconds"]) for r in rows}
    print()
    if ("medsyn", "default") in by and ("medsyn", "tuned") in by:
        print(f"medsyn, allocator default / tuned: {by[('medsyn', 'default')] / by[('medsyn', 'tuned')]:.2f}× time")
    for a in ALLOCATORS:
        if ("medsyn", a) in by and ("straightforward", a) in by:
            print(f"allocator {a}: straightforward / medsyn {by[('straightforward', a)] / by[('medsyn', a)]:.2f}× time")
    if not cuda:
        mm = ", ".join(f"{r['peak']['matmul_gflops']:.1f}" for r in rows)
        print(f"(float32 matmul peak in the same processes, row by row: {mm} GFLOP/s)")


if __name__ == "__main__":
    sys.exit(main())
