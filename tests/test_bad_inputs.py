"""The bad-input corpus (tests/bad_inputs/make_corpus.py, regenerated into a temporary folder):
every case must end in exit code 2 with one line on stderr that names the bad file or config key
— no traceback — and must leave everything written before untouched (inputs, run folders,
existing outputs; a fresh --out is not even created).

Read-only folders are simulated when the tests run as root (root ignores permission bits); a full
disk is simulated by making the write raise ENOSPC.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medsyn.cli.main import main
from medsyn.training import checkpoint as ckpt

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("make_corpus", HERE / "bad_inputs" / "make_corpus.py")
corpus_gen = importlib.util.module_from_spec(_spec)
sys.modules["make_corpus"] = corpus_gen
_spec.loader.exec_module(corpus_gen)
CASE_NAMES = [name for name, _ in corpus_gen.CASES]

TINY = ["--set", "method=nie-unet", "--set", "params.base_filters=4", "--set", "params.depth=2",
        "--set", "data.patch_size=[32,32]", "--set", "data.context_slices=3", "--set", "train.batch_size=2",
        "--set", "data.train=[s1]", "--set", "data.val=[]", "--set", "data.test=[]", "--set", "data.label=null",
        "--set", "train.device=cpu", "--set", "train.sample_every=0", "--set", "train.log_every=1"]

#: cases whose clean error needs a fix outside this test's scope (owner file named)
KNOWN_UNCLEAN: dict[str, str] = {}  # cases known to escape cleanly-erroring; none now


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("bad_inputs")
    entries = corpus_gen.make_corpus(root)
    return root, {e["name"]: e for e in entries}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 1-step nie-unet run on a good subject: what the predict cases predict with."""
    base = tmp_path_factory.mktemp("good")
    corpus_gen.good_subject(base / "data" / "s1")
    run = base / "run"
    assert main(["train", *TINY, "--set", f"data.root={base / 'data'}", "--max-steps", "1", "--out", str(run)]) == 0
    return run


def snapshot(*folders: Path) -> dict[str, str]:
    out = {}
    for folder in folders:
        if folder.exists():
            for p in sorted(folder.rglob("*")):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


class ReadOnly:
    """Make ``folder`` read-only: chmod, and — as root, who ignores modes — refuse writes below it."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch):
        self.folder = folder.resolve()
        folder.chmod(0o555)
        if os.geteuid() == 0:
            real_mkdir, real_open, real_bopen = os.mkdir, os.open, builtins.open

            def below(p) -> bool:
                try:
                    q = Path(os.fsdecode(p)).resolve()
                except TypeError:
                    return False
                return q != self.folder and q.is_relative_to(self.folder)

            def deny(p):
                return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(p))

            def mkdir(p, *a, **k):
                if below(p) and not os.path.exists(p):
                    raise deny(p)
                return real_mkdir(p, *a, **k)

            def os_open(p, flags, *a, **k):
                if below(p) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                    raise deny(p)
                return real_open(p, flags, *a, **k)

            def b_open(f, mode="r", *a, **k):
                if isinstance(f, (str, bytes, os.PathLike)) and below(f) and any(c in mode for c in "wax+"):
                    raise deny(f)
                return real_bopen(f, mode, *a, **k)

            monkeypatch.setattr(os, "mkdir", mkdir)
            monkeypatch.setattr(os, "open", os_open)
            monkeypatch.setattr(builtins, "open", b_open)

    def restore(self) -> None:
        self.folder.chmod(0o755)


def enospc(path="") -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_clean_error_and_changes_nothing(name, corpus, trained_run, tmp_path, capsys, monkeypatch,
                                                          request):
    if name in KNOWN_UNCLEAN:  # runs, and must still fail: an XPASS tells the fixer to drop the entry
        request.applymarker(pytest.mark.xfail(reason=KNOWN_UNCLEAN[name], strict=True))
    root, entries = corpus
    e, case = entries[name], root / name

    def sub(s: str) -> str:
        return s.replace("{case}", str(case))

    out = tmp_path / "out"  # a fresh output: must not be created
    watched = [case, trained_run]
    kind = e["kind"]
    after = None  # extra checks once the command has run
    if kind == "train":
        args = ["train", *TINY, *sets(map(sub, e["set"])), "--max-steps", "1", "--out", out]
    elif kind == "config":
        args = ["train", *map(sub, e["args"]), "--out", out]
    elif kind == "verify":
        args = ["verify", *map(sub, e["args"]), "--modalities", "t1n,t2w"]
    elif kind == "predict":
        out.mkdir()  # an output folder holding an earlier result, which must survive
        corpus_gen.write_nii(out / "earlier" / "t2w.nii.gz", corpus_gen.phantom(seed=9))
        watched.append(out)
        args = ["predict", trained_run, *map(sub, e["args"]), "--out", out, "--device", "cpu"]
    else:
        args, watched, after = OUTPUT_CASES[name](e, case, trained_run, tmp_path, monkeypatch, sub)
    before = snapshot(*watched)
    capsys.readouterr()
    rc = main([str(a) for a in args])
    _, err = capsys.readouterr()
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if kind != "verify":  # verify lists every problem, one per line, then a count
        assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    for word in e["names"]:
        assert sub(word) in err, f"{sub(word)!r} not named in: {err}"
    assert snapshot(*watched) == before, "a failed command changed files written before it"
    if kind in ("train", "config"):
        assert not out.exists(), "a failed run left a run folder behind"
    if after is not None:
        after()


def _train_read_only(e, case, run, tmp_path, monkeypatch, sub):
    ro = ReadOnly(case / "readonly", monkeypatch)
    args = ["train", *TINY, *sets(map(sub, e["set"])), "--max-steps", "1", "--out", case / "readonly" / "run"]

    def after():
        ro.restore()
        assert not (case / "readonly" / "run").exists()

    return args, [case], after


def _predict_read_only(e, case, run, tmp_path, monkeypatch, sub):
    ro = ReadOnly(case / "readonly", monkeypatch)
    return ["predict", run, *map(sub, e["args"]), "--out", case / "readonly", "--device", "cpu"], [case, run], ro.restore


def _train_existing(e, case, run, tmp_path, monkeypatch, sub):
    return ["train", *TINY, *sets(map(sub, e["set"])), "--max-steps", "1", "--out", case / "existing"], [case], None


def _predict_existing(e, case, run, tmp_path, monkeypatch, sub):
    return ["predict", run, *map(sub, e["args"]), "--out", case / "pred", "--device", "cpu"], [case, run], None


def _disk_full_checkpoint(e, case, run, tmp_path, monkeypatch, sub):
    """The second checkpoint's state.pt cannot be written: the first one stays good."""
    out = case / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            raise enospc(f)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    args = ["train", *TINY, *sets(map(sub, e["set"])), "--set", "train.checkpoint_every=1", "--max-steps", "3",
            "--out", out]

    def after():
        kept = ckpt.list_checkpoints(out / "checkpoints")
        assert [p.name for p in kept] == ["step_00000001"]
        ckpt.verify_checkpoint(kept[0])
        assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
        monkeypatch.setattr(torch, "save", real_save)  # space freed: the run resumes from step 1
        assert main(["train", "--resume", str(out), "--max-steps", "2"]) == 0
        assert ckpt.list_checkpoints(out / "checkpoints")[-1].name == "step_00000002"

    return args, [case / "dataset"], after


def _disk_full_run_folder(e, case, run, tmp_path, monkeypatch, sub):
    real_fsync = os.fsync

    def fsync(fd):  # the run folder's disk is full (the preprocessed cache lives elsewhere)
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(case / "run")):
            raise enospc()
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    def after():
        assert not (case / "run").exists(), "a half-written run folder was left behind"

    args = ["train", *TINY, *sets(map(sub, e["set"])), "--max-steps", "1", "--out", case / "run"]
    return args, [case], after


def _disk_full_prediction(e, case, run, tmp_path, monkeypatch, sub):
    import nibabel

    out = case / "pred"
    corpus_gen.write_nii(out / "earlier" / "t2w.nii.gz", corpus_gen.phantom(seed=9))
    real_save = nibabel.save

    def save(img, filename, *a, **k):
        if f"{os.sep}p2{os.sep}" in str(filename):
            Path(filename).write_bytes(b"\x1f\x8b partial")  # the disk filled mid-file
            raise enospc(filename)
        return real_save(img, filename, *a, **k)

    monkeypatch.setattr(nibabel, "save", save)

    def after():
        assert (out / "p1" / "t2w.nii.gz").is_file()  # the first subject was written completely
        assert sorted(p.name for p in (out / "p2").iterdir()) == []  # no partial or temporary file

    return ["predict", run, *map(sub, e["args"]), "--out", out, "--device", "cpu"], [case / "input", out / "earlier", run], after


OUTPUT_CASES = {
    "train_output_read_only": _train_read_only,
    "predict_output_read_only": _predict_read_only,
    "train_output_has_results": _train_existing,
    "predict_output_has_results": _predict_existing,
    "disk_full_checkpoint": _disk_full_checkpoint,
    "disk_full_run_folder": _disk_full_run_folder,
    "disk_full_prediction": _disk_full_prediction,
}


def test_corpus_covers_the_issue_list(corpus):
    """Every kind of bad input the issue names has at least one case."""
    _, entries = corpus
    required = ["truncated_nii_gz", "wrong_magic_bytes", "two_d_where_3d_expected", "four_d", "zero_size_dimension",
                "all_nan", "partly_nan", "constant_source", "huge_values", "mismatched_shapes", "mismatched_affines",
                "empty_mask", "unknown_modality", "misspelled_key_cli", "misspelled_key_yaml",
                "wrong_type_cli", "wrong_type_yaml", "train_output_read_only", "predict_output_read_only",
                "train_output_has_results", "predict_output_has_results", "disk_full_checkpoint",
                "disk_full_prediction", "dicom_mixed_series"]
    assert set(required) <= set(entries)
    assert len(entries) == len(CASE_NAMES) >= 45
    assert set(OUTPUT_CASES) == {n for n, e in entries.items() if e["kind"] == "output"}


def test_generator_runs_as_a_script(tmp_path):
    import subprocess

    r = subprocess.run([sys.executable, str(HERE / "bad_inputs" / "make_corpus.py"), str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c" / "corpus.json").is_file() and f"{len(CASE_NAMES)} cases" in r.stdout


def test_predict_warns_far_outside_the_training_data(trained_run, tmp_path):
    """Not an error: spacing 3× and intensities 100× the training data's give warnings naming the file."""
    src = tmp_path / "in" / "p1" / "t1n.nii.gz"
    corpus_gen.write_nii(src, corpus_gen.phantom(seed=3).astype(np.float32) * 100, np.diag([3.6, 3.3, 6.0, 1.0]))
    with pytest.warns(UserWarning) as rec:
        assert main(["predict", str(trained_run), str(src.parent), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    text = " ".join(str(w.message) for w in rec)
    assert "spacing" in text and "intensity" in text and str(src) in text
