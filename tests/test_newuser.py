"""A new user's first day (issue 17): numeric config ranges, run-folder lock, exit codes,
header semantics, progress without a terminal, small splits, packaged configs, one CLI grammar."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from medsyn.config import (DataConfig, InferenceConfig, NormConfig, RunConfig, TrainConfig, build_config,
                           load_config, numeric_bound, numeric_fields)
from medsyn.errors import ConfigError
from medsyn.methods import METHODS


def _config_classes() -> list[type]:
    """Every config dataclass: RunConfig's sections, each method's params and what they nest."""
    todo = [NormConfig, DataConfig, TrainConfig, InferenceConfig] + [spec.config_cls for _, spec in METHODS.items()]
    seen: list[type] = []
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for tp in typing.get_type_hints(cls).values():
            for t in (tp, *typing.get_args(tp)):
                if dataclasses.is_dataclass(t):
                    todo.append(t)
    return seen


def _field_cases() -> list[tuple[type, str, str]]:
    return [(cls, name, kind) for cls in _config_classes() for name, kind in numeric_fields(cls).items()]


def test_every_numeric_config_field_declares_its_range():
    missing = [f"{cls.__name__}.{name}" for cls, name, _ in _field_cases() if numeric_bound(cls, name) is None]
    assert not missing, f"numeric config fields without a bound: {missing}"
    assert len(_field_cases()) > 80  # the sweep really covers the sections and the methods' params


def _where(cls: type) -> tuple[str, str | None]:
    """(config path prefix, method name) under which ``cls`` is read."""
    sections = {DataConfig: "data", TrainConfig: "train", InferenceConfig: "inference", NormConfig: "data.normalization.t1n"}
    if cls in sections:
        return sections[cls], None
    for name, spec in METHODS.items():
        if spec.config_cls is cls:
            return "params", name
    for name, spec in METHODS.items():  # nested in a method's params (e.g. Qu's loss weights)
        for f in dataclasses.fields(spec.config_cls):
            if typing.get_type_hints(spec.config_cls)[f.name] is cls:
                return f"params.{f.name}", name
    raise AssertionError(cls)


def _below(bound) -> float | None:
    if bound.lo is not None:
        return bound.lo - (0 if bound.lo_open else 1)
    if bound.hi is not None:
        return bound.hi + (0 if bound.hi_open else 1)
    return float("nan")


@pytest.mark.parametrize("cls,name,kind", _field_cases(), ids=lambda v: getattr(v, "__name__", v))
def test_out_of_range_value_is_refused_naming_the_key(cls, name, kind):
    bound = numeric_bound(cls, name)
    bad = _below(bound)
    if kind == "int" and bad != bad:
        pytest.skip("an int field without a range cannot be out of range")  # none today
    prefix, method = _where(cls)
    is_list = "list" in str(typing.get_type_hints(cls)[name])
    value = [bad, bad] if is_list else bad
    over = f"{prefix}.{name}={value}".replace("nan", ".nan")
    sets = [over] + ([f"method={method}"] if method else [])
    with pytest.raises(ConfigError, match=f"config key '{prefix}.{name}"):
        load_config(None, sets)


def test_negative_learning_rate_and_zero_log_every_refused():
    with pytest.raises(ConfigError, match=r"'params.lr_g': got -1.0, expected a number > 0"):
        load_config(None, ["params.lr_g=-1"])
    with pytest.raises(ConfigError, match=r"'train.log_every': got 0, expected an integer ≥ 1"):
        load_config(None, ["train.log_every=0"])
    for m in ("0", "-1"):
        with pytest.raises(ConfigError, match="'train.minutes'"):
            load_config(None, [f"train.minutes={m}"])
    cfg = load_config(None, ["train.minutes=0.5", "params.lr_g=1e-3"])  # YAML 1.1 reads 1e-3 as a string
    assert cfg.train.minutes == 0.5 and cfg.params["lr_g"] == 1e-3
    with pytest.raises(ConfigError, match="'data.normalization.t2w.lower'"):
        build_config({"data": {"normalization": {"t2w": {"lower": -1}}}})


# ------------------------------------------------------------------ io: the input's header semantics
def test_2d_input_is_written_back_2d_and_unknown_orientation_codes_stay_0(tmp_path):
    import nibabel as nib
    import numpy as np

    from medsyn.io.image import read_image, write_like

    arr = np.arange(72 * 89, dtype=np.float32).reshape(72, 89)
    img = nib.Nifti1Image(arr, np.diag([0.9, 0.9, 1.0, 1.0]))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, tmp_path / "in.nii.gz")
    v = read_image(tmp_path / "in.nii.gz")
    assert v.shape == (72, 89, 1) and v.original_shape == (72, 89)
    out = nib.load(write_like(v, v.array * 2, tmp_path / "out.nii.gz"))
    assert out.shape == (72, 89)
    assert int(out.header["qform_code"]) == 0 and int(out.header["sform_code"]) == 0
    np.testing.assert_array_equal(np.asarray(out.dataobj), arr * 2)
    np.testing.assert_allclose(out.affine, nib.load(tmp_path / "in.nii.gz").affine)

    img3 = nib.Nifti1Image(arr[:, :, None].repeat(3, 2), np.eye(4))
    img3.set_qform(np.eye(4), code=1)
    img3.set_sform(np.eye(4), code=2)  # aligned to another image: kept as such
    nib.save(img3, tmp_path / "in3.nii.gz")
    v3 = read_image(tmp_path / "in3.nii.gz")
    out3 = nib.load(write_like(v3, v3.array, tmp_path / "out3.nii.gz"))
    assert out3.shape == (72, 89, 3)
    assert (int(out3.header["qform_code"]), int(out3.header["sform_code"])) == (1, 2)


# ------------------------------------------------------------------ outputs: unwritable, existing
def test_report_to_an_unwritable_place_exits_2_without_traceback(tmp_path, capsys):
    from medsyn.cli.main import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: nie-dual-attention\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a folder cannot be made under a file: as a read-only place, also for root
    assert main(["report", str(run), "--out", str(blocker / "r")]) == 2
    err = capsys.readouterr().err
    assert "a-file" in err and "writable --out" in err and "Traceback" not in err


def test_evaluate_and_report_refuse_to_overwrite_without_force(tmp_path, capsys):
    from medsyn.cli.main import main

    (tmp_path / "m").mkdir()
    out = tmp_path / "m" / "metrics.csv"
    out.write_text("old")
    assert main(["evaluate", "--pred", str(tmp_path), "--ref", "sample", "--modality", "t2w", "--out", str(tmp_path / "m")]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "old"
    (tmp_path / "r").mkdir()
    html = tmp_path / "r" / "report.html"
    html.write_text("old")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "--force" in capsys.readouterr().err and html.read_text() == "old"


@pytest.mark.parametrize("verb,old", [("evaluate", "m.json"), ("evaluate", "m.csv"), ("report", "r.html"), ("report", "r.md")])
def test_out_is_a_folder_for_verbs_that_write_several_files(verb, old, tmp_path, capsys):
    """evaluate and report: --out is a folder, as for train, predict, crossval and demo. The older
    file spelling is refused with the new one; a file at --out is refused even with --force."""
    from medsyn.cli.main import main

    args = {"evaluate": ["evaluate", str(tmp_path), "sample", "--modality", "t2w"], "report": ["report", str(tmp_path)]}[verb]
    assert main([*args, "--out", str(tmp_path / old)]) == 2
    err = capsys.readouterr().err
    assert "--out is a folder now" in err and f"--out {tmp_path / old.split('.')[0]}" in err and "Traceback" not in err
    assert not (tmp_path / old).exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for force in ([], ["--force"]):
        assert main([*args, "--out", str(blocker), *force]) == 2
        assert "is a file; --out names the folder" in capsys.readouterr().err and blocker.read_text() == "x"


def test_help_says_out_is_a_folder(capsys):
    from medsyn.cli.main import main

    for verb, names in (("evaluate", "metrics.json and metrics.csv"), ("report", "report.html, report.md")):
        main([verb, "--help"])
        assert names in " ".join(capsys.readouterr().out.replace("│", " ").split()), verb


# ------------------------------------------------------------------ the run-folder lock
TRAIN, TEST = "BraTS-MET-00110-000", "BraTS-GLI-00000-000"
TINY = ["--set", "params.base_filters=4", "--set", "params.depth=2", "--set", "data.patch_size=[32,32]",
        "--set", "train.batch_size=2", "--set", f"data.train=[{TRAIN}]", "--set", "data.val=[]",
        "--set", f"data.test=[{TEST}]", "--set", "train.log_every=1", "--set", "train.sample_every=0",
        "--set", "train.checkpoint_every=0", "--set", "inference.batch_size=64", "--set", "train.device=cpu"]


def test_second_train_into_a_held_run_folder_is_refused(tmp_path, capsys, one_torch_thread):
    import os

    from medsyn.cli.main import main
    from medsyn.training.run_dir import LOCK_NAME, RunLock

    out = tmp_path / "run"
    with RunLock(out):  # as a first `medsyn train --out run` holds it
        assert main(["train", *TINY, "--max-steps", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "another medsyn run is training into this folder" in err and f"pid {os.getpid()}" in err
        assert main(["train", "--resume", str(out)]) == 2  # not a run yet: said so, no YAML advice
        err = capsys.readouterr().err
        assert "not a medsyn run folder" in err and "YAML" not in err
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # the second run wrote nothing (the lock is the holder's)
    assert not out.exists()  # the holder wrote nothing either: no folder left behind


def test_lock_of_a_killed_run_does_not_block(tmp_path, one_torch_thread):
    import subprocess
    import sys

    from medsyn.cli.main import main
    from medsyn.training.run_dir import LOCK_NAME

    out = tmp_path / "run"
    code = ("import os, signal, sys; from medsyn.training.run_dir import RunLock; "
            "RunLock(sys.argv[1]).__enter__(); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code, str(out)])
    assert r.returncode == -9 and "pid" in (out / LOCK_NAME).read_text()  # a dead holder's lock file
    assert main(["train", *TINY, "--max-steps", "1", "--out", str(out)]) == 0
    assert (out / "config.yaml").is_file()


# ------------------------------------------------------------------ interrupted work exits 130
def test_ctrl_c_during_train_saves_and_exits_130(tmp_path, capsys, one_torch_thread):
    import os
    import signal
    import threading
    import time

    from medsyn.cli.main import main

    out = tmp_path / "run"

    def press_ctrl_c() -> None:
        t0 = time.monotonic()
        while not (out / "metrics.jsonl").is_file() and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    assert main(["train", *TINY, "--max-steps", "100000", "--out", str(out)]) == 130
    assert "checkpoint saved" in capsys.readouterr().out
    assert any((out / "checkpoints").iterdir())


@pytest.mark.parametrize("minutes", ["0", "-1"])
def test_zero_or_negative_minutes_refused(minutes, tmp_path, capsys):
    from medsyn.cli.main import main

    assert main(["train", "--minutes", minutes, "--out", str(tmp_path / "r")]) == 2
    assert "'train.minutes'" in capsys.readouterr().err and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ will the run fit?
def test_patch_larger_than_the_data_is_refused_before_any_file(tmp_path, capsys, one_torch_thread):
    from medsyn.cli.main import main

    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", "data.patch_size=[512,512]", "--max-steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'data.patch_size': 512×512 is more than 2× the largest axial slice" in err and "Traceback" not in err
    assert not out.exists()


def test_step_memory_estimate_refuses_with_the_numbers():
    import torch

    from medsyn.config import load_config, method_params
    from medsyn.methods import METHODS
    from medsyn.training.budget import check_step_memory, estimate_step_bytes

    cfg = load_config(None, ["params.base_filters=4", "params.depth=2"])
    method = METHODS.get(cfg.method).build(method_params(cfg), in_channels=5, out_channels=1, patch_size=(64, 64))
    cpu = torch.device("cpu")
    small, _ = estimate_step_bytes(method, 5, (64, 64), 2, cpu)
    big, acts = estimate_step_bytes(method, 5, (512, 512), 2, cpu)
    assert acts / (big - acts) > 1 and 40 < (big - (small - acts / 64)) / (acts / 64) < 90  # ∝ patch area
    check_step_memory(method, 5, (64, 64), 2, cpu, available=big * 2)  # fits: no error
    with pytest.raises(ConfigError, match=r"needs about .* GiB \(batch 2 × 512×512 patches.* free; lower"):
        check_step_memory(method, 5, (512, 512), 2, cpu, available=big // 2)


# ------------------------------------------------------------------ messages that misled
def test_grid_mismatch_says_what_differs_and_how_train_resamples(tmp_path):
    import nibabel as nib
    import numpy as np

    from medsyn.data.cases import load_case
    from medsyn.data.dataset import Subject
    from medsyn.errors import GeometryError

    arr = np.random.default_rng(0).random((12, 14, 10)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted = aff.copy()
    shifted[0, 3] = 10.0
    nib.save(nib.Nifti1Image(arr, aff), tmp_path / "t1n.nii.gz")
    nib.save(nib.Nifti1Image(arr, shifted), tmp_path / "t2w.nii.gz")
    s = Subject("s", {"t1n": tmp_path / "t1n.nii.gz", "t2w": tmp_path / "t2w.nii.gz"}, folder=tmp_path)
    with pytest.raises(GeometryError) as e:
        load_case(s, ["t1n"], "t2w")
    msg = str(e.value)
    assert "affine origin shifted by 10 mm (+10, +0, +0 mm along R, A, S)" in msg and "shape" not in msg
    assert "--set data.resample=true" in msg and "pass --resample" not in msg


def test_labels_outside_the_mask_warn_with_the_same_count_in_verify_and_train(tmp_path, capsys):
    import warnings

    import nibabel as nib
    import numpy as np

    from medsyn.cli.main import main
    from medsyn.data.cases import load_case
    from medsyn.data.dataset import discover
    from medsyn.errors import MedsynWarning

    s = tmp_path / "ds" / "s1"
    s.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for m in ("t1n", "t2w"):
        nib.save(nib.Nifti1Image(rng.random((16, 16, 8)).astype(np.float32) + 1, np.eye(4)), s / f"{m}.nii.gz")
    mask = np.zeros((16, 16, 8), np.uint8)
    mask[2:14, 2:14, 1:7] = 1
    seg = np.zeros_like(mask)
    seg[0, 0:3, 0] = 1  # 3 voxels outside
    seg[5, 5, 3] = 2
    nib.save(nib.Nifti1Image(mask, np.eye(4)), s / "brainmask.nii.gz")
    nib.save(nib.Nifti1Image(seg, np.eye(4)), s / "seg.nii.gz")
    assert main(["verify", str(tmp_path / "ds"), "-m", "t1n,t2w"]) == 0
    assert "3 labelled voxels lie outside brainmask.nii.gz" in capsys.readouterr().err
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_case(discover(tmp_path / "ds").subjects["s1"], ["t1n"], "t2w", label="seg")
    assert [str(x.message).count("3 labelled voxels lie outside brainmask.nii.gz") for x in w
            if issubclass(x.category, MedsynWarning)] == [1]


def test_predict_device_error_names_the_option_and_numbers_print_plainly():
    from medsyn.inference.predict import _mm
    from medsyn.training.distributed import resolve_device

    with pytest.raises(ConfigError, match=r"^--device: 'nonsense' is not a device"):
        resolve_device("nonsense", key="--device")
    import numpy as np

    assert _mm(np.array([1.0, 1.0, 2.5])) == "1 × 1 × 2.5"


class Payload:
    """An arbitrary object in a checkpoint (a pickle that would need unrestricted unpickling)."""


def test_refused_pickle_message_is_whole_and_quiet(tmp_path):
    import re
    import warnings

    import torch

    from medsyn.errors import CheckpointError
    from medsyn.training.checkpoint import load_state

    torch.save({"a": Payload()}, tmp_path / "state.pt")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as e:
            load_state(tmp_path / "state.pt")
    assert re.search(r"it holds \S*Payload, which is not a tensor or plain data \(unpickling", str(e.value))
    assert "Weights only load failed" not in str(e.value) and not [x for x in w if "torch" in str(x.filename)]


def test_paper_citations_point_to_no_missing_file():
    for _, spec in METHODS.items():
        assert "papers/" not in spec.paper, spec.name


# ------------------------------------------------------------------ progress in logs; predict's grammar
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_torch_thread):
    import os

    from medsyn.cli.main import main

    out = tmp_path_factory.mktemp("nu") / "run"
    os.environ["MEDSYN_PROGRESS_SECONDS"] = "0"  # every step: the lines are what is tested
    try:
        assert main(["train", *TINY, "--max-steps", "3", "--out", str(out)]) == 0
    finally:
        del os.environ["MEDSYN_PROGRESS_SECONDS"]
    return out


def test_progress_is_timestamped_lines_when_output_is_not_a_terminal(tmp_path, capsys, monkeypatch, one_torch_thread):
    import re

    from medsyn.cli.main import main

    monkeypatch.setenv("MEDSYN_PROGRESS_SECONDS", "0")
    assert main(["train", *TINY, "--max-steps", "3", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    ts = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.search(ts + r" preparing data: the subjects of \S+ are read, checked and normalised", out)
    assert re.search(ts + r" data ready in \d+ s: 1 training, 0 validation subject\(s\); steps 0 → 3", out)
    lines = re.findall(ts + r" train step (\d)/3 \([\d.]+ %\)(, [\d.e+-]+ s/step)?(, ETA \d+ s)? \| (\S+=\S+ ?)+", out)
    assert [int(m[0]) for m in lines] == [1, 2, 3] and all(m[1] for m in lines[1:])  # rates from the 2nd line
    assert "━" not in out  # no bar drawn into the log


def test_predict_lines_continue_overrides_and_one_bad_subject(tiny_run, tmp_path, capsys, monkeypatch):
    import re
    import shutil

    import nibabel as nib

    from medsyn.cli.main import main
    from medsyn.data.dataset import sample_root

    monkeypatch.setenv("MEDSYN_PROGRESS_SECONDS", "0")
    inputs = tmp_path / "in"
    shutil.copytree(sample_root() / TEST, inputs / "good")
    (inputs / "bad").mkdir()
    (inputs / "bad" / "t1n.nii.gz").write_bytes((inputs / "good" / "t1n.nii.gz").read_bytes()[:2000])  # truncated
    out = tmp_path / "pred"
    rc = main(["predict", str(tiny_run), str(inputs / "bad"), str(inputs / "good"), "--out", str(out),
               "--overlap", "0", "--batch-size", "64", "--set", "inference.blend=uniform"])
    cap = capsys.readouterr()
    assert rc == 2
    assert "subject bad:" in cap.err and "1 of 2 subject(s) failed; the others were written" in cap.err
    assert (out / "good" / "t2w.nii.gz").is_file() and not (out / "bad").exists()
    assert re.search(r"\d\d:\d\d:\d\d predict subject 2/2: good", cap.out)
    assert re.search(r"\d\d:\d\d:\d\d predict good window \d+/\d+", cap.out)
    # continue: the written subject is skipped, not refused and not redone
    mtime = (out / "good" / "t2w.nii.gz").stat().st_mtime_ns
    assert main(["predict", str(tiny_run), str(inputs / "good"), "--out", str(out)]) == 2  # exists, no --force
    assert "--continue" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), str(inputs / "good"), "--out", str(out), "--continue"]) == 0
    assert (out / "good" / "t2w.nii.gz").stat().st_mtime_ns == mtime
    assert nib.load(out / "good" / "t2w.nii.gz").shape == nib.load(inputs / "good" / "t1n.nii.gz").shape
    # only inference keys may change; values are validated
    assert main(["predict", str(tiny_run), str(inputs / "good"), "--out", str(tmp_path / "p2"),
                 "--set", "params.lr_g=1"]) == 2
    assert "inference.* keys only" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), str(inputs / "good"), "--out", str(tmp_path / "p2"), "--overlap", "1"]) == 2
    assert "'inference.overlap'" in capsys.readouterr().err


# ------------------------------------------------------------------ configs outside the repository
def test_bundled_config_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    from medsyn.cli.main import main
    from medsyn.config import resolve_config

    monkeypatch.chdir(tmp_path)
    assert load_config("nie2018_brats_t1_t2").method == load_config("nie2018_brats_t1_t2.yaml").method
    assert resolve_config("nie2018_dual").name == "nie2018_dual.yaml"
    with pytest.raises(ConfigError) as e:
        load_config("nie2018_brats_t1_t3")
    msg = str(e.value)
    assert "did you mean 'nie2018_brats_t1_t2'" in msg.lower() and "configs/" not in msg
    assert main(["configs"]) == 0 and "qu_brats" in capsys.readouterr().out


# ------------------------------------------------------------------ small splits; the demo's meaning
def test_two_subjects_leave_one_held_out_and_the_gaps_are_said(tmp_path):
    from medsyn.data.dataset import discover, sample_root, split_subjects, split_notes

    splits = split_subjects(discover(sample_root()))
    assert len(splits["train"]) == 1 and len(splits["test"]) == 1 and splits["val"] == []
    notes = split_notes(splits)
    assert len(notes) == 1 and notes[0].startswith("no validation subject (2 subject(s) in all)")
    assert "'best' checkpoint is the last one" in notes[0]
    assert any(n.startswith("no test subject") for n in split_notes({"train": ["a"], "val": [], "test": []}))


def test_split_notes_at_start_and_in_the_run_folder(tiny_run):
    import json

    prov = json.loads((tiny_run / "provenance.json").read_text())
    assert [n.split(" (")[0] for n in prov["split_notes"]] == ["no validation subject"]


def test_demo_says_what_was_trained():
    from medsyn.cli.demo import demo_config, what_was_trained

    cfg = build_config(demo_config(3.0, "cpu", None))
    text = what_was_trained(cfg, 16, 185.0, "minutes")
    planned = cfg.train.epochs * -(-cfg.data.patches_per_subject // cfg.train.batch_size)  # one training subject
    assert f"trained on ONE subject (BraTS-MET-00110-000) for 16 of {planned} planned steps (" in text
    assert f"{100 * 16 / planned:.2g} %, 3 min 5 s" in text
    assert "stopped by the time budget" in text and "held-out BraTS-GLI-00000-000" in text
    assert "The same configuration trained much longer" in text or "not recorded yet" in text


def test_demo_quotes_a_recorded_reference_the_docs_agree_with(monkeypatch):
    """TRAINED_REFERENCE: the figure and how it was obtained; docs/nie2018.md quotes the same."""
    from pathlib import Path

    from medsyn.cli import demo

    ref = {"psnr": 23.456, "ssim": 0.8123, "mae": 51.2, "steps": 1234, "minutes": 75, "device": "one CPU thread",
           "date": "2026-12-01", "command": "medsyn demo --minutes 75 --device cpu"}
    monkeypatch.setattr(demo, "TRAINED_REFERENCE", ref)
    text = demo.what_was_trained(build_config(demo.demo_config(3.0, "cpu", None)), 16, 185.0, "minutes")
    assert ("trained much longer (1234 steps, 75 min on one CPU thread, 2026-12-01) reaches on this held-out "
            "subject: foreground PSNR 23.46 dB, SSIM 0.812, MAE 51.2") in text
    monkeypatch.undo()
    docs = (Path(__file__).parents[1] / "docs" / "nie2018.md").read_text()
    if demo.TRAINED_REFERENCE is None:
        assert "not recorded yet" in docs.split("## The demo")[1].split("\n## ")[0]
    else:
        assert set(demo.REFERENCE_KEYS) <= set(demo.TRAINED_REFERENCE)
        section = docs.split("## The demo")[1].split("\n## ")[0]
        r = demo.TRAINED_REFERENCE
        assert f"{r['psnr']:.2f} dB" in section and f"{r['ssim']:.3f}" in section and str(r["steps"]) in section
        assert r["command"] in section


# ------------------------------------------------------------------ one grammar for all verbs
def test_version_and_positional_evaluate(tmp_path, capsys):
    import json

    from medsyn import __version__
    from medsyn.cli.main import main

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"medsyn {__version__}"
    assert main(["evaluate", "--modality", "t2w", "--out", str(tmp_path / "m")]) == 2
    assert "missing PRED" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "sample", "--pred", str(tmp_path / "x"), "--modality", "t2w"]) == 2
    assert "PRED and --pred both given" in capsys.readouterr().err


def test_evaluate_takes_positional_inputs_like_predict_and_report(tiny_run, tmp_path, capsys):
    import json
    import shutil

    from medsyn.cli.main import main
    from medsyn.data.dataset import sample_root

    shutil.copytree(sample_root() / TEST, tmp_path / "in" / TEST)
    assert main(["predict", str(tiny_run), str(tmp_path / "in" / TEST), "--out", str(tmp_path / "pred")]) == 0
    out = tmp_path / "m"
    assert main(["evaluate", str(tmp_path / "pred"), "sample", "--modality", "t2w", "--out", str(out)]) == 0
    assert TEST in json.loads((out / "metrics.json").read_text())["subjects"]
    assert main(["evaluate", str(tmp_path / "pred"), "sample", "--modality", "t2w", "--out", str(out)]) == 2
    assert main(["evaluate", str(tmp_path / "pred"), "sample", "--modality", "t2w", "--out", str(out), "--force"]) == 0


def test_demo_counts_the_full_schedule_even_when_capped():
    from medsyn.cli.demo import demo_config, what_was_trained

    cfg = build_config(demo_config(3.0, "cpu", 3))
    assert cfg.train.max_steps == 3  # the cap; the planned schedule stays the configured one
    planned = cfg.train.epochs * -(-cfg.data.patches_per_subject // cfg.train.batch_size)  # one training subject
    assert (f"for 3 of {planned} planned steps ({100 * 3 / planned:.2g} %, 1 min 2 s, stopped by max_steps)"
            in what_was_trained(cfg, 3, 62.0, "max_steps"))
    assert f"for {planned // 2} of {planned} planned steps (50 %," in what_was_trained(cfg, planned // 2, 62.0, "minutes")


def test_progress_lines_eta_respects_the_time_budget(monkeypatch):
    """A 3-minute budget with a 500,000-step schedule: the ETA is the budget's end, not 14 hours."""
    from medsyn.training import progress as pg

    now = [0.0]
    monkeypatch.setattr(pg.time, "monotonic", lambda: now[0])
    out: list[str] = []
    lines = pg.LineProgress("train", 500_000, out.append, every=10.0, deadline=100.0 + 180.0)
    now[0] = 100.0
    lines.update(1)
    now[0] = 130.0
    lines.update(301)  # 0.1 s/step: 49,970 s of steps left, but the budget ends in 150 s
    assert "ETA 2 min 30 s (time budget)" in out[-1] and "0.1 s/step" in out[-1]
    free = pg.LineProgress("train", 1000, out.append, every=10.0)
    free.update(0)
    now[0] = 180.0
    free.update(500)  # no budget: steps left × s/step = 500 × 0.1 s
    assert "ETA 50 s" in out[-1] and "time budget" not in out[-1]


# ------------------------------------------------------------------ what is recorded for the user
def test_percentile_normalisation_is_recorded_without_the_ct_window(tmp_path):
    """config.yaml (and the report's copy) lists a normalisation's own fields only; the config read
    back is the same config, so config_hash and --resume of older run folders do not change."""
    import yaml

    from medsyn.config import config_hash, readable_dict, to_dict
    from medsyn.training.run_dir import RunDir

    cfg = load_config("nie2018_brats_t1_t2", ["data.normalization.ct={kind: window, low: -1000, high: 2000}"])
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config(cfg)
    norm = yaml.safe_load(run.config_path.read_text())["data"]["normalization"]
    assert norm["t1n"] == {"kind": "percentile", "lower": 0.5, "upper": 99.5}  # no low/high/clip
    assert norm["ct"] == {"kind": "window", "low": -1000, "high": 2000}
    assert config_hash(run.read_config()) == config_hash(cfg)
    # a config.yaml written before (every field of every kind) reads as the same config
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert config_hash(build_config(yaml.safe_load((tmp_path / "old.yaml").read_text()))) == config_hash(cfg)
    # a field of another kind set away from its default is kept (reading back stays exact)
    odd = load_config("nie2018_brats_t1_t2", ["data.normalization.t1n.clip=3"])
    assert readable_dict(odd)["data"]["normalization"]["t1n"]["clip"] == 3
    assert config_hash(build_config(readable_dict(odd))) == config_hash(odd)


def test_force_is_the_overwrite_flag_of_every_verb(capsys):
    """--force wherever something could be overwritten; prepare keeps --overwrite as an alias."""
    from medsyn.cli.main import main

    for verb in (["predict"], ["evaluate"], ["report"], ["reader-study", "analyse"], ["prepare", "motion"],
                 ["prepare", "denoise"], ["prepare", "translation-2d"], ["prepare", "ct-phantom"]):
        main([*verb, "--help"])
        assert "--force" in capsys.readouterr().out, verb
