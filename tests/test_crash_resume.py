"""Crash-safe, resumable runs: a training process killed with SIGKILL at random points, several
times, and resumed each time ends with exactly the weights (and logged losses) of an uninterrupted
run on CPU; SIGTERM / SIGINT (pre-emption, Ctrl-C) save a checkpoint before the process exits.

The runs are real processes (``medsyn train`` in a child process, killed from outside). They are
forked from a server that has imported medsyn once, so each start costs a fraction of a second
instead of the interpreter's import time. The method is the full Nie et al. step (WGAN-GP critic
with its random interpolation, local discriminator, attention loss, three Adam optimisers, step
schedules) with augmentation on, so every RNG and the sampler position must be restored exactly;
resumes alternate between in-process loading and 2 loader workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import phantom, write_nii
from medsyn.training import checkpoint as ckpt

STEPS = 16
SEED = 20240611  # the kill points are random, but reproducible from this seed

CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["medsyn.cli.main", "medsyn.training.engine", "medsyn.methods", "monai.transforms",
                            "torch._dynamo", "conftest"])


def _cli(argv: list[str], log: str) -> None:
    """Child process: ``medsyn`` with stdout/stderr to ``log``; exits with the CLI's code."""
    torch.set_num_threads(1)  # same in every child: bit-exact comparisons need the same reductions
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from medsyn.cli.main import main

    sys.exit(main(argv))


def start(argv: list, log: Path) -> mp.Process:
    p = CTX.Process(target=_cli, args=([str(a) for a in argv], str(log)))
    p.start()
    return p


def finish(p: mp.Process, log: Path, timeout: float = 300) -> None:
    p.join(timeout)
    assert p.exitcode == 0, log.read_text()[-3000:]


def last_step(run: Path) -> int:
    c = ckpt.list_checkpoints(run / "checkpoints")
    return int(c[-1].name.split("_")[1]) if c else 0


def wait_for_checkpoint_after(run: Path, step: int, p: mp.Process, timeout: float = 120) -> int:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        s = last_step(run)
        if s > step or not p.is_alive():
            return s
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint after step {step} within {timeout}s")


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return ckpt.load_weights(ckpt.list_checkpoints(run / "checkpoints")[-1] / "weights.safetensors")


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb) == {"G", "D1", "D2"}
    for net in wa:
        for k in wa[net]:
            assert torch.equal(wa[net][k], wb[net][k]), f"{net}.{k} differs"
    assert metrics(a) == metrics(b)


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> list[str]:
    data = tmp_path_factory.mktemp("data")
    for s, (a, b) in {"s1": (1, 2), "s2": (3, 4)}.items():
        write_nii(data / s / "t1n.nii.gz", phantom((20, 18, 8), seed=a))
        write_nii(data / s / "t2w.nii.gz", phantom((20, 18, 8), seed=b))
    sets = ["method=nie-dual-attention", f"data.root={data}", "data.train=[s1,s2]", "data.val=[]", "data.test=[]",
            "data.label=null", "data.augment=true", "data.context_slices=3", "data.patch_size=[16,16]",
            "data.patches_per_subject=8",  # an epoch of 8 steps: the lr schedules step during the run
            "params.base_filters=4", "params.depth=2", "params.lr_decay_every=1", "train.batch_size=2",
            "train.device=cpu", "train.log_every=1", "train.sample_every=0", "train.checkpoint_every=1",
            "train.keep_checkpoints=2"]
    return ["train", *[x for s in sets for x in ("--set", s)], "--max-steps", str(STEPS)]


@pytest.fixture(scope="module")
def reference(args, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    base = tmp_path_factory.mktemp("reference")
    finish(start([*args, "--out", base / "run"], base / "log.txt"), base / "log.txt")
    assert last_step(base / "run") == STEPS
    return base / "run"


def test_sigkill_at_random_points_then_resume_equals_uninterrupted_run(args, reference, tmp_path):
    rng = random.Random(SEED)
    run, log = tmp_path / "run", tmp_path / "log.txt"
    kills = []
    for attempt in range(3):
        before = last_step(run)
        argv = [*args, "--out", run] if attempt == 0 else \
            ["train", "--resume", run, "--max-steps", STEPS, "--set", f"train.num_workers={2 * (attempt % 2)}"]
        p = start(argv, log)
        wait_for_checkpoint_after(run, before, p)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in a step, a checkpoint write, or between them
        assert p.is_alive(), "the run finished before it could be killed; raise STEPS"
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        assert p.exitcode == -signal.SIGKILL
        kills.append(last_step(run))
    assert kills == sorted(kills) and kills[-1] < STEPS, kills
    finish(start(["train", "--resume", run, "--max-steps", STEPS], log), log)
    assert last_step(run) == STEPS
    assert_same_run(run, reference)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_sigterm_and_sigint_save_a_checkpoint_before_exit(args, reference, tmp_path):
    """Pre-emption (SIGTERM), then Ctrl-C (SIGINT): each stops after the current step with a
    checkpoint of it and exit code 130 (interrupted work, issue 17); resuming after both ends as
    the uninterrupted run."""
    run, log = tmp_path / "run", tmp_path / "log.txt"
    argv = [*args, "--out", run]
    for sig in (signal.SIGTERM, signal.SIGINT):
        before = last_step(run)
        p = start(argv, log)
        wait_for_checkpoint_after(run, before + 1, p)
        os.kill(p.pid, sig)
        p.join(300)
        assert p.exitcode == 130, log.read_text()[-3000:]  # a clean stop, not a crash, and not "done"
        text = " ".join(log.read_text().split())
        assert f"stopped by {sig.name}" in text and "checkpoint saved at step" in text
        stopped_at = last_step(run)
        assert before + 1 < stopped_at < STEPS
        assert metrics(run)[-1]["step"] == stopped_at  # the checkpoint is of the last completed step
        ckpt.verify_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])
        argv = ["train", "--resume", run, "--max-steps", STEPS]
    finish(start(argv, log), log)
    assert_same_run(run, reference)
