"""MedGAN as a method: the 3:1 update schedule (Alg. 1), the losses as the step computes them
(Eq. 6–12) for MedGAN and every baseline/ablation, VGG-19 weights (missing → error before
training; a file → loaded), whole-slice 2D sampling, `medsyn prepare`, the reproduction script's
table code, and train → predict → evaluate on the motion task (tiny networks, CPU)."""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import load_script
import torch
import torch.nn.functional as F
from rich.console import Console
from torch.nn.utils.parametrizations import _SpectralNorm

from conftest import SAMPLE_GLI, SAMPLE_MET
from medsyn.cli.main import main
from medsyn.config import load_config
from medsyn.data.sampling import NormalizedCase
from medsyn.errors import ConfigError
from medsyn.methods import METHODS
from medsyn.methods.medgan import MedGAN, MedGANConfig, WholeSliceSampler
from medsyn.models.discriminators.patchgan import receptive_field
from medsyn.models.vgg import VGG19
from medsyn.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(depth=5, base_channels=4, d_base_channels=4)  # 32×32 inputs, 4-filter networks
ALL_NAMES = ["medgan", "medgan-noVGG", "medgan-1g", "medgan-cgan", "medgan-perceptual", "medgan-style-content",
             "pix2pix", "pix2pix-70", "pan", "id-cgan", "fila-sgan", *[f"pix2pix-casnet-{n}" for n in range(1, 8)]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    """A random-weight VGG-19 in torchvision layout (tests never use pretrained weights)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("vgg") / "vgg19_random.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in VGG19().state_dict().items()}, str(path))
    return path


def build(name: str, vgg: Path | None = None, in_channels: int = 1, size: int = 32, **params) -> MedGAN:
    spec = METHODS.get(name)
    p = spec.make_params({**TINY, **({"vgg19_weights": str(vgg)} if vgg else {}), **params})
    torch.manual_seed(0)
    return spec.build(p, in_channels=in_channels, out_channels=1, patch_size=(size, size))


def pair(seed: int = 0, channels: int = 1, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(1, channels, size, size, generator=g) * 2 - 1
    x = (0.5 * y[:, :1] + 0.3 * torch.rand(1, 1, size, size, generator=g)).clamp(-1, 1)
    return {"source": y, "target": x, "mask": torch.ones_like(x)}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def no_updates(m: MedGAN) -> None:
    """Optimiser steps that do nothing: every N_G iteration then sees the same networks."""
    for opt in m.optimizers.values():
        opt.step = lambda *a, **k: None


# ------------------------------------------------------------------------------------ variants


def test_every_variant_is_registered_and_listed(monkeypatch):
    for name in ALL_NAMES:
        spec = METHODS.get(name)
        assert spec.method_cls is MedGAN and spec.sample_kind == "2d" and spec.make_sampler is not None
    buf = io.StringIO()
    import medsyn.cli.main as cli

    monkeypatch.setattr(cli, "console", Console(file=buf, width=400))
    assert main(["methods"]) == 0
    listed = buf.getvalue()
    for name in ALL_NAMES:
        assert f" {name} " in listed, name


def test_paper_hyperparameters_and_variants():
    c = MedGANConfig()
    assert (c.lambda_perceptual, c.lambda_style, c.lambda_content, c.lambda_cgan) == (20.0, 1e-4, 1e-4, 1.0)  # Eq. 12
    assert (c.lr_g, c.lr_d, c.beta1, c.n_g) == (2e-4, 2e-4, 0.5, 3)  # Sec. 2.5, Alg. 1
    assert (c.n_blocks, c.depth, c.base_channels, c.norm, c.dropout) == (6, 8, 64, "instance", 0.0)
    assert (c.d_layers, c.spectral_norm, receptive_field(c.d_layers)) == (1, True, 16)
    assert (c.style_weights, c.content_weights) == ([1, 0, 0, 0, 1], [1, 1, 1, 1, 0])
    p = lambda name: METHODS.get(name).make_params({"vgg19_weights": "x.pth"})  # noqa: E731
    assert p("medgan-1g").n_blocks == p("medgan-cgan").n_blocks == p("pan").n_blocks == 1
    assert p("medgan-noVGG").n_blocks == 6 and not p("medgan-noVGG").needs_vgg
    # Sec. 3.2.2: the baselines share MedGAN's patch discriminator; Isola et al.'s 70×70 one is pix2pix-70
    assert receptive_field(p("pix2pix").d_layers) == 16 and p("pix2pix").lambda_l1 == 100
    assert receptive_field(p("pix2pix-70").d_layers) == 70 and p("pix2pix-70").lambda_l1 == 100
    assert all(receptive_field(p(n).d_layers) == 16 for n in ("pan", "id-cgan", "fila-sgan", "pix2pix-casnet-6"))
    assert [p(f"pix2pix-casnet-{n}").n_blocks for n in range(1, 8)] == list(range(1, 8))
    cfg = load_config(ROOT / "configs/medgan_t1_t2.yaml", ["params.vgg19_weights=x.pth"])
    assert cfg.train.batch_size == 1 and cfg.train.epochs == 200 and cfg.data.patch_size == [256, 256]
    assert cfg.data.root == "prepared:t1n-t2w-2d"


CONFIGS = sorted(p.name for pattern in ("medgan_*.yaml", "pix2pix*.yaml", "pan_*.yaml", "id_cgan_*.yaml",
                                          "fila_sgan_*.yaml") for p in (ROOT / "configs").glob(pattern))


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_load(name):
    cfg = load_config(ROOT / "configs" / name, ["params.vgg19_weights=x.pth"])
    spec = METHODS.get(cfg.method)
    assert spec.method_cls is MedGAN and cfg.data.root.startswith("prepared:")
    assert cfg.train.batch_size == 1 and cfg.data.patch_size == [256, 256] and cfg.params["depth"] == 8


# ------------------------------------------------------------------------------------ Alg. 1


@pytest.mark.parametrize("n_g", [3, 2])
def test_three_generator_updates_per_discriminator_update(n_g):
    m = build("medgan-noVGG", n_blocks=2, n_g=n_g)
    G, D = m.networks["G"], m.networks["D"]
    sn = [mod for mod in D.modules() if isinstance(mod, _SpectralNorm)]
    log: list[tuple[str, bool, bool, bool]] = []
    state = {"G": snapshot(G), "D": snapshot(D)}
    for name, opt in m.optimizers.items():
        orig = opt.step

        def step(*a, _name=name, _orig=orig, **k):
            before_g, before_d = snapshot(G), snapshot(D)
            # D's weights and its spectral-norm estimates (u, v) are held fixed during G's updates
            d_fixed = same(before_d, state["D"])
            out = _orig(*a, **k)
            log.append((_name, not same(snapshot(G), before_g), not same(snapshot(D), before_d), d_fixed))
            state["D"] = snapshot(D)
            return out

        opt.step = step
    calls = []
    b = pair()
    m.train_step(lambda: calls.append(1) or b, 1)
    assert [e[0] for e in log] == ["G"] * n_g + ["D"]  # N_G generator updates, then one D update
    assert all(e[1] and not e[2] for e in log[:-1])  # G steps change G only
    assert not log[-1][1] and log[-1][2]  # the D step changes D only
    assert all(e[3] for e in log[:-1])  # D (weights and u, v) untouched by the G steps
    assert len(calls) == 1  # one training pair per step (Alg. 1 line 2)
    assert all(mod.training for mod in sn)  # power iteration back on for D's own updates


def test_generator_and_discriminator_losses_match_the_equations(vgg_file):
    m = build("medgan", vgg_file, n_blocks=2)
    no_updates(m)
    b = pair(1)
    y, x = b["source"], b["target"]
    G, D = m.networks["G"], m.networks["D"]
    D_for_d_step = copy.deepcopy(D)
    vgg = VGG19()
    from safetensors.torch import load_file

    vgg.load_state_dict(load_file(str(vgg_file)))
    with torch.no_grad():
        for mod in D.modules():  # D as G sees it: no power iteration
            if isinstance(mod, _SpectralNorm):
                mod.eval()
        fake = G(y)
        logits, ff = D(fake, y, return_features=True)
        _, fr = D(x, y, return_features=True)
        for mod in D.modules():
            if isinstance(mod, _SpectralNorm):
                mod.train()
        cgan = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        # Eq. 6–7, λ_pi = 1, i = 0 … 2; D_0 = the image G(y) or x (not the source channels of D's input)
        perceptual = (fake - x).abs().mean() + sum((a - b_).abs().mean() for a, b_ in zip(ff[1:], fr[1:]))
        vf, vx = vgg(fake), vgg(x)

        def gram(v):
            _, d, h, w = v.shape
            f = v.reshape(d, h * w)
            return f @ f.T / (h * w * d)  # Eq. 9

        style = sum(ws * ((gram(a) - gram(c)) ** 2).sum() / (4 * a.shape[1] ** 2)  # Eq. 10
                    for ws, a, c in zip([1, 0, 0, 0, 1], vf, vx))
        content = sum(wc * ((a - c) ** 2).mean() for wc, a, c in zip([1, 1, 1, 1, 0], vf, vx))  # Eq. 11
        total = cgan + 20 * perceptual + 1e-4 * style + 1e-4 * content  # Eq. 12
        lr_, lf_ = D_for_d_step(torch.cat([x, fake]), torch.cat([y, y])).split(1)
        d_bce = (F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_))
                 + F.binary_cross_entropy_with_logits(lf_, torch.zeros_like(lf_)))
    out = m.train_step(lambda: b, 1)
    expect = {"g/cgan": cgan, "g/perceptual": perceptual, "g/style": style, "g/content": content, "g/total": total,
              "d/bce": d_bce}
    for k, v in expect.items():
        assert float(out[k]) == pytest.approx(float(v), rel=1e-4, abs=1e-7), k
    assert float(out["g/style"]) > 0 and float(out["g/content"]) > 0
    assert set(m.networks) == {"G", "D"}  # the VGG is never checkpointed


def _weighted_total(c: MedGANConfig, out: dict[str, torch.Tensor]) -> float:
    w = {"g/cgan": c.lambda_cgan, "g/perceptual": c.lambda_perceptual, "g/style": c.lambda_style,
         "g/content": c.lambda_content, "g/l1": c.lambda_l1, "g/l2": c.lambda_l2, "g/tv": c.lambda_tv}
    return sum(w[k] * float(v) for k, v in out.items() if k in w)


@pytest.mark.parametrize("name,terms", [
    ("medgan-noVGG", {"g/cgan", "g/perceptual"}),
    ("medgan-cgan", {"g/cgan"}),
    ("medgan-perceptual", {"g/cgan", "g/perceptual"}),
    ("medgan-style-content", {"g/cgan", "g/style", "g/content"}),
    ("medgan-1g", {"g/cgan", "g/perceptual", "g/style", "g/content"}),
    ("pix2pix", {"g/cgan", "g/l1"}),
    ("pix2pix-casnet-2", {"g/cgan", "g/l1"}),
    ("pan", {"g/cgan", "g/perceptual"}),
    ("id-cgan", {"g/cgan", "g/l2", "g/content"}),
    ("fila-sgan", {"g/cgan", "g/l1", "g/tv", "g/style", "g/content"}),
])
def test_each_variant_optimises_its_published_objective(name, terms, vgg_file):
    m = build(name, vgg_file)
    no_updates(m)
    b = pair(2)
    out = m.train_step(lambda: b, 1)
    logged = {k for k in out if k.startswith("g/") and k not in ("g/total", "g/mae_batch")
              and not k.startswith("g/weighted/")}
    assert logged == terms
    # every term is also logged as it enters L_G: g/weighted/<term> = λ · term (Eq. 12)
    assert {k for k in out if k.startswith("g/weighted/")} == {"g/weighted/" + k[2:] for k in terms}
    assert sum(float(out["g/weighted/" + k[2:]]) for k in terms) == pytest.approx(float(out["g/total"]), rel=1e-5)
    assert float(out["g/total"]) == pytest.approx(_weighted_total(m.cfg, out), rel=1e-5)
    assert ("d/pan_margin" in out) == (name == "pan")
    assert all(math.isfinite(float(v)) for v in out.values())


def test_baseline_specifics(vgg_file):
    b = pair(3)
    y, x = b["source"], b["target"]
    # PAN: perceptual loss on D's hidden layers only; D pushes that distance above m = PAN_MARGIN
    m = build("pan")
    no_updates(m)
    D = copy.deepcopy(m.networks["D"])
    with torch.no_grad():
        fake = m.networks["G"](y)
        _, feats = D(torch.cat([x, fake]), torch.cat([y, y]), return_features=True)
        dist = sum((f[1:] - f[:1]).abs().mean() for f in feats[1:])  # hidden layers, no i = 0
    out = m.train_step(lambda: b, 1)
    assert float(out["d/pan_margin"]) == pytest.approx(max(0.0, m.cfg.pan_margin - float(dist)), rel=1e-4)
    # ID-CGAN: 6.6e-3 L_cGAN + L2 + content at relu2_2
    m = build("id-cgan", vgg_file)
    assert m.cfg.lambda_cgan == pytest.approx(6.6e-3) and m.cfg.vgg_layers == ["relu2_2"]
    # Fila-sGAN: the style of the source image (MedGAN Sec. 3.2.2), the content of the target
    m = build("fila-sgan", vgg_file)
    no_updates(m)
    from safetensors.torch import load_file

    vgg = VGG19()
    vgg.load_state_dict(load_file(str(vgg_file)))
    from medsyn.losses.perceptual import style_loss

    with torch.no_grad():
        fake = m.networks["G"](y)
        expected = style_loss(vgg(fake), vgg(y))
    out = m.train_step(lambda: b, 1)
    assert float(out["g/style"]) == pytest.approx(float(expected), rel=1e-4)
    with pytest.raises(ConfigError, match="style_reference"):
        build("fila-sgan", vgg_file, in_channels=2)


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("key,value", [
    ("n_blocks", 0), ("n_blocks", 8), ("depth", 9), ("n_g", 0), ("lr_g", 0.0), ("beta1", 1.0),
    ("lambda_l1", -1.0), ("lambda_cgan", 0.0), ("dropout", 1.0), ("d_layers", 0),
    ("perceptual_weights", [1.0, 1.0]), ("style_weights", [1.0]), ("vgg_layers", ["relu9_1"]),
])
def test_invalid_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"params\.{key}"):
        METHODS.get("medgan").make_params({key: value, "vgg19_weights": "x.pth"})


def test_patch_size_must_fit_the_u_block(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.patch_size.*2\^depth = 32"):
        build("medgan-noVGG", size=48)
    with pytest.raises(ConfigError, match="data.patch_size"):
        build("medgan-noVGG", size=32, depth=8)  # the paper's U-block needs 256×256


# ------------------------------------------------------------------------------------ VGG-19 weights


@pytest.mark.parametrize("name", ["medgan", "medgan-1g", "medgan-style-content", "id-cgan", "fila-sgan"])
def test_missing_vgg_weights_is_a_config_error(name):
    params = METHODS.get(name).make_params({**TINY})  # the config resolves (predict needs no VGG) ...
    assert params.needs_vgg
    with pytest.raises(ConfigError, match=r"--set params\.vgg19_weights=PATH") as e:
        build(name)  # ... but the method is not built for training without the file
    assert "medgan-noVGG" in str(e.value) and "never downloads" in str(e.value)


@pytest.mark.parametrize("name", ["medgan-noVGG", "medgan-cgan", "medgan-perceptual", "pix2pix", "pan",
                                  "pix2pix-casnet-7"])
def test_variants_without_vgg_need_no_weights(name):
    assert not METHODS.get(name).make_params({}).needs_vgg
    build(name)


def test_train_without_vgg_weights_fails_before_training(cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(ROOT / "configs/medgan_motion.yaml"), "--max-steps", "1", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "params.vgg19_weights" in err and "--set params.vgg19_weights=PATH" in err and "medgan-noVGG" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not run.exists()  # no run folder: the method is built before anything is written


def test_train_with_a_bad_vgg_file_leaves_no_run_folder(cache, tmp_path, capsys):
    bad = tmp_path / "vgg19.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)  # a state dict, but not VGG-19's
    run = tmp_path / "run"
    assert main(["train", str(ROOT / "configs/medgan_motion.yaml"), "--max-steps", "1", "--out", str(run),
                 "--set", f"params.vgg19_weights={bad}"]) == 2
    err = capsys.readouterr().err
    assert "vgg19.pth" in err and "not a VGG-19 state dict" in err and "Traceback" not in err
    assert not run.exists()  # read before the run folder is written


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg_weights_are_loaded_from_the_file(tmp_path, suffix):
    g = torch.Generator().manual_seed(7)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in VGG19().state_dict().items()}
    path = tmp_path / f"vgg19{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    m = build("medgan", path, n_blocks=1)
    assert m.vgg is None  # loaded on the first training step: prediction never needs the file
    m.train_step(lambda: pair(), 1)
    loaded = m.vgg.state_dict()
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert not any(p.requires_grad for p in m.vgg.parameters())
    gone = build("medgan", tmp_path / "moved.pth", n_blocks=1)
    with pytest.raises(ConfigError, match="moved.pth.*not found"):
        gone.train_step(lambda: pair(), 1)


# ------------------------------------------------------------------------------------ sampling


def test_whole_slice_sampler_centres_every_slice():
    shape = (20, 24, 6)
    src = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1.0)[None]
    mask = np.zeros(shape, bool)
    mask[1:5, 2:6, 1:5] = True  # foreground far from the centre
    case = NormalizedCase("c", src, src[0].copy(), mask)
    s = WholeSliceSampler([case], context=1, patch_size=(32, 32), foreground_fraction=1.0, seed=0)
    for _ in range(5):
        x, y, m = s.sample()
        vals = x[0][x[0] > 1.5]  # the padding is the volume's minimum, 1 (voxel 0 of slice 0)
        k = int(vals.min() - 1) % shape[2]
        assert 1 <= k <= 4  # a slice with foreground
        whole = src[0][:, :, k]
        assert vals.size == whole.size and np.array_equal(np.sort(vals), np.sort(whole.ravel()))
        assert np.array_equal(x[0][6:26, 4:28], whole)  # centred, as sliding-window inference pads it
    tiles = WholeSliceSampler([case], context=1, patch_size=(16, 32), foreground_fraction=1.0, seed=0)
    x, _, _ = tiles.sample()
    inside = x[0] > 1.5
    assert x.shape == (1, 16, 32)  # axis 0 (20 > 16): a tile around the drawn voxel; axis 1: the whole row, centred
    assert np.array_equal(np.flatnonzero(inside.any(axis=0)), np.arange(4, 28))


# ------------------------------------------------------------------------------------ medsyn prepare


def test_prepare_commands(tiny_dataset, tmp_path, capsys):
    src = tiny_dataset(subjects=("s1", "s2"), modalities=("t1n", "t2w"))
    out = tmp_path / "motion"
    assert main(["prepare", "motion", str(src), str(out), "--seed", "3", "--size", "32", "--spacing", "1"]) == 0
    assert "data.source=[t2w_motion]" in capsys.readouterr().out
    rec = json.loads((out / "prepare.json").read_text())
    assert rec["task"] == "motion" and rec["seed"] == 3 and rec["parameters"]["grid"]["size"] == 32
    assert all("seed" in s and "drawn" in s and "grid_to_native_voxel" in s for s in rec["subjects"])
    a, b = (nib.load(str(out / "s1" / f"{n}.nii.gz")) for n in ("t2w_motion", "t2w"))
    assert a.shape[:2] == b.shape[:2] == (32, 32) and np.allclose(a.affine, b.affine)
    # an existing dataset is refused with one line, and kept
    before = (out / "prepare.json").read_bytes()
    assert main(["prepare", "motion", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and len(err.strip().splitlines()) == 1 and (out / "prepare.json").read_bytes() == before
    assert main(["prepare", "motion", str(src), str(tmp_path / "x"), "--spacing", "1"]) == 2
    assert "without a size" in capsys.readouterr().err
    assert main(["prepare", "denoise", str(src), str(tmp_path / "d"), "--noise", "poisson", "--level", "10",
                 "--seed", "5"]) == 0
    rec = json.loads((tmp_path / "d" / "prepare.json").read_text())
    assert (rec["seed"], rec["parameters"]["noise"], rec["parameters"]["level"]) == (5, "poisson", 10.0)
    assert rec["parameters"]["grid"].startswith("native")
    assert main(["prepare", "translation-2d", str(src), str(tmp_path / "t"), "--size", "32", "--native-spacing"]) == 0
    assert nib.load(str(tmp_path / "t" / "s1" / "t1n.nii.gz")).shape[:2] == (32, 32)
    assert main(["prepare", "ct-phantom", str(src), str(tmp_path / "ct"), "--seed", "1"]) == 0
    assert (tmp_path / "ct" / "s2" / "ct.nii.gz").is_file()
    assert main(["prepare", "denoise", str(tmp_path / "missing"), str(tmp_path / "m")]) == 2
    assert main(["prepare", "denoise", str(src), str(tmp_path / "n"), "--noise", "gaussian"]) == 2


# ------------------------------------------------------------------------------------ integration

TINY_CLI = ["--set", "params.depth=5", "--set", "params.n_blocks=2", "--set", "params.base_channels=8",
            "--set", "params.d_base_channels=8", "--set", "data.patch_size=[32,32]",
            "--set", f"data.train=[{SAMPLE_MET}]", "--set", "data.val=[]", "--set", f"data.test=[{SAMPLE_GLI}]",
            "--set", "train.device=cpu", "--set", "train.log_every=1", "--set", "train.sample_every=0",
            "--set", "inference.batch_size=64"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The prepared motion task in a private cache (prepared once for the module)."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDSYN_CACHE", str(path))
    yield path
    mp.undo()


def test_train_predict_evaluate_on_the_motion_task(cache, vgg_file, tmp_path):
    weights = tmp_path / "vgg19.safetensors"
    weights.write_bytes(vgg_file.read_bytes())
    run = tmp_path / "run"
    assert main(["train", str(ROOT / "configs/medgan_motion.yaml"), *TINY_CLI, "--set",
                 f"params.vgg19_weights={weights}", "--max-steps", "5", "--out", str(run)]) == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    for key in ("g/cgan", "g/perceptual", "g/style", "g/content", "g/total", "d/bce", "lr/G", "lr/D"):
        assert all(math.isfinite(r[key]) for r in recs), key
    assert set(ckpt.load_weights(ckpt.list_checkpoints(run / "checkpoints")[-1] / "weights.safetensors")) == {"G", "D"}
    weights.unlink()  # prediction needs no VGG-19
    data = next((cache / "prepared").glob("motion-v*"))
    pred = tmp_path / "pred"
    assert main(["predict", str(run), str(data / SAMPLE_GLI), "--out", str(pred)]) == 0
    src, out = nib.load(str(data / SAMPLE_GLI / "t2w_motion.nii.gz")), nib.load(str(pred / SAMPLE_GLI / "t2w.nii.gz"))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    assert np.isfinite(np.asarray(out.dataobj)).all()
    assert main(["evaluate", "--pred", str(pred), "--ref", "prepared:motion", "--modality", "t2w",
                 "--out", str(tmp_path / "eval")]) == 0
    res = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert res["summary"]["foreground"]["psnr"]["mean"] > 0


def test_resume_equals_uninterrupted_run(cache, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = str(ROOT / "configs/medgan_novgg_motion.yaml")
    assert main(["train", cfg, *TINY_CLI, "--max-steps", "4", "--out", str(a)]) == 0
    assert main(["train", cfg, *TINY_CLI, "--max-steps", "2", "--out", str(b)]) == 0
    assert main(["train", "--resume", str(b), "--max-steps", "4"]) == 0
    wa, wb = (ckpt.load_weights(ckpt.list_checkpoints(r / "checkpoints")[-1] / "weights.safetensors") for r in (a, b))
    for net in wa:
        for k in wa[net]:
            assert torch.equal(wa[net][k], wb[net][k]), f"{net}.{k}"


# ------------------------------------------------------------------------------------ reproduction script


def _script():
    return load_script("scripts/reproduce_medgan.py")


def test_reproduction_script_groups_metrics_and_table(tmp_path):
    rep = _script()
    args = rep.parse_args(["--groups", "table2", "table1", "depth"])
    names = rep.method_list(args)
    assert {"medgan", "pix2pix", "pan", "id-cgan", "fila-sgan", "medgan-1g", "medgan-cgan", "medgan-perceptual",
            "medgan-style-content"} <= set(names) and len(names) == len(set(names)) == 16
    assert all(n in METHODS for n in names)
    rng = np.random.default_rng(0)
    ref = rng.uniform(100, 200, (48, 48, 4))
    mask = np.zeros(ref.shape, bool)
    mask[4:44, 4:44, :] = True
    mask[:, :, 3] = False  # not a test image
    per = rep.slice_metrics(ref.copy(), ref, mask)
    assert len(per["ssim"]) == 3 and per["ssim"] == pytest.approx([1.0] * 3) and per["mse"] == [0.0] * 3
    assert per["vif"] == pytest.approx([1.0] * 3) and all(math.isinf(v) for v in per["psnr"])
    noisy = rep.slice_metrics(ref + rng.normal(0, 5, ref.shape), ref, mask)
    s = rep.summarise(noisy)
    assert s["mse"]["n"] == 3 and 20 < s["mse"]["mean"] < 30 and s["ssim"]["mean"] < 1
    table = rep.markdown_table([("MedGAN", s)], rep.METRICS)
    assert table.splitlines()[0] == ("| Method | SSIM | PSNR (dB) | MSE | VIF | UQI (8×8 uniform) | PSNR 8-bit (dB) "
                                     "| MSE 8-bit |")
    # 8-bit scale: noise of σ = 5 in a range of ~100 → σ ≈ 12.75 grey levels, MSE8 ≈ 163 (+ rounding)
    assert 120 < s["mse8"]["mean"] < 210 and s["psnr8"]["mean"] == pytest.approx(
        np.mean([10 * np.log10(255**2 / v) for v in noisy["mse8"]]), rel=1e-6)
    gauss = rep.slice_metrics(ref + rng.normal(0, 5, ref.shape), ref, mask, uqi_window="gaussian-11")
    assert abs(np.mean(gauss["uqi"]) - s["uqi"]["mean"]) > 1e-4  # the two windows give different values
    assert "±" in table.splitlines()[2]
    png = rep.depth_plot({1: s, 2: s}, tmp_path / "d.png", rep.METRICS)
    assert png.stat().st_size > 1000


def test_perceptual_layer0_is_the_image_not_the_source(vgg_file):
    """Eq. 6's D_0 is the image: the identical source channels of D's input concat(y, x) must not
    dilute the pixel term. With D's hidden layers weighted 0, L_perceptual = mean|G(y) − x|."""
    m = build("medgan-perceptual", vgg_file, perceptual_weights=[1.0, 0.0, 0.0])  # input + 2 hidden maps
    no_updates(m)
    b = pair(2)
    with torch.no_grad():
        fake = m.networks["G"](b["source"])
    out = m.train_step(lambda: b, 1)
    assert float(out["g/perceptual"]) == pytest.approx(float((fake - b["target"]).abs().mean()), rel=1e-4)
