"""scripts/compare_figure.py: the same slices of every method beside the reference and error maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from medsyn.cli.main import main
from medsyn.data.dataset import sample_root
from medsyn.io.image import read_image, write_like

ROOT = Path(__file__).resolve().parents[1]
TEST = "BraTS-GLI-00000-000"


def _script():
    return load_script("scripts/compare_figure.py")


def test_slice_choice_includes_the_largest_tumour_section():
    mod = _script()
    fg = np.zeros((8, 8, 20), bool)
    fg[2:6, 2:6, 3:17] = True
    tum = np.zeros_like(fg)
    tum[3:5, 3:5, 5] = True
    tum[3, 3, 6] = True
    picks = mod.choose_slices(fg, tum, "3")
    assert len(picks) == 3 and 5 in picks and all(3 <= k < 17 for k in picks)
    assert mod.choose_slices(fg, None, "3") == [6, 9, 13]  # inner points of 5 evenly spaced over 3 … 16
    assert mod.choose_slices(fg, tum, "4,9") == [4, 9]
    with pytest.raises(ValueError, match="--slices"):
        mod.choose_slices(fg, tum, "4,99")


def test_figure_from_a_prediction_folder_and_a_run_folder(tmp_path, capsys):
    ref = read_image(sample_root() / TEST / "t2w.nii.gz")
    noisy = tmp_path / "noisy"
    write_like(ref, ref.array + np.random.default_rng(0).normal(0, 30, ref.shape).astype(np.float32),
               noisy / TEST / "t2w.nii.gz")
    run = tmp_path / "run"
    tiny = ["--set", "params.base_filters=4", "--set", "params.depth=2", "--set", "data.patch_size=[32,32]",
            "--set", "train.batch_size=2", "--set", "data.val=[]", "--set", f"data.test=[{TEST}]",
            "--set", "train.sample_every=0", "--set", "inference.batch_size=64"]
    assert main(["train", "configs/nie2018_unet.yaml", *tiny, "--max-steps", "1", "--out", str(run)]) == 0
    out = tmp_path / "fig.png"
    rc = _script().main(["--ref", "sample", "--subject", TEST, "--target", "t2w", "--source", "t1n",
                         "--method", f"noisy={noisy}", "--method", f"UNet={run}", "--slices", "2", "--out", str(out)])
    assert rc == 0 and out.stat().st_size > 10_000
    assert (tmp_path / "fig_files" / "predictions" / "UNet" / TEST / "t2w.nii.gz").is_file()
    from PIL import Image

    w, h = Image.open(out).size
    assert w > h * 0.8  # 4 columns (source, reference, 2 methods), 2 × 2 rows
    assert _script().main(["--ref", "sample", "--subject", "nope", "--target", "t2w", "--method", f"a={noisy}",
                           "--out", str(tmp_path / "x.png")]) == 2
    assert "'nope' is not in" in capsys.readouterr().err
