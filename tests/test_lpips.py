"""LPIPS from user-supplied weights: agreement with the authors' package, the medical-image
conventions (intensity mapping, slices, masks), file loading and its errors, and ``evaluate``.

Reference values: ``lpips`` 0.1.4 (the authors' package, PyPI) computed ``LPIPS(net)(x0, x1)`` with
its own v0.1 linear heads (``tests/data/lpips``) on top of the seeded random trunk built by
:func:`random_trunk` below (torchvision's ``alexnet``/``vgg16`` were replaced, for that one run,
by modules with these weights: the package imports torchvision, which cannot be installed here).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medsyn.cli.main import main
from medsyn.errors import ConfigError
from medsyn.metrics import evaluate_volume, load_lpips, lpips, lpips_metric
from medsyn.metrics.lpips import BACKBONES, LPIPS, alexnet_features
from medsyn.models.vgg import VGG16_CONFIG, vgg_features

DATA = Path(__file__).parent / "data" / "lpips"
HEADS = {"alex": DATA / "alex_v0.1.pth", "vgg": DATA / "vgg_v0.1.pth"}
#: lpips 0.1.4: LPIPS(net=…)(x0, x1) for the inputs of :func:`inputs` and the trunk of random_trunk
PACKAGE_VALUES = {
    "alex": [0.015985814854502678, 0.014934232458472252, 0.01685132086277008],
    "vgg": [0.022822102531790733, 0.02230997383594513, 0.022347480058670044],
}


def random_trunk(net: str) -> dict[str, torch.Tensor]:
    """torchvision-layout ``features.*`` state dict with seeded random weights."""
    g = torch.Generator().manual_seed(11 if net == "alex" else 12)
    f = alexnet_features() if net == "alex" else vgg_features(VGG16_CONFIG)
    return {f"features.{k}": torch.randn(v.shape, generator=g) * (0.05 if v.ndim > 1 else 0.01)
            for k, v in f.state_dict().items()}


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(3, 3, 64, 72, generator=g) * 2 - 1
    x1 = (x0 + 0.25 * torch.randn(x0.shape, generator=g)).clamp(-1, 1)
    return x0, x1


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpips")
    out = {}
    for net in ("alex", "vgg"):
        sd = random_trunk(net)
        sd["classifier.1.weight"] = torch.zeros(4, 4)  # a whole torchvision model: classifier ignored
        torch.save(sd, root / f"{net}_trunk.pth")
        out[net] = root / f"{net}_trunk.pth"
    return out


@pytest.fixture(scope="module")
def alex(files):
    return load_lpips(HEADS["alex"], files["alex"], net="alex")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_agrees_with_the_authors_package(files, net):
    model = load_lpips(HEADS[net], files[net], net=net)
    x0, x1 = inputs()
    got = model(x0, x1)
    np.testing.assert_allclose(got.numpy(), PACKAGE_VALUES[net], rtol=1e-5)
    # one image at a time, grey input, argument order: same numbers
    assert torch.allclose(model(x1, x0), got, rtol=1e-6)
    assert torch.allclose(model(x0[:1], x1[:1]), got[:1], rtol=1e-5)


def test_equations_on_a_handmade_network():
    """Eq. 1 of Zhang et al. written out independently: unit-normalised features, squared
    difference, 1×1 heads, spatial mean, sum over the five taps."""
    torch.manual_seed(0)
    model = LPIPS("vgg")
    for p in model.parameters():
        p.data.normal_(0, 0.05)
        if p.ndim == 4 and p.shape[0] == 1:
            p.data.abs_()  # heads are non-negative in the published weights
    x0, x1 = inputs()
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    h0, h1, want = (x0 - shift) / scale, (x1 - shift) / scale, torch.zeros(3)
    taps = dict(zip((3, 8, 15, 22, 29), model.lins))
    for i, layer in enumerate(model.features[:30]):
        h0, h1 = layer(h0), layer(h1)
        if i in taps:
            n0 = h0 / (h0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            n1 = h1 / (h1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = taps[i].weight.view(1, -1, 1, 1)
            want += ((n0 - n1) ** 2 * w).sum(1).mean(dim=(1, 2))
    assert torch.allclose(model(x0, x1), want, rtol=1e-5)
    assert torch.all(model(x0, x0) == 0)


def test_identical_is_zero_and_perturbation_increases(alex):
    rng = np.random.default_rng(0)
    ref = rng.random((64, 64, 4)) * 800.0
    assert lpips(ref, ref, data_range=800.0, model=alex) == 0.0
    small = lpips(ref + rng.normal(0, 10, ref.shape), ref, data_range=800.0, model=alex)
    large = lpips(ref + rng.normal(0, 100, ref.shape), ref, data_range=800.0, model=alex)
    assert 0 < small < large


def test_volume_is_the_mean_of_its_slices_in_the_documented_range(alex):
    rng = np.random.default_rng(1)
    ref = rng.random((40, 48, 5)) * 1000.0 - 200.0
    pred = ref + rng.normal(0, 60, ref.shape)
    lo, dr = ref.min(), 1000.0

    def net_input(a, lo=lo):  # the module doc's mapping, written out: from the reference's minimum
        return torch.from_numpy(np.clip(2 * (a - lo) / dr - 1, -1, 1)).float()[None, None]

    per_slice = [float(alex(net_input(pred[:, :, k]), net_input(ref[:, :, k]))) for k in range(5)]
    assert lpips(pred, ref, data_range=dr, model=alex) == pytest.approx(np.mean(per_slice), rel=1e-6)
    # a 2D image is one slice (whose own minimum is its reference minimum)
    lo2 = ref[:, :, 2].min()
    want = float(alex(net_input(pred[:, :, 2], lo2), net_input(ref[:, :, 2], lo2)))
    assert lpips(pred[:, :, 2], ref[:, :, 2], data_range=dr, model=alex) == pytest.approx(want, rel=1e-6)
    # the mapping is in units: the same images in other units with the range scaled give the same value
    assert lpips(pred * 3 + 7, ref * 3 + 7, data_range=3 * dr, model=alex) == pytest.approx(
        np.mean(per_slice), rel=1e-5)
    # memory is bounded by the batch: results do not depend on it
    assert lpips(pred, ref, data_range=dr, model=alex, batch_size=2) == pytest.approx(np.mean(per_slice), rel=1e-6)


def test_masks(alex):
    rng = np.random.default_rng(2)
    ref = rng.random((48, 48, 4)) * 500.0
    ref[0, 0, :] = 0.0  # every slice's minimum is the volume's: slices alone map the same way
    pred = ref + rng.normal(0, 40, ref.shape)
    full = lpips(pred, ref, data_range=500.0, model=alex)
    assert lpips(pred, ref, data_range=500.0, mask=np.ones(ref.shape, bool), model=alex) == pytest.approx(full, rel=1e-6)
    assert math.isnan(lpips(pred, ref, data_range=500.0, mask=np.zeros(ref.shape, bool), model=alex))
    # errors only outside the mask do not count inside it
    mask = np.zeros(ref.shape, bool)
    mask[:, :24] = True
    outside = ref.copy()
    outside[:, 24:] += rng.normal(0, 80, outside[:, 24:].shape)
    inside_only = lpips(outside, ref, data_range=500.0, mask=mask, model=alex)
    assert inside_only < 0.6 * lpips(outside, ref, data_range=500.0, mask=~mask, model=alex)
    # slices are pooled by their number of masked voxels; slices without any are left out
    m = np.zeros(ref.shape, bool)
    m[:, :, 1] = True
    m[:10, :10, 3] = True
    a = lpips(pred[:, :, 1], ref[:, :, 1], data_range=500.0, mask=m[:, :, 1], model=alex)
    b = lpips(pred[:, :, 3], ref[:, :, 3], data_range=500.0, mask=m[:, :, 3], model=alex)
    want = (a * m[:, :, 1].sum() + b * m[:, :, 3].sum()) / m.sum()
    assert lpips(pred, ref, data_range=500.0, mask=m, model=alex) == pytest.approx(want, rel=1e-6)


def test_small_images_and_missing_model(alex):
    side = BACKBONES.get("alex").min_side
    ok = np.random.default_rng(3).random((side, side))
    assert lpips(ok, ok * 0.9, data_range=1.0, model=alex) > 0
    with pytest.raises(ConfigError, match=rf"at least {side} voxels"):
        lpips(ok[:-1], ok[:-1], data_range=1.0, model=alex)
    with pytest.raises(ConfigError, match="--lpips-weights"):
        lpips(ok, ok, data_range=1.0)
    with pytest.raises(ValueError, match="data_range"):
        lpips(ok, ok, data_range=None, model=alex)


def test_vgg_minimum_side_is_what_the_trunk_accepts(files):
    vgg = load_lpips(HEADS["vgg"], files["vgg"], net="vgg")
    side = BACKBONES.get("vgg").min_side
    x = torch.zeros(1, 1, side, side)
    assert vgg(x, x).shape == (1,)
    with pytest.raises(ConfigError, match="too small"):
        vgg(x[..., :-1, :-1], x[..., :-1, :-1])


# ------------------------------------------------------------------------------------ loading


def test_loading_formats(tmp_path, files, alex):
    from safetensors.torch import save_file

    x0, x1 = inputs()
    want = alex(x0, x1)
    # safetensors trunk, heads saved without dropout (model.0) in safetensors too
    save_file(torch.load(files["alex"], weights_only=True, map_location="cpu"), str(tmp_path / "trunk.safetensors"))
    heads = {k.replace("model.1", "model.0"): v for k, v in torch.load(HEADS["alex"], weights_only=True, map_location="cpu").items()}
    save_file(heads, str(tmp_path / "heads.safetensors"))
    m = load_lpips(tmp_path / "heads.safetensors", tmp_path / "trunk.safetensors")
    assert torch.equal(m(x0, x1), want)
    # a whole lpips.LPIPS state dict (trunk as net.slice*, scaling layer buffers) needs no --lpips-backbone
    whole = dict(torch.load(HEADS["alex"], weights_only=True, map_location="cpu"))
    slices = {1: range(0, 2), 2: range(2, 5), 3: range(5, 8), 4: range(8, 10), 5: range(10, 12)}
    trunk = torch.load(files["alex"], weights_only=True, map_location="cpu")
    for s, idx in slices.items():
        for i in idx:
            for p in ("weight", "bias"):
                if f"features.{i}.{p}" in trunk:
                    whole[f"net.slice{s}.{i}.{p}"] = trunk[f"features.{i}.{p}"]
    whole["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    torch.save(whole, tmp_path / "whole.pth")
    m = load_lpips(tmp_path / "whole.pth")
    assert torch.equal(m(x0, x1), want)
    assert m.source["backbone"] == str(tmp_path / "whole.pth") and len(m.source["weights_sha256"]) == 64
    assert not any(p.requires_grad for p in m.parameters())
    m.train()
    assert not m.training


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loading_errors_name_the_file_and_the_option(tmp_path, files):
    with pytest.raises(ConfigError, match="--lpips-weights.*nope.pth.*not found"):
        load_lpips(tmp_path / "nope.pth", files["alex"])
    with pytest.raises(ConfigError, match="never downloads"):
        load_lpips(None)
    with pytest.raises(ConfigError, match=r"holds the linear heads only; the alexnet trunk is needed"):
        load_lpips(HEADS["alex"])
    with pytest.raises(ConfigError, match=r"--lpips-weights: .*alex_v0.1.pth: lin1.model.1.weight has shape "
                                          r"\(1, 192, 1, 1\), expected \(1, 128, 1, 1\).*--lpips-net is 'vgg'"):
        load_lpips(HEADS["alex"], files["vgg"], net="vgg")
    with pytest.raises(ConfigError, match=r"--lpips-backbone: .*vgg_trunk.pth: not a alexnet state dict"):
        load_lpips(HEADS["alex"], files["vgg"], net="alex")
    with pytest.raises(ConfigError, match="unknown LPIPS backbone 'squeeze'"):
        load_lpips(HEADS["alex"], files["alex"], net="squeeze")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"other.pth: no LPIPS linear heads"):
        load_lpips(tmp_path / "other.pth", files["alex"])
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(files["alex"].read_bytes()[:4000])
    with pytest.raises(ConfigError, match=r"--lpips-backbone: .*trunc.pth: cannot read weights"):
        load_lpips(HEADS["alex"], trunc)


# ------------------------------------------------------------------------------------ evaluate


def test_evaluate_volume_with_lpips(alex):
    rng = np.random.default_rng(4)
    ref = rng.random((40, 40, 3)) * 100.0
    pred = ref + rng.normal(0, 5, ref.shape)
    fg = np.ones(ref.shape, bool)
    out = evaluate_volume(pred, ref, data_range=100.0, regions={"foreground": fg}, metrics=["mae", "lpips"],
                          extra={"lpips": lpips_metric(alex)})
    assert out["foreground"]["lpips"] == pytest.approx(lpips(pred, ref, data_range=100.0, mask=fg, model=alex))
    with pytest.raises(ConfigError, match="unknown metric 'lpips'"):
        evaluate_volume(pred, ref, data_range=100.0, regions={"foreground": fg}, metrics=["lpips"])


def test_evaluate_cli_with_and_without_weights(tmp_path, files, capsys):
    import json

    import nibabel as nib

    from medsyn.data.dataset import sample_root

    sid = "BraTS-GLI-00000-000"
    src = sample_root() / sid / "t2w.nii.gz"
    img = nib.load(src)
    arr = np.asarray(img.dataobj).astype(np.float32)
    pred_dir = tmp_path / "pred" / sid
    pred_dir.mkdir(parents=True)
    noisy = arr + np.random.default_rng(0).normal(0, 20, arr.shape).astype(np.float32) * (arr > 0)
    nib.save(nib.Nifti1Image(noisy, img.affine, img.header), pred_dir / "t2w.nii.gz")
    out = tmp_path / "m"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", "sample", "--modality", "t2w",
                 "--metrics", "mae,psnr", "--lpips-weights", str(HEADS["alex"]),
                 "--lpips-backbone", str(files["alex"]), "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["settings"]["metrics"] == ["mae", "psnr", "lpips"]
    assert res["settings"]["lpips"]["net"] == "alex" and res["settings"]["lpips"]["backbone"] == str(files["alex"])
    v = res["subjects"][sid]["foreground"]["lpips"]
    assert v > 0 and res["summary"]["foreground"]["lpips"]["mean"] == pytest.approx(v)
    assert "lpips" in (out / "metrics.csv").read_text().splitlines()[0]
    capsys.readouterr()
    # asked for without weights: one clear line, exit 2, nothing written
    out2 = tmp_path / "m2"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", "sample", "--modality", "t2w",
                 "--metrics", "mae,lpips", "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "--lpips-weights" in err and "Traceback" not in err and not out2.exists()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", "sample", "--modality", "t2w",
                 "--lpips-backbone", str(files["alex"]), "--out", str(out2)]) == 2
    assert "without --lpips-weights" in capsys.readouterr().err and not out2.exists()


def test_reproduction_script_scores_lpips_per_test_image(alex):
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "reproduce_medgan.py"
    spec = importlib.util.spec_from_file_location("reproduce_medgan_lpips", path)
    rep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rep)
    rng = np.random.default_rng(5)
    ref = rng.uniform(100, 200, (48, 48, 3))
    mask = np.zeros(ref.shape, bool)
    mask[4:44, 4:44, :] = True
    pred = ref + rng.normal(0, 10, ref.shape)
    per = rep.slice_metrics(pred, ref, mask, lpips_model=alex)
    dr = ref[mask].max() - ref[mask].min()
    want = [lpips(pred[:, :, k], ref[:, :, k], data_range=dr, mask=mask[:, :, k], model=alex) for k in range(3)]
    assert per["lpips"] == pytest.approx(want) and all(v > 0 for v in want)
    assert "lpips" not in rep.slice_metrics(pred, ref, mask)
    table = rep.markdown_table([("MedGAN", rep.summarise(per))], [*rep.METRICS, "lpips"])
    assert table.splitlines()[0].endswith("| LPIPS |")
