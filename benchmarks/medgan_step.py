"""MedGAN training step: time, efficiency against the machine's own peak, memory churn and peak
memory — medsyn's step vs a straightforward one, glibc's default allocator vs medsyn's setting.

One step = one iteration of MedGAN's Algorithm 1: N_G = 3 generator updates on one training pair,
then one discriminator update. Paper size: CasNet of 6 U-blocks, 16×16 spectral-norm PatchGAN,
VGG-19 style/content losses (random weights here: speed does not depend on them), batch 1,
256×256. The training pair is real: a T1 → T2 axial slice of the bundled BraTS sample (or
``--data ROOT``) cut by MedGAN's own whole-slice sampler (``configs/medgan_t1_t2.yaml``).

    python benchmarks/medgan_step.py                  # CPU, paper size (≈ 6 GB RSS per version)
    python benchmarks/medgan_step.py --quick          # CPU, 64×64, depth 6, 16 filters: seconds
    python benchmarks/medgan_step.py --device cuda    # GPU; medsyn's step with bf16 autocast (AMP)
    python benchmarks/medgan_step.py --quick --versions medsyn --allocator default tuned  # churn before/after

Versions (same networks, same initial weights, same batch):

* ``medsyn``: :meth:`medsyn.methods.medgan.MedGAN.train_step` — D held fixed during the N_G
  generator updates (frozen weights, no power iteration), so the real pair's D features and the
  target's VGG features are computed once per step; one D forward on concat(real, fake); fused
  Adam; no host synchronisation (losses stay tensors); bf16 autocast on CUDA.
* ``plain``: what one writes first — every generator update recomputes D(x, y) and VGG(x) with D
  in training mode, two D forwards in the D update, Adam updating one parameter tensor at a time
  (``foreach=False``), no AMP, ``.item()`` after every optimiser step.

Allocator rows (``--allocator``): ``default`` runs with ``MEDSYN_MALLOC=default`` (glibc as it
comes: blocks over 32 MiB are mmap'd and unmapped on free, so each step re-faults them),
``tuned`` with medsyn's setting (``medsyn.allocator``, what ``medsyn train`` uses).

Each row runs in its own subprocess, so its peak memory (``ru_maxrss`` on CPU,
``torch.cuda.max_memory_allocated`` on GPU), page faults and allocator are its own. Per row:
seconds per step, FLOPs per step (``torch.utils.flop_counter``, counted on the warm-up step),
GFLOP/s and its share of the peak measured in the same process (CPU: float32 matmul and 3×3
conv; CUDA: bf16 tensor-core matmul → MFU), minor page faults per step, the kernel's share of CPU
time. This is a script, not a test: it never runs under pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("medsyn", "plain")
ALLOCATORS = ("default", "tuned")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--size", type=int, default=256, help="image side (256 in MedGAN)")
    p.add_argument("--depth", type=int, default=8, help="U-block levels (8 for 256×256)")
    p.add_argument("--base", type=int, default=64, help="filters of the first U-block layer (64)")
    p.add_argument("--blocks", type=int, default=6, help="U-blocks in the CasNet (6)")
    p.add_argument("--quick", action="store_true", help="64×64, depth 6, 16 filters")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-amp", action="store_true", help="on CUDA: medsyn's step without bf16 autocast")
    p.add_argument("--steps", type=int, default=3, help="timed steps per version")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (the allocator settles in 1–3)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the versions alternately this many times (a busy machine's load drifts)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--versions", nargs="+", choices=VERSIONS, default=list(VERSIONS))
    p.add_argument("--allocator", nargs="+", choices=ALLOCATORS, default=["tuned"],
                   help="rows per version: glibc's default malloc and/or medsyn's setting (default: tuned)")
    p.add_argument("--data", default="sample", help="data.root for the training pair: 'sample' or a dataset folder")
    p.add_argument("--worker", choices=VERSIONS, help=argparse.SUPPRESS)
    p.add_argument("--vgg", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.depth, args.base = 64, 6, 16
    return args


# ------------------------------------------------------------------------------------------------
# worker: one version in this process
# ------------------------------------------------------------------------------------------------


def _build(args):
    import torch

    from medsyn.methods import METHODS, Runtime

    spec = METHODS.get("medgan")
    params = spec.make_params({"n_blocks": args.blocks, "depth": args.depth, "base_channels": args.base,
                               "vgg19_weights": str(args.vgg)})
    torch.manual_seed(0)
    m = spec.build(params, in_channels=1, out_channels=1, patch_size=(args.size, args.size))
    dev = torch.device(args.device)
    m.to(dev)
    amp = dev.type == "cuda" and not args.no_amp and args.worker == "medsyn"
    m.runtime = Runtime(dev, torch.bfloat16 if amp else None)
    batch = {k: v.to(dev) for k, v in real_pair(args).items()}
    return m, batch, amp


def real_pair(args) -> dict:
    """One T1 → T2 training pair (batch 1, args.size²) from MedGAN's whole-slice sampler."""
    from medsyn.cli.bench import make_sampler
    from medsyn.config import load_config
    from medsyn.data.pipeline import prepare_training_data

    cfg = load_config(ROOT / "configs" / "medgan_t1_t2.yaml",
                      [f"data.root={getattr(args, 'data', 'sample')}", f"data.patch_size=[{args.size},{args.size}]"])
    sampler = make_sampler(cfg, prepare_training_data(cfg.data), seed=1)
    return sampler.batch(1)


def plain_step(m, batch, opt_g, opt_d) -> list[float]:
    """Algorithm 1 written plainly: no caching, D in training mode, two D forwards, .item() per step."""
    import torch
    import torch.nn.functional as F

    from medsyn.losses.perceptual import content_loss, perceptual_loss, style_loss

    G, D, vgg, cfg = m.networks["G"], m.networks["D"], m._load_vgg(), m.cfg
    y, x = batch["source"], batch["target"]
    log = []
    for _ in range(cfg.n_g):
        for p in D.parameters():
            p.requires_grad_(False)
        fake = G(y)
        logits, ff = D(fake, y, return_features=True)
        with torch.no_grad():
            _, fr = D(x, y, return_features=True)
            vx = vgg(x)
        vf = vgg(fake)
        c = x.shape[1]  # Eq. 6's layer 0 is the image: the last channels of D's input concat(y, ·)
        ff, fr = [ff[0][:, -c:], *ff[1:]], [fr[0][:, -c:], *fr[1:]]
        loss = (F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                + cfg.lambda_perceptual * perceptual_loss(ff, fr)
                + cfg.lambda_style * style_loss(vf, vx, cfg.style_weights)
                + cfg.lambda_content * content_loss(vf, vx, cfg.content_weights))
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        log.append(loss.item())
        for p in D.parameters():
            p.requires_grad_(True)
    fake = G(y).detach()
    d_real, d_fake = D(x, y), D(fake, y)
    loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    log.append(loss_d.item())
    return log


def worker(args) -> dict:
    from medsyn.allocator import keep_freed_memory

    applied = keep_freed_memory()  # honours MEDSYN_MALLOC=default (set by the driver for that row)
    import torch

    from medsyn.cli.bench import profile_steps

    if args.threads:
        torch.set_num_threads(args.threads)
    m, batch, amp = _build(args)
    dev = batch["source"].device
    m.train()
    if args.worker == "medsyn":
        def step():
            return m.train_step(lambda: batch, 1)
    else:
        cfg = m.cfg
        opt_g = torch.optim.Adam(m.networks["G"].parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), foreach=False)
        opt_d = torch.optim.Adam(m.networks["D"].parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), foreach=False)

        def step():
            return plain_step(m, batch, opt_g, opt_d)

    r = profile_steps(step, dev, steps=args.steps, warmup=max(1, args.warmup))  # the warm-up step (loads the VGG) is FLOP-counted
    first = r.pop("first")
    res = {"version": args.worker, "allocator": "tuned" if applied else "default", "amp": amp,
           "first_g_loss": float(first["g/total"]) if isinstance(first, dict) else first[0], **r,
           "peak_rss_mb": r["peak_rss_gb"] * 1024, "g_params_m": sum(p.numel() for p in m.networks["G"].parameters()) / 1e6,
           "threads": torch.get_num_threads()}
    if "cuda_peak_gb" in r:
        res["cuda_peak_mb"] = r["cuda_peak_gb"] * 1024
    return res


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        import torch
        from safetensors.torch import save_file

        from medsyn.cli.bench import EFFICIENCY_HEADER, efficiency_cells, run_worker
        from medsyn.models.vgg import VGG19

        vgg = Path(tmp) / "vgg19_random.safetensors"
        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in VGG19().state_dict().items()}, str(vgg))
        results: dict[tuple[str, str], dict] = {}
        for rnd in range(args.rounds):
            for v in args.versions:
                for alloc in args.allocator:
                    cmd = [sys.executable, __file__, "--worker", v, "--vgg", str(vgg), "--size", str(args.size),
                           "--depth", str(args.depth), "--base", str(args.base), "--blocks", str(args.blocks),
                           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
                           "--data", args.data]
                    if args.no_amp:
                        cmd.append("--no-amp")
                    if args.threads:
                        cmd += ["--threads", str(args.threads)]
                    print(f"running {v} / allocator {alloc} (round {rnd + 1} of {args.rounds}) …", flush=True)
                    r = run_worker(cmd, allocator=alloc)
                    if r is None:
                        return 1
                    old = results.get((v, alloc))
                    if old is not None:  # pool the rounds: all step times, the largest peak memory and faults
                        r["seconds"] = old["seconds"] + r["seconds"]
                        for k in ("peak_rss_mb", "cuda_peak_mb", "peak_rss_gb", "cuda_peak_gb", "faults_per_step", "kernel_share"):
                            if k in r:
                                r[k] = max(r[k], old[k])
                    results[(v, alloc)] = r
    any_r = next(iter(results.values()))
    cuda = args.device.startswith("cuda")
    pk = any_r["peak"]
    print()
    print(f"MedGAN training step (Alg. 1: 3 G updates + 1 D update): CasNet of {args.blocks} U-blocks "
          f"({any_r['g_params_m']:.1f} M parameters, depth {args.depth}, {args.base} filters), 16×16 PatchGAN + SN, "
          f"VGG-19 style/content, batch 1, {args.size}×{args.size} real T1 → T2 slice ({args.data})")
    where = any_r.get("gpu") or f"CPU, {any_r['threads']} thread(s), load average {os.getloadavg()[0]:.1f}"
    print(f"device: {args.device} ({where}); median of {args.steps} steps × {args.rounds} round(s), "
          f"each after {args.warmup} warm-up step(s); peak measured in each row's process: {pk['dtype']} {pk['matmul']} and {pk['conv']}")
    mem_key = "cuda_peak_mb" if cuda else "peak_rss_mb"
    head = EFFICIENCY_HEADER.format(ref="matmul" if cuda else "conv", mem="GPU peak" if cuda else "peak RSS")
    print()
    print(f"| version | allocator | AMP | {head} | G loss, 1st step |")
    print("|---|---|---|" + "---|" * (head.count("|") + 2))
    for (v, alloc), r in results.items():
        print(f"| {v} | {alloc} | {'bf16' if r['amp'] else 'no'} | {efficiency_cells(r, cuda=cuda)} | "
              f"{r['first_g_loss']:.4f} |")
    t = {k: statistics.median(r["seconds"]) for k, r in results.items()}
    print()
    for alloc in args.allocator:
        if ("medsyn", alloc) in t and ("plain", alloc) in t:
            mem = {v: results[(v, alloc)][mem_key] for v in ("medsyn", "plain")}
            print(f"allocator {alloc}: plain / medsyn {t[('plain', alloc)] / t[('medsyn', alloc)]:.2f}× time, "
                  f"{mem['plain'] / mem['medsyn']:.2f}× peak memory")
    for v in args.versions:
        if (v, "default") in t and (v, "tuned") in t:
            print(f"{v}: allocator default / tuned {t[(v, 'default')] / t[(v, 'tuned')]:.2f}× time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
