"""Challenge protocols (``medsyn evaluate --protocol``) equal the official scorers' numbers.

The expected numbers below were computed ONCE by the official code, unmodified, on the fixture
volumes of :func:`fixture_case` (closed-form arrays, no random generator), at these commits:

* hongweilibran/BraSyn 890804083b446f3d6fa0b17a4ef09b174bcd0209 ``ssim.py``
* SynthRAD2023/metrics 3200007e7029282416445719f7aae27e3a87308d ``functions/image_metrics.py``
* SynthRAD2025/evaluation 17cac47b6288fcb66c5818c9d50eb9534d613fa2 ``image_metrics.py``

with Python 3.11, NumPy 2.4.6, SciPy 1.17.1, scikit-image 0.26.0, torch 2.13.0 (CPU), torchmetrics
1.9.0, SimpleITK 2.5.7, and for SynthRAD 2023's ``from evalutils.io import ...`` evalutils 0.4.2
(+ pandas, scikit-learn) installed with ``pip install --target`` into a throw-away folder. The
three files were written out with ``git show COMMIT:PATH`` into /tmp/official/<owner>+<repo>/ and
this script was run there (``PYTHONPATH=/tmp/official/deps:tests python run_official.py``); its
printed ``repr`` values are the constants below:

.. code-block:: python

    # run_official.py: the three official scorers, unmodified, on the fixture volumes as NIfTI files
    import json, os, subprocess, sys
    from pathlib import Path

    import nibabel as nib
    import numpy as np
    import SimpleITK

    from test_protocols import AFFINE, fixture_case

    here = Path(__file__).resolve().parent
    out = {}
    # ---- BraSyn: ssim.py is a script with hard-coded paths; lay the files out where it looks
    pred, ref, seg = fixture_case("mr")
    w = here / "brasyn_run"
    sid = "BraTS-GLI-00000-000"
    for sub, arr, name in (("reference", ref, "t1n"), ("output", pred, "t1n"), ("reference", seg, "seg")):
        d = w / "data" / sub / sid
        d.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, AFFINE), d / f"{sid}-{name}.nii.gz")
    res = subprocess.run([sys.executable, str(here / "hongweilibran+BraSyn" / "ssim.py")], cwd=w,
                         capture_output=True, text=True, check=True)
    t, nt = [float(x) for x in res.stdout.split()[-2:]]
    out["brasyn"] = {"ssim_tumour": t, "ssim_non_tumour": nt}

    # ---- SynthRAD2023: ImageMetrics.score_patient on file paths
    pred, ref, mask = fixture_case("ct")
    w = here / "synthrad_run"
    w.mkdir(exist_ok=True)
    for arr, name in ((ref, "ct"), (pred, "sct"), (mask, "mask")):
        nib.save(nib.Nifti1Image(arr, AFFINE), w / f"{name}.nii.gz")
    sys.path.insert(0, str(here / "SynthRAD2023+metrics"))
    import image_metrics as m23
    # score_patient() passes the SimpleITK mask *image* to ssim(), which np.where flattens to 1-D under
    # SimpleITK 2.5 (ValueError); so do what score_patient does up to there (float32 casts), then call
    # its three metric methods with the mask *array*.
    im = m23.ImageMetrics()
    cast = lambda p: SimpleITK.GetArrayFromImage(SimpleITK.Cast(SimpleITK.ReadImage(str(p)), SimpleITK.sitkFloat32))
    g, s_, mk = cast(w / "ct.nii.gz"), cast(w / "sct.nii.gz"), cast(w / "mask.nii.gz")
    out["synthrad2023"] = {"mae": im.mae(g, s_, mk), "psnr": im.psnr(g, s_, mk, use_population_range=True),
                           "ssim": im.ssim(g, s_, mk)}
    sys.path.pop(0)
    del sys.modules["image_metrics"]

    # ---- SynthRAD2025: evaluate.py's loader (SimpleITK.ReadImage, array transposed [2, 1, 0]) + score_patient
    sys.path.insert(0, str(here / "SynthRAD2025+evaluation"))
    import image_metrics as m25
    load = lambda p: np.transpose(SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(p))), [2, 1, 0])
    out["synthrad2025"] = m25.ImageMetrics().score_patient(load(w / "ct.nii.gz"), load(w / "sct.nii.gz"), load(w / "mask.nii.gz"))
    print(json.dumps({k: {kk: repr(float(vv)) for kk, vv in v.items()} for k, v in out.items()}, indent=1))

    # ---- SynthRAD2025 again with a float32 reference file (the float32 filter path at every term)
    nib.save(nib.Nifti1Image(ref.astype(np.float32), AFFINE), w / "ct32.nii.gz")
    out["synthrad2025_float32_ref"] = m25.ImageMetrics().score_patient(load(w / "ct32.nii.gz"), load(w / "sct.nii.gz"), load(w / "mask.nii.gz"))

    # ---- BraSyn MSE/PSNR (not in ssim.py): torchmetrics on the region's voxels of the volumes scaled as ssim.py does
    import torch
    from torchmetrics.functional import mean_squared_error, peak_signal_noise_ratio
    pred, ref, seg = fixture_case("mr")
    def scaled(a):
        lo, hi = np.percentile(a, [0.5, 99.5]); lo = max(lo, 0)
        return torch.from_numpy((np.clip(a.astype(np.float64), lo, hi) - lo) / (hi - lo))
    ps, rs, tum = scaled(pred), scaled(ref), torch.from_numpy(seg > 0)
    for region, m in (("tumour", tum), ("non_tumour", ~tum)):
        out["brasyn"][f"mse_{region}"] = mean_squared_error(ps[m], rs[m])
        out["brasyn"][f"psnr_{region}"] = peak_signal_noise_ratio(ps[m], rs[m], data_range=1.0)
    print(json.dumps({k: {kk: repr(float(vv)) for kk, vv in v.items()} for k, v in out.items()}, indent=1))

Notes on the run: BraSyn's ``ssim.py`` is a script with hard-coded paths, so the files are laid out
where it looks and it is run as is; SynthRAD 2023's ``score_patient`` passes the SimpleITK mask
*image* to ``ssim()`` and fails under SimpleITK 2.5, so the script does what ``score_patient`` does
before that (float32 casts) and calls its three metric methods with the mask array; SynthRAD 2025's
``evaluate.py`` (which imports TotalSegmentator) is represented by its two-line loader
(``SimpleITK.ReadImage``, array transposed ``[2, 1, 0]``). BraSyn's MSE/PSNR are not in ``ssim.py``;
its MSE constants are torchmetrics' ``mean_squared_error`` on the region's voxels of the volumes
scaled as ``ssim.py`` scales them (torchmetrics' PSNR is not used as a reference: it computes with
a float32 data-range tensor and is off by ~1e-6 dB; medsyn's is ``10·log10(1/MSE)`` in float64).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_nii
from medsyn.cli.main import main
from medsyn.metrics.protocols import (
    PROTOCOLS,
    score_brasyn,
    score_synthrad2023,
    score_synthrad2025,
    torchmetrics_ssim3d,
)

# ---- the official numbers (see the module docstring)
OFFICIAL_BRASYN = {
    "tumour": {"ssim": 0.9981733560562134, "mse": 0.0019088255403982948},
    "non_tumour": {"ssim": 0.9845210313796997, "mse": 0.0007222096300598006},
}
OFFICIAL_SYNTHRAD2023 = {"mae": 70.73982639973183, "psnr": 22.288423174837313, "ssim": 0.9294068026772753}
OFFICIAL_SYNTHRAD2025 = {"mae": 70.73982639973183, "psnr": 22.435407603864192, "ms_ssim": 0.9925555957638791}
OFFICIAL_SYNTHRAD2025_FLOAT32_REF = {"mae": 70.73982639973183, "psnr": 22.43540760383548,
                                     "ms_ssim": 0.9925555932006043}
TOL = 1e-6


SHAPE = (20, 24, 28)  # the files' voxel order (i, j, k), as nibabel reads them
AFFINE = np.diag([-1.5, -1.5, 2.0, 1.0])  # LPS-like storage: medsyn's canonical (RAS) order differs


def fixture_case(kind):
    """Deterministic (pred, ref, mask-or-seg) arrays in file voxel order (i, j, k), no RNG.

    kind 'mr': ref int16 skull-stripped MR-like volume, pred float32 (a few negative voxels),
    seg uint8 labels 1-3. kind 'ct': ref int16 HU (air -1000, values below -1024 and above
    3071), pred float32 HU, body mask uint8.
    """
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    noise = ((i * 7919 + j * 104729 + k * 1299709) % 1009) / 1009.0  # pseudo-noise in [0, 1)
    noise2 = ((i * 6271 + j * 3571 + k * 90001) % 997) / 997.0
    smooth = np.sin(i / 3.1) * np.cos(j / 4.7) + np.sin((i + k) / 5.3)
    r2 = ((i - 9.5) / 8.5) ** 2 + ((j - 11.5) / 10.0) ** 2 + ((k - 13.5) / 12.0) ** 2
    body = r2 < 1.0
    lesion = ((i - 7) / 3.5) ** 2 + ((j - 13) / 4.0) ** 2 + ((k - 15) / 4.5) ** 2 < 1.0
    if kind == "mr":
        ref = np.where(body, 300 + 200 * smooth + 50 * noise, 0.0)
        ref = np.where(lesion, ref + 250 * noise2, ref)
        pred = np.where(body, 0.9 * ref + 30 * np.sin(k / 2.3) + 40 * (noise2 - 0.5), -5.0 * noise)
        seg = np.where(lesion, 1 + (np.floor(noise2 * 3)), 0)
        return pred.astype(np.float32), np.rint(ref).astype(np.int16), seg.astype(np.uint8)
    if kind == "ct":
        bone = body & (r2 > 0.7)
        ref = np.where(body, 40 + 60 * smooth + 30 * noise, -1000 - 60 * noise)
        ref = np.where(bone, 900 + 900 * noise2, ref)
        ref = np.where(lesion & (noise > 0.9), 3500.0, ref)  # metal above both clip maxima
        pred = ref + 80 * (noise2 - 0.5) + 25 * smooth
        pred = np.where(body & (noise2 > 0.97), -1200.0, pred)  # below -1024 inside the mask
        mask = r2 < 1.15  # the body, dilated
        return pred.astype(np.float32), np.rint(ref).astype(np.int16), mask.astype(np.uint8)
    raise ValueError(kind)


def assert_close(got: dict, want: dict) -> None:
    for k, v in want.items():
        assert abs(got[k] - v) <= TOL, f"{k}: medsyn {got[k]!r}, official {v!r}"


def test_brasyn_equals_official():
    got = score_brasyn(*fixture_case("mr"))
    for region, want in OFFICIAL_BRASYN.items():
        assert_close(got[region], want)
        assert got[region]["psnr"] == pytest.approx(10 * math.log10(1 / want["mse"]), abs=TOL)


def test_synthrad2023_equals_official():
    assert_close(score_synthrad2023(*fixture_case("ct"))["mask"], OFFICIAL_SYNTHRAD2023)


def test_synthrad2025_equals_official_int16_and_float32_reference():
    pred, ref, mask = fixture_case("ct")
    assert_close(score_synthrad2025(pred, ref, mask)["mask"], OFFICIAL_SYNTHRAD2025)
    # a float32 reference keeps the SSIM filters in float32 there; the 2.6e-9 shift of ms_ssim is real
    assert_close(score_synthrad2025(pred, ref.astype(np.float32), mask)["mask"], OFFICIAL_SYNTHRAD2025_FLOAT32_REF)


def test_synthrad2025_depends_on_axis_order_so_file_order_matters():
    """Its 2×2×2 down-sampling and 97-voxel padding are not flip-symmetric: scoring canonical
    (flipped) arrays would not give the official number, which is why evaluate passes file order."""
    pred, ref, mask = fixture_case("ct")
    flipped = score_synthrad2025(pred[::-1], ref[::-1], mask[::-1])["mask"]["ms_ssim"]
    assert abs(flipped - OFFICIAL_SYNTHRAD2025["ms_ssim"]) > 1e-6


def test_torchmetrics_ssim3d_equals_torchmetrics_float64():
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred, ref, _ = fixture_case("mr")
    p = pred[4:16, 5:18, 6:20].astype(np.float64)  # small: torch's float64 conv3d unfolds 11³ per voxel
    r = ref[4:16, 5:18, 6:20].astype(np.float64)
    want = float(structural_similarity_index_measure(torch.from_numpy(p)[None, None], torch.from_numpy(r)[None, None]))
    assert torchmetrics_ssim3d(p, r) == pytest.approx(want, abs=1e-12)


def test_brasyn_without_tumour_gives_nan_tumour_and_finite_rest():
    pred, ref, seg = fixture_case("mr")
    got = score_brasyn(pred, ref, np.zeros_like(seg))
    assert all(math.isnan(v) for v in got["tumour"].values())
    assert all(math.isfinite(v) for v in got["non_tumour"].values())


def test_registry_lists_the_protocols():
    assert PROTOCOLS.names() == ["brasyn", "default", "synthrad2023", "synthrad2025"]


# ---- the command line, on files stored in LPS-like order (medsyn reads them into RAS)

SID = "case-001"


def write_case(root: Path, kind: str, *, with_aux: bool = True, modality: str | None = None) -> tuple[Path, Path]:
    pred, ref, aux = fixture_case(kind)
    modality = modality or ("t2w" if kind == "mr" else "ct")
    aux_name = "seg" if kind == "mr" else "mask"
    ref_dir, pred_dir = root / "ref" / SID, root / "pred" / SID
    write_nii(ref_dir / f"{modality}.nii.gz", ref, AFFINE)
    write_nii(pred_dir / f"{modality}.nii.gz", pred, AFFINE)
    if with_aux:
        write_nii(ref_dir / f"{aux_name}.nii.gz", aux, AFFINE)
    return root / "pred", root / "ref"


def run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("protocol,kind,want", [
    ("brasyn", "mr", {"tumour": OFFICIAL_BRASYN["tumour"], "non_tumour": OFFICIAL_BRASYN["non_tumour"]}),
    ("synthrad2023", "ct", {"mask": OFFICIAL_SYNTHRAD2023}),
    ("synthrad2025", "ct", {"mask": OFFICIAL_SYNTHRAD2025}),
])
def test_cli_protocol_on_files_equals_official(capsys, tmp_path, protocol, kind, want):
    pred, ref = write_case(tmp_path, kind)
    out = tmp_path / "m"
    rc, err = run(capsys, "evaluate", "--pred", pred, "--ref", ref, "--modality", "t2w" if kind == "mr" else "ct",
                  "--protocol", protocol, "--out", out)
    assert rc == 0, err
    res = json.loads((out / "metrics.json").read_text())
    assert set(res) == {"subjects", "summary", "settings"}
    assert res["settings"]["protocol"] == protocol
    for region, metrics in want.items():
        assert_close(res["subjects"][SID][region], metrics)
        assert_close({m: res["summary"][region][m]["mean"] for m in metrics}, metrics)
    assert (out / "metrics.csv").is_file()


def test_cli_default_protocol_is_named_in_settings(capsys, tmp_path):
    pred, ref = write_case(tmp_path, "ct")
    out = tmp_path / "m"
    rc, err = run(capsys, "evaluate", "--pred", pred, "--ref", ref, "--modality", "ct", "--metrics", "mae",
                  "--out", out)
    assert rc == 0, err
    assert json.loads((out / "metrics.json").read_text())["settings"]["protocol"] == "default"


def one_line(rc: int, err: str, *words: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("protocol,kind,needs", [("brasyn", "mr", "seg"), ("synthrad2023", "ct", "mask"),
                                                  ("synthrad2025", "ct", "mask")])
def test_cli_protocol_without_its_label_or_mask(capsys, tmp_path, protocol, kind, needs):
    pred, ref = write_case(tmp_path, kind, with_aux=False)
    out = tmp_path / "m"
    rc, err = run(capsys, "evaluate", "--pred", pred, "--ref", ref, "--modality", "t2w" if kind == "mr" else "ct",
                  "--protocol", protocol, "--out", out)
    one_line(rc, err, str(ref / SID), protocol, needs, SID)
    assert not out.exists()


@pytest.mark.parametrize("protocol", ["synthrad2023", "synthrad2025"])
def test_cli_synthrad_refuses_a_non_ct_modality(capsys, tmp_path, protocol):
    pred, ref = write_case(tmp_path, "mr")
    rc, err = run(capsys, "evaluate", "--pred", pred, "--ref", ref, "--modality", "t2w", "--protocol", protocol,
                  "--out", tmp_path / "m")
    one_line(rc, err, protocol, "'t2w'", "Hounsfield")


def test_cli_synthrad_refuses_a_ct_named_volume_without_hounsfield_units(capsys, tmp_path):
    pred, ref = write_case(tmp_path, "mr", modality="ct")  # MR values filed as "ct"
    write_nii(ref / SID / "mask.nii.gz", fixture_case("ct")[2], AFFINE)
    rc, err = run(capsys, "evaluate", "--pred", pred, "--ref", ref, "--modality", "ct", "--protocol", "synthrad2025",
                  "--out", tmp_path / "m")
    one_line(rc, err, str(ref / SID / "ct.nii.gz"), "synthrad2025", "Hounsfield")


def test_cli_unknown_protocol_names_the_closest(capsys, tmp_path):
    pred, ref = write_case(tmp_path, "ct")
    rc, err = run(capsys, "evaluate", "--pred", pred, "--ref", ref, "--modality", "ct", "--protocol", "synthrad2024",
                  "--out", tmp_path / "m")
    one_line(rc, err, "--protocol", "synthrad2024", "did you mean", "synthrad202")


def test_cli_protocol_refuses_its_own_metrics_list(capsys, tmp_path):
    pred, ref = write_case(tmp_path, "ct")
    rc, err = run(capsys, "evaluate", "--pred", pred, "--ref", ref, "--modality", "ct", "--protocol", "synthrad2023",
                  "--metrics", "mae", "--out", tmp_path / "m")
    one_line(rc, err, "--protocol synthrad2023", "--metrics")
