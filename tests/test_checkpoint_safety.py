"""Checkpoints are safe to load: weights are safetensors, the rest is read with
``torch.load(weights_only=True)`` — a checkpoint from elsewhere cannot execute code —; corrupt or
truncated ones are detected with a message naming the file and the previous good one is used or
offered; a resume with a changed config is refused unless ``--allow-config-change``."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import phantom, write_nii
from medsyn.cli.main import main
from medsyn.errors import CheckpointError, OutputError
from medsyn.training import checkpoint as ckpt

TINY = ["--set", "method=nie-unet", "--set", "params.base_filters=4", "--set", "params.depth=2",
        "--set", "data.patch_size=[32,32]", "--set", "data.context_slices=3", "--set", "train.batch_size=2",
        "--set", "data.train=[s1]", "--set", "data.val=[]", "--set", "data.test=[]", "--set", "data.label=null",
        "--set", "train.device=cpu", "--set", "train.sample_every=0", "--set", "train.log_every=1",
        "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=3"]


class Exploit:
    """Unpickling this runs ``exec``: it writes a marker file (a harmless stand-in for any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """3 steps, a checkpoint after each (step_00000001 … step_00000003)."""
    base = tmp_path_factory.mktemp("ckpt")
    for m, seed in (("t1n", 1), ("t2w", 2)):
        write_nii(base / "data" / "s1" / f"{m}.nii.gz", phantom((20, 18, 8), seed=seed))
    run = base / "run"
    assert main(["train", *TINY, "--set", f"data.root={base / 'data'}", "--max-steps", "3", "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run, to damage."""
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def reseal(path: Path) -> None:
    """Rewrite manifest.json with the files' current checksums (what an attacker would do)."""
    mf = json.loads((path / "manifest.json").read_text())
    for name in mf["files"]:
        data = (path / name).read_bytes()
        mf["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / "manifest.json").write_text(json.dumps(mf))


def newest(run: Path) -> Path:
    return ckpt.list_checkpoints(run / "checkpoints")[-1]


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------------


def test_checkpoint_holds_plain_data_and_everything_to_continue(trained):
    path = newest(trained)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "state.pt", "weights.safetensors"]
    state = torch.load(path / "state.pt", weights_only=True)  # no unrestricted unpickling needed
    assert state["step"] == 3 and state["world_size"] == 1
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"G"}
    assert set(state["sampler"]) == {"seed", "position"} and state["sampler"]["position"] == 3 * 2
    assert {"python", "numpy", "numpy_pos", "torch"} <= set(state["rng"])
    assert state["per_rank"][0]["sampler"] == state["sampler"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"weights.safetensors", "state.pt"}
    assert manifest["config_hash"] == json.loads((trained / "provenance.json").read_text())["config_hash"]
    ckpt.verify_checkpoint(path)


@pytest.mark.parametrize("form", ["torch_zip", "plain_pickle"])
def test_malicious_state_pickle_is_refused(run, tmp_path, capsys, form):
    marker = tmp_path / "pwned.txt"
    path = newest(run)
    if form == "torch_zip":  # torch's own format, carrying a code-running object
        torch.save({"step": 3, "epoch": 0, "payload": Exploit(marker)}, path / "state.pt")
    else:  # a bare pickle renamed state.pt
        (path / "state.pt").write_bytes(pickle.dumps(Exploit(marker)))
    reseal(path)  # checksums match: only the loader stands between the file and code execution
    before = snapshot(run)
    rc, _, err = cli(capsys, "train", "--resume", run, "--max-steps", "4")
    assert rc == 2 and "Traceback" not in err
    line = err.strip()
    assert len(line.splitlines()) == 1
    assert str(path / "state.pt") in line and "refused" in line
    assert "step_00000002" in line  # the previous good checkpoint is offered
    assert not marker.exists(), "loading the checkpoint executed code"
    assert snapshot(run) == before
    # the payload is real: unrestricted unpickling would have run it
    load = "import torch; torch.load(%r, weights_only=False)" if form == "torch_zip" else \
        "import pickle; pickle.loads(open(%r, 'rb').read())"
    subprocess.run([sys.executable, "-c", load % str(path / "state.pt")], capture_output=True, timeout=120,
                   cwd=str(Path(__file__).parent))
    assert marker.read_text() == "pwned"


def test_malicious_weights_file_is_refused_by_train_and_predict(run, tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    path = newest(run)
    (path / "weights.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    reseal(path)
    rc, _, err = cli(capsys, "train", "--resume", run, "--max-steps", "4")
    assert rc == 2 and str(path / "weights.safetensors") in err and "Traceback" not in err
    (run / "best.json").write_text(json.dumps({"checkpoint": path.name}))
    rc, _, err = cli(capsys, "predict", run, tmp_path / "nothing", "--out", tmp_path / "pred", "--checkpoint", "best")
    assert rc == 2 and "Traceback" not in err and "weights.safetensors" in err
    assert not marker.exists()


def test_safetensors_header_claiming_huge_size_is_refused(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(struct.pack("<Q", 2**50) + b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
    with pytest.raises(CheckpointError, match="cannot read weights") as e:
        ckpt.load_weights(f)
    assert str(f) in str(e.value)


def test_manifest_naming_other_files_is_refused(run):
    path = newest(run)
    mf = json.loads((path / "manifest.json").read_text())
    mf["files"]["../../../etc/hostname"] = {"sha256": "0" * 64, "bytes": 1}
    (path / "manifest.json").write_text(json.dumps(mf))
    with pytest.raises(CheckpointError, match="expected"):
        ckpt.verify_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate_state", "flip_weight_byte", "delete_manifest"])
def test_corrupt_newest_checkpoint_is_set_aside_and_previous_good_used(run, capsys, damage):
    path = newest(run)
    if damage == "truncate_state":
        data = (path / "state.pt").read_bytes()
        (path / "state.pt").write_bytes(data[: len(data) // 3])
        named = path / "state.pt"
    elif damage == "flip_weight_byte":
        data = bytearray((path / "weights.safetensors").read_bytes())
        data[-5] ^= 0xFF
        (path / "weights.safetensors").write_bytes(bytes(data))
        named = path / "weights.safetensors"
    else:
        (path / "manifest.json").unlink()
        named = path / "manifest.json"
    rc, out, err = cli(capsys, "train", "--resume", run, "--max-steps", "4")
    assert rc == 0, err
    text = " ".join(out.split())  # rich wraps long lines
    assert "checkpoint step_00000003 is corrupt" in text and "previous good checkpoint, step_00000002" in text
    assert str(named) in out.replace("\n", "")
    assert (run / "checkpoints" / "corrupt-step_00000003").is_dir()  # kept for inspection, no longer listed
    names = [p.name for p in ckpt.list_checkpoints(run / "checkpoints")]
    assert names[-2:] == ["step_00000003", "step_00000004"]  # step 3 was redone from step 2
    for p in ckpt.list_checkpoints(run / "checkpoints"):
        ckpt.verify_checkpoint(p)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the metrics logged after step 2 were re-made, not duplicated


def test_no_good_checkpoint_is_a_clean_error(run, capsys):
    for p in ckpt.list_checkpoints(run / "checkpoints"):
        (p / "state.pt").write_bytes(b"")
    before = snapshot(run)
    rc, _, err = cli(capsys, "train", "--resume", run, "--max-steps", "4")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "no checkpoint verifies" in err and str(newest(run) / "state.pt") in err
    assert snapshot(run) == before


def test_changed_config_is_refused_unless_allowed(run, capsys):
    before = snapshot(run)
    rc, _, err = cli(capsys, "train", "--resume", run, "--set", "params.lr_g=0.5", "--set", "data.augment=true",
                     "--max-steps", "4")
    assert rc == 2 and "Traceback" not in err
    assert "params.lr_g: 0.005 → 0.5" in err and "data.augment: False → True" in err
    assert "--allow-config-change" in err and str(run / "config.yaml") in err
    assert snapshot(run) == before
    rc, out, err = cli(capsys, "train", "--resume", run, "--set", "params.lr_g=0.5", "--max-steps", "4",
                       "--allow-config-change")
    assert rc == 0, err
    assert "params.lr_g: 0.005 → 0.5" in " ".join(out.split())
    # the run folder now describes the changed run, and records the change
    assert "lr_g: 0.5" in (run / "config.yaml").read_text()
    changes = json.loads((run / "config_changes.json").read_text())
    assert changes == [{"step": 3, "changes": ["params.lr_g: 0.005 → 0.5"]}]
    # budgets and loader workers may change freely
    rc, _, err = cli(capsys, "train", "--resume", run, "--max-steps", "5", "--set", "train.num_workers=1")
    assert rc == 0, err


def test_save_failure_leaves_earlier_checkpoints_and_no_temp_folder(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    w = {"G.w": torch.ones(3)}
    first = ckpt.save_checkpoint(root, 1, w, {"step": 1})
    before = snapshot(root)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputError, match="No space left on device") as e:
        ckpt.save_checkpoint(root, 2, w, {"step": 2})
    assert "step_00000002" in str(e.value)
    assert snapshot(root) == before and [p.name for p in root.iterdir()] == [first.name]


def test_save_of_an_existing_step_replaces_it_and_an_interrupted_swap_is_recovered(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 5, {"G.w": torch.zeros(2)}, {"step": 5})
    ckpt.save_checkpoint(root, 5, {"G.w": torch.ones(2)}, {"step": 5})
    assert [p.name for p in root.iterdir()] == ["step_00000005"]
    assert ckpt.load_weights(root / "step_00000005" / "weights.safetensors")["G"]["w"].tolist() == [1.0, 1.0]
    (root / "step_00000005").rename(root / ".old-step_00000005-123")  # killed between the two renames
    ckpt.recover(root)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000005"]
    ckpt.verify_checkpoint(root / "step_00000005")
