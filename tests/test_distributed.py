"""Distributed training (torchrun → DDP, gloo on CPU), sharded sampling, loader workers, compile.

The two integration tests start ``python -m torch.distributed.run --nproc_per_node=2 -m medsyn
train ...`` on a free loopback port:

* 2 processes × batch 2 equal 1 process × batch 4 (same global batch; the generator has no
  normalisation layer — per-rank BatchNorm statistics would differ, see docs/scaling.md), and
  the ranks' parameters are identical (fingerprints recorded in every checkpoint's manifest);
* the full Nie et al. step (two discriminators, WGAN-GP double backward, spectral norm, three
  optimisers) runs under DDP with loader workers, and SIGTERM to torchrun (pre-emption) stops
  both ranks at the same step with a checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import phantom, write_nii
from medsyn.cli.main import main
from medsyn.data.sampling import NormalizedCase, PatchSampler25D
from medsyn.errors import DatasetError
from medsyn.training import checkpoint as ckpt
from medsyn.training.distributed import SINGLE, DistContext, init_from_env
from medsyn.training.engine import BatchFeed


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for s, (a, b) in {"s1": (1, 2), "s2": (3, 4)}.items():
        write_nii(root / s / "t1n.nii.gz", phantom((20, 18, 8), seed=a))
        write_nii(root / s / "t2w.nii.gz", phantom((20, 18, 8), seed=b))
    return root


def tiny(data: Path, *extra: str) -> list[str]:
    sets = [f"data.root={data}", "data.train=[s1,s2]", "data.val=[]", "data.test=[]", "data.label=null",
            "data.context_slices=3", "params.base_filters=4", "params.depth=2", "train.device=cpu",
            "train.log_every=1", "train.sample_every=0", *extra]
    return [x for s in sets for x in ("--set", s)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list, log: Path, nproc: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "medsyn", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only: no dependence on the host name resolving
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            cwd=str(Path(__file__).parents[1]))


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# two gloo processes
# ------------------------------------------------------------------------------------------------


def test_two_processes_equal_one_process_with_the_same_global_batch(data, tmp_path):
    cfg = tiny(data, "method=nie-unet", "params.g_norm=none", "data.patch_size=[32,32]",
               "data.patches_per_subject=4",  # epoch = 4·2/4 = 2 steps: the lr schedule steps in the run
               "params.lr_decay_every=1", "train.checkpoint_every=3")
    one, two = tmp_path / "one", tmp_path / "two"
    p = torchrun(["train", *cfg, "--set", "train.batch_size=2", "--max-steps", "6", "--out", two], tmp_path / "log.txt")
    assert main(["train", *cfg, "--set", "train.batch_size=4", "--max-steps", "6", "--out", str(one)]) == 0
    assert p.wait(timeout=300) == 0, (tmp_path / "log.txt").read_text()[-4000:]
    log = (tmp_path / "log.txt").read_text()
    assert log.count("run folder:") == 1  # only rank 0 reports (and writes)

    last1, last2 = (ckpt.list_checkpoints(r / "checkpoints")[-1] for r in (one, two))
    m = manifest(last2)
    assert m["world_size"] == 2 and len(m["params_sha256_per_rank"]) == 2
    assert m["params_sha256_per_rank"][0] == m["params_sha256_per_rank"][1], "the ranks' weights diverged"
    w1, w2 = (ckpt.load_weights(c / "weights.safetensors") for c in (last1, last2))
    for k in w1["G"]:
        torch.testing.assert_close(w2["G"][k], w1["G"][k], rtol=1e-4, atol=1e-6, msg=f"G.{k}")
    r1, r2 = records(one), records(two)
    assert [r["step"] for r in r2] == [r["step"] for r in r1] == list(range(1, 7))  # logged once, by rank 0
    for a, b in zip(r1, r2):
        assert b["g/l1"] == pytest.approx(a["g/l1"], rel=1e-5)  # the mean over both ranks' samples
        assert b["lr/G"] == a["lr/G"]
    assert r2[-1]["lr/G"] < r2[0]["lr/G"]  # three epochs of two steps each
    prov1, prov2 = (json.loads((r / "provenance.json").read_text())["training"] for r in (one, two))
    assert (prov1["world_size"], prov2["world_size"]) == (1, 2)
    assert prov1["global_batch"] == prov2["global_batch"] == 4
    state = torch.load(last2 / "state.pt", weights_only=True)
    assert [r["sampler"]["position"] for r in state["per_rank"]] == [6 * 4, 6 * 4]
    assert state["per_rank"][0]["rng"]["torch"].shape == state["per_rank"][1]["rng"]["torch"].shape


def test_gan_with_gradient_penalty_under_ddp_and_sigterm_preemption(data, tmp_path, capsys):
    run, log = tmp_path / "run", tmp_path / "log.txt"
    # a time-budget cosine schedule: the ranks set their rates from their agreed (mean) elapsed time,
    # else the rates — and the weights — of the ranks would differ (fingerprints below)
    cfg = tiny(data, "method=nie-dual-attention", "data.patch_size=[16,16]", "train.batch_size=2",
               "train.checkpoint_every=1", "train.num_workers=1", "train.lr_schedule=cosine", "train.minutes=30")
    p = torchrun(["train", *cfg, "--max-steps", "500", "--out", run], log)
    t = time.monotonic()
    while not (ckpt.list_checkpoints(run / "checkpoints")[-1:] and
               ckpt.list_checkpoints(run / "checkpoints")[-1].name >= "step_00000002"):
        assert p.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() - t < 240, "no checkpoint in time"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)  # what a scheduler sends to the launcher before pre-empting a job
    p.wait(timeout=120)
    text = " ".join(log.read_text().split())
    assert "stopped by SIGTERM" in text, text[-4000:]
    # torchrun itself re-raises the signal (its traceback); the training processes must not fail
    assert not re.search(r"\[rank\d\]:.*(Traceback|Error)", text), text[-4000:]
    last = ckpt.list_checkpoints(run / "checkpoints")[-1]
    ckpt.verify_checkpoint(last)
    m = manifest(last)
    stopped_at = m["step"]
    assert 2 <= stopped_at < 500
    assert len(set(m["params_sha256_per_rank"])) == 1 and len(m["params_sha256_per_rank"]) == 2
    recs = [r for r in records(run) if "g/total" in r]
    assert recs[-1]["step"] == stopped_at and [r["step"] for r in recs] == list(range(1, stopped_at + 1))
    for key in ("d1/wasserstein", "d1/gp", "d2/bce", "g/att_l1", "g/adv1", "g/adv2"):
        assert all(np.isfinite(r[key]) for r in recs), key
    lrs = [r["lr/D1"] for r in recs]
    assert lrs[0] == 1e-4 and all(a > b for a, b in zip(lrs, lrs[1:]))  # annealed by the clock
    # a 2-process checkpoint resumed by one process: allowed, with a warning (the global batch changes)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", str(stopped_at + 1)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "written by 2 process(es)" in out
    assert ckpt.list_checkpoints(run / "checkpoints")[-1].name == f"step_{stopped_at + 1:08d}"


@pytest.mark.slow
def test_two_nodes_rendezvous_on_localhost(data, tmp_path):
    """torchrun's multi-node flags (c10d rendezvous): two 'nodes' of one process each."""
    port, run = free_port(), tmp_path / "run"
    cfg = tiny(data, "method=nie-unet", "data.patch_size=[16,16]", "train.batch_size=2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv-backend=c10d", "--rdzv-id=medsyn-test", f"--rdzv-endpoint=127.0.0.1:{port}",
               "-m", "medsyn", "train", *cfg, "--max-steps", "3", "--out", str(run)]
        procs.append(subprocess.Popen(cmd, stdout=open(tmp_path / f"node{node}.txt", "w"), stderr=subprocess.STDOUT,
                                      env=env, cwd=str(Path(__file__).parents[1])))
    for node, p in enumerate(procs):
        assert p.wait(timeout=600) == 0, (tmp_path / f"node{node}.txt").read_text()[-3000:]
    assert manifest(ckpt.list_checkpoints(run / "checkpoints")[-1])["world_size"] == 2


# ------------------------------------------------------------------------------------------------
# sharded sampling and loader workers (in process)
# ------------------------------------------------------------------------------------------------


def _cases(n: int = 2) -> list[NormalizedCase]:
    rng = np.random.default_rng(0)
    return [NormalizedCase(f"c{i}", rng.uniform(-1, 1, (2, 11, 13, 7)).astype(np.float32),
                           rng.uniform(-1, 1, (11, 13, 7)).astype(np.float32), np.ones((11, 13, 7), bool))
            for i in range(n)]


@pytest.mark.parametrize("augment", [False, True])
def test_ranks_draw_disjoint_shares_of_the_single_process_batch(augment):
    cases = _cases()
    kw = dict(context=3, patch_size=(8, 8), augment=augment, seed=7)
    single = PatchSampler25D(cases, **kw)
    ranks = [PatchSampler25D(cases, rank=r, world_size=2, **kw) for r in range(2)]
    for _ in range(3):
        whole = single.batch(4)
        parts = [s.batch(2) for s in ranks]
        for key in whole:
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])
    assert single.position == ranks[0].position == ranks[1].position == 12
    assert not torch.equal(parts[0]["source"], parts[1]["source"])
    with pytest.raises(ValueError):
        PatchSampler25D(cases, rank=2, world_size=2)


def test_loader_workers_give_the_same_batches_and_leave_the_global_rng_alone():
    cases = _cases()
    plain = BatchFeed(PatchSampler25D(cases, context=3, patch_size=(8, 8), augment=True, seed=3), 2, torch.device("cpu"))
    expected = [plain() for _ in range(6)]
    sampler = PatchSampler25D(cases, context=3, patch_size=(8, 8), augment=True, seed=3)
    feed = BatchFeed(sampler, 2, torch.device("cpu"), num_workers=2, seed=3)
    assert feed.parallel
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    try:
        got = [feed() for _ in range(3)]
        assert torch.equal(torch.get_rng_state(), rng)  # the step's own random draws stay exact
        state = sampler.state_dict()  # what a checkpoint holds: the batches consumed, not prefetched
    finally:
        feed.close()
    assert state["position"] == 6
    resumed = PatchSampler25D(cases, context=3, patch_size=(8, 8), augment=True, seed=999)
    resumed.load_state_dict(state)
    feed2 = BatchFeed(resumed, 2, torch.device("cpu"), num_workers=1, seed=3)
    try:
        got += [feed2() for _ in range(3)]
    finally:
        feed2.close()
    for want, have in zip(expected, got):
        for key in want:
            assert torch.equal(want[key], have[key])


class _NoOutSampler:
    """A counter-based sampler whose batch_at cannot write into given tensors (the copy path)."""

    def __init__(self, base):
        self.base = base

    position = property(lambda self: self.base.position, lambda self, v: setattr(self.base, "position", v))

    def batch_at(self, position, n):
        b = self.base.batch_at(position, n)
        return {**b, "index": torch.arange(position, position + n)}

    def batch(self, n):
        out = self.batch_at(self.position, n)
        self.position += n
        return out


@pytest.mark.parametrize("wrap,slots", [(False, None), (True, None), (False, 1)])
def test_loader_slots_are_reused_without_changing_batches_already_handed_out(wrap, slots, monkeypatch):
    """More batches than each worker's ring of shared-memory slots, every batch kept: the
    batches the feed handed out are the trainer's own copies, equal to those drawn in-process.
    With one slot per worker (fewer than the DataLoader prefetches) workers wait for their slot."""
    if slots is not None:
        monkeypatch.setattr(BatchFeed, "SLOTS", slots)
    cases = _cases()
    make = lambda: PatchSampler25D(cases, context=3, patch_size=(8, 8), seed=5)  # noqa: E731
    plain = BatchFeed(_NoOutSampler(make()) if wrap else make(), 3, torch.device("cpu"))
    expected = [plain() for _ in range(14)]
    sampler = _NoOutSampler(make()) if wrap else make()
    for workers in (1, 2):
        sampler.position = 0
        feed = BatchFeed(sampler, 3, torch.device("cpu"), num_workers=workers, seed=5)
        try:
            got = [feed() for _ in range(14)]  # > (BatchFeed.PREFETCH + 2) slots per worker
        finally:
            feed.close()
        assert sampler.position == 42
        for want, have in zip(expected, got):
            assert want.keys() == have.keys()
            for key in want:
                assert torch.equal(want[key], have[key])


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert ctx.device == torch.device("cpu")
    net = torch.nn.Linear(2, 2)
    assert ctx.wrap(net) is net
    assert ctx.all_gather_object({"a": 1}) == [{"a": 1}] and ctx.broadcast_object(5) == 5
    assert ctx.agree(lambda: 3) == 3
    with pytest.raises(DatasetError, match="bad file"):
        ctx.agree(lambda: (_ for _ in ()).throw(DatasetError("bad file")))
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(SINGLE.all_reduce_sum(x), x)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: no process group
    assert init_from_env("cpu").enabled is False
    assert isinstance(DistContext(rank=1, world_size=2).is_main, bool) and not DistContext(rank=1, world_size=2).is_main


def test_compile_wraps_the_generator_only(data, tmp_path):
    """train.compile: torch.compile around G (critics stay eager for the GP's double backward);
    checkpoints keep the plain networks' keys. (Running compiled steps: the slow test below.)"""
    from medsyn.config import load_config
    from medsyn.training.engine import Trainer

    cfg = load_config(None, [s for s in tiny(data, "method=nie-dual-attention", "data.patch_size=[16,16]",
                                             "train.compile=true", "train.batch_size=2") if s != "--set"])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    tr.setup()
    tr._wrap_networks()
    assert type(tr.method.net("G")).__name__ == "OptimizedModule"
    assert tr.method.net("D1") is tr.method.networks["D1"] and tr.method.net("D2") is tr.method.networks["D2"]
    assert set(ckpt.flatten_weights(dict(tr.method.networks.items()))) == \
        {f"{n}.{k}" for n, m in tr.method.networks.items() for k in m.state_dict()}


@pytest.mark.slow
def test_compiled_training_matches_eager(data, tmp_path):
    """The compiled generator computes what the eager one does: the first step's losses agree to
    float tolerance (later steps drift apart, as any two float orderings do under Adam)."""
    cfg = tiny(data, "method=nie-dual-attention", "data.patch_size=[16,16]", "train.batch_size=2")
    assert main(["train", *cfg, "--max-steps", "3", "--out", str(tmp_path / "eager")]) == 0
    assert main(["train", *cfg, "--set", "train.compile=true", "--max-steps", "3", "--out", str(tmp_path / "compiled")]) == 0
    eager, compiled = records(tmp_path / "eager"), records(tmp_path / "compiled")
    for key in ("g/att_l1", "g/adv1", "g/adv2", "d1/gp", "d2/bce"):
        assert compiled[0][key] == pytest.approx(eager[0][key], rel=1e-4, abs=1e-6), key
        assert all(np.isfinite(r[key]) for r in compiled), key
