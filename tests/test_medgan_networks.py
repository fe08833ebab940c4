"""MedGAN networks: U-block / CasNet channel counts and parameters, PatchGAN receptive fields and
spectral norm, VGG-19 layout and weight loading (MedGAN Sec. 2.3-2.4, pix2pix)."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from medsyn.errors import ConfigError
from medsyn.models.discriminators.patchgan import PatchGAN, receptive_field
from medsyn.models.generators.casnet import CasNet, UBlock
from medsyn.models.registry import DISCRIMINATORS, GENERATORS
from medsyn.models.vgg import (
    LAYER_INDEX,
    MEDGAN_CONTENT_WEIGHTS,
    MEDGAN_STYLE_WEIGHTS,
    MEDGAN_VGG_LAYERS,
    VGG19,
    load_vgg19_weights,
    require_vgg_weights,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------ U-block


def test_ublock_channel_counts_match_paper():
    with torch.device("meta"):  # structure only
        u = UBlock()
    # MedGAN Sec. 2.4.1: 64, 128, 256, 512, 512, 512, 512, 512 encoder filters, 4×4 stride 2
    assert u.encoder_out_channels == [64, 128, 256, 512, 512, 512, 512, 512]
    # decoder widths incl. the concatenated skips (pix2pix CD512-CD1024-CD1024-C1024-C1024-C512-C256-C128)
    assert u.decoder_in_channels == [512, 1024, 1024, 1024, 1024, 512, 256, 128]
    assert u.decoder_out_channels == [512, 512, 512, 512, 256, 128, 64, 1]
    convs = [m for m in u.down.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 64), (64, 128), (128, 256), (256, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    deconvs = [m for m in u.up.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.in_channels, d.out_channels) for d in deconvs] == [
        (512, 512), (1024, 512), (1024, 512), (1024, 512), (1024, 256), (512, 128), (256, 64), (128, 1)]
    assert all(d.kernel_size == (4, 4) and d.stride == (2, 2) for d in deconvs)
    # activations: LeakyReLU(0.2) in the encoder, ReLU in the decoder, Tanh at the end
    assert all(isinstance(seq[-1], nn.LeakyReLU) and seq[-1].negative_slope == 0.2 for seq in u.down)
    assert all(isinstance(seq[-1], nn.ReLU) for seq in u.up[:-1])
    assert isinstance(u.up[-1][-1], nn.Tanh)


def test_ublock_parameter_count():
    with torch.device("meta"):
        u = UBlock()
    enc, dec_in, dec_out = u.encoder_out_channels, u.decoder_in_channels, u.decoder_out_channels
    # every conv has a bias with instance norm (affine-free): k*k*cin*cout + cout
    expected = sum(16 * ci * co + co for ci, co in zip([1] + enc[:-1], enc))
    expected += sum(16 * ci * co + co for ci, co in zip(dec_in, dec_out))
    assert n_params(u) == expected == 54_403_457


def test_ublock_normalisation_placement():
    with torch.device("meta"):
        u = UBlock(norm="instance")
    norms = [type(seq[1]).__name__ for seq in u.down]
    # none on the first layer (pix2pix) nor on the 1×1 bottleneck (instance norm would zero it)
    assert norms == ["Identity"] + ["InstanceNorm2d"] * 6 + ["Identity"]
    assert all(isinstance(seq[1], nn.InstanceNorm2d) for seq in u.up[:-1])
    assert len(u.up[-1]) == 2  # last decoder layer: deconv + Tanh, no norm
    ub = UBlock(norm="batch", depth=5, base_channels=8)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ub.modules()) == 3 + 4
    un = UBlock(norm="none", depth=5, base_channels=8)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in un.modules())
    with pytest.raises(ConfigError, match="norm"):
        UBlock(norm="group")


def test_ublock_forward_small_and_full_size():
    torch.manual_seed(0)
    u = UBlock(1, 1, depth=5, base_channels=8)
    x = torch.randn(2, 1, 32, 32)
    y = u(x)
    assert y.shape == (2, 1, 32, 32)
    assert y.abs().max() < 1
    # the paper's 8 levels at 256×256 (narrow to stay fast)
    u8 = UBlock(2, 3, depth=8, base_channels=4)
    assert u8(torch.randn(1, 2, 256, 256)).shape == (1, 3, 256, 256)
    with pytest.raises(ValueError, match="divisible by 256"):
        u8(torch.randn(1, 2, 128, 128))
    with pytest.raises(ValueError, match="expects"):
        u(torch.randn(1, 2, 32, 32))
    with pytest.raises(ConfigError, match="depth"):
        UBlock(depth=9)


def test_ublock_dropout_option():
    u = UBlock(depth=5, base_channels=8, dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) for m in u.modules()) == 3  # first three decoder layers
    assert not any(isinstance(m, nn.Dropout) for m in UBlock(depth=5, base_channels=8).modules())
    x = torch.randn(1, 1, 32, 32)
    u.eval()
    assert torch.equal(u(x), u(x))
    u.train()
    torch.manual_seed(1)
    a = u(x)
    torch.manual_seed(2)
    assert not torch.equal(a, u(x))


# ------------------------------------------------------------------------------------ CasNet


def test_casnet_chains_blocks_and_validates():
    torch.manual_seed(0)
    c = CasNet(in_channels=2, out_channels=1, n_blocks=3, depth=5, base_channels=8)
    assert [b.in_channels for b in c.blocks] == [2, 1, 1]
    assert [b.out_channels for b in c.blocks] == [1, 1, 1]
    x = torch.randn(1, 2, 32, 32)
    y, inter = c(x, return_intermediate=True)
    manual = x
    for b in c.blocks:
        manual = b(manual)
    assert torch.allclose(y, manual) and torch.equal(inter[-1], y) and len(inter) == 3
    # end to end: the loss on the last output reaches the first block
    y.mean().backward()
    assert c.blocks[0].down[0][0].weight.grad.abs().sum() > 0
    for bad in (0, 8, 2.5, True):
        with pytest.raises(ConfigError, match="n_blocks"):
            CasNet(n_blocks=bad)


def test_casnet_parameter_counts():
    with torch.device("meta"):  # shapes only: no 326 M-parameter allocation
        assert n_params(CasNet(n_blocks=6)) == 6 * n_params(UBlock()) == 326_420_742
        assert n_params(CasNet(n_blocks=1)) == n_params(UBlock())  # pix2pix's generator
        # in_channels ≠ out_channels: only the first block reads the source channels
        assert n_params(CasNet(3, 1, n_blocks=2)) == n_params(UBlock(3, 1)) + n_params(UBlock(1, 1))


def test_registered():
    assert GENERATORS.get("casnet") is CasNet and GENERATORS.get("ublock") is UBlock
    assert DISCRIMINATORS.get("patchgan") is PatchGAN


# ------------------------------------------------------------------------------------ PatchGAN


def measured_receptive_field(d: PatchGAN, size: int) -> tuple[int, int]:
    x = torch.randn(1, d.image_channels, size, size, requires_grad=True)
    y = torch.randn(1, d.source_channels, size, size, requires_grad=True)
    out = d(x, y)
    i, j = out.shape[-2] // 2, out.shape[-1] // 2
    out[0, 0, i, j].backward()
    g = x.grad.abs()[0].sum(0) + y.grad.abs()[0].sum(0)
    rows = torch.nonzero(g.sum(1)).flatten()
    cols = torch.nonzero(g.sum(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("n_layers,field", [(1, 16), (3, 70)])
def test_patchgan_receptive_field(n_layers, field):
    torch.manual_seed(0)
    # norm="none": instance norm's image-wide statistics would couple every pixel
    d = PatchGAN(1, 1, n_layers=n_layers, base_channels=8, norm="none")
    assert receptive_field(n_layers) == d.receptive_field == field
    assert measured_receptive_field(d, 128) == (field, field)


def test_patchgan_layout_and_output_shapes():
    d16 = PatchGAN()
    assert d16.hidden_channels == [64, 128]
    convs = [m for m in d16.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [(2, 64, 2), (64, 128, 1), (128, 1, 1)]
    assert isinstance(d16.hidden[0][1], nn.Identity)  # no norm on the first layer
    assert isinstance(d16.hidden[1][1], nn.InstanceNorm2d)
    d70 = PatchGAN(n_layers=3)
    assert d70.hidden_channels == [64, 128, 256, 512]
    assert n_params(d16) == 135_361
    assert n_params(d70) == 2_763_713
    x = torch.zeros(1, 1, 256, 256)
    assert d16(x, x).shape == (1, 1, 126, 126)
    assert d70(x, x).shape == (1, 1, 30, 30)
    with pytest.raises(ConfigError, match="n_layers"):
        PatchGAN(n_layers=0)


def test_patchgan_spectral_norm_on_every_layer():
    torch.manual_seed(0)
    d = PatchGAN(1, 1, n_layers=1, base_channels=8)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(parametrize.is_parametrized(c, "weight") for c in convs)
    d.train()
    x = torch.randn(2, 1, 32, 32)
    for _ in range(30):  # power iterations run on training forwards
        d(x, x)
    for c in convs:
        sigma = torch.linalg.matrix_norm(c.weight.detach().reshape(c.out_channels, -1), ord=2)
        assert abs(float(sigma) - 1.0) < 0.02
    plain_last = PatchGAN(1, 1, base_channels=8, spectral_norm_last=False)
    assert not parametrize.is_parametrized(plain_last.out, "weight")
    assert parametrize.is_parametrized(plain_last.hidden[0][0], "weight")
    none = PatchGAN(1, 1, base_channels=8, spectral_norm=False)
    assert not any(parametrize.is_parametrized(m) for m in none.modules() if isinstance(m, nn.Conv2d))


def test_patchgan_features_include_raw_input():
    torch.manual_seed(0)
    d = PatchGAN(image_channels=1, source_channels=2, n_layers=1, base_channels=8)
    img, src = torch.randn(2, 1, 32, 32), torch.randn(2, 2, 32, 32)
    logits, feats = d(img, src, return_features=True)
    assert len(feats) == 3  # layer 0 (input) + 2 hidden layers
    assert torch.equal(feats[0], torch.cat([src, img], 1))  # concat(source, image)
    assert [f.shape[1] for f in feats] == [3, 8, 16]
    d.eval()
    logits = d(img, src)
    p = d.probability(img, src)
    assert torch.allclose(p, torch.sigmoid(logits)) and bool(((p > 0) & (p < 1)).all())
    _, f70 = PatchGAN(1, 1, n_layers=3, base_channels=8)(img, img, return_features=True)
    assert len(f70) == 5
    with pytest.raises(ValueError, match="source"):
        d(img)
    unconditional = PatchGAN(image_channels=1, source_channels=0, base_channels=8)
    assert unconditional(img).shape == (2, 1, 14, 14)


# ------------------------------------------------------------------------------------ VGG-19

TORCHVISION_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
CONV_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def torchvision_layout_state_dict(seed: int = 0, classifier: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision vgg19's keys and shapes (features + classifier)."""
    g = torch.Generator().manual_seed(seed)
    sd, cin = {}, 3
    for idx, cout in zip(TORCHVISION_CONV_INDICES, CONV_WIDTHS):
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.05
        cin = cout
    if classifier:  # small stand-ins: the loader ignores classifier.* whatever their shapes
        sd["classifier.0.weight"] = torch.randn(8, 16, generator=g)
        sd["classifier.0.bias"] = torch.randn(8, generator=g)
        sd["classifier.6.weight"] = torch.randn(10, 8, generator=g)
    return sd


def test_vgg19_state_dict_is_torchvision_layout():
    m = VGG19()
    sd = m.state_dict()
    assert list(sd) == [f"features.{i}.{k}" for i in TORCHVISION_CONV_INDICES for k in ("weight", "bias")]
    ref = torchvision_layout_state_dict(classifier=False)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert n_params(m) == 20_024_384  # torchvision vgg19().features
    assert [LAYER_INDEX[n] for n in MEDGAN_VGG_LAYERS] == [1, 6, 11, 20, 29]
    m.load_state_dict(ref, strict=True)


def test_vgg19_features_and_preprocessing():
    torch.manual_seed(0)
    m = VGG19()
    x = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    feats = m(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8),
                                               (2, 512, 4, 4), (2, 512, 2, 2)]
    assert all(bool((f >= 0).all()) for f in feats)  # post-ReLU
    # frozen parameters, gradient still reaches the image
    assert not any(p.requires_grad for p in m.parameters())
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # [-1, 1] → [0, 1] → 3 channels → ImageNet mean/std
    p = m.preprocess(torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(p[0, :, 0, 0], (0 - mean) / std)
    assert torch.allclose(p[0, :, 0, 1], (1 - mean) / std)
    m.train()
    assert not m.training
    # the paper's block weights (Sec. 2.5): style first+last, content all but the deepest
    assert MEDGAN_STYLE_WEIGHTS == (1, 0, 0, 0, 1) and MEDGAN_CONTENT_WEIGHTS == (1, 1, 1, 1, 0)
    with pytest.raises(ConfigError, match="unknown"):
        VGG19(layers=("relu6_1",))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_vgg19_weights_roundtrip(tmp_path, suffix):
    sd = torchvision_layout_state_dict(seed=3)
    path = tmp_path / f"vgg19{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    m = load_vgg19_weights(path)
    loaded = m.state_dict()
    assert set(loaded) == {k for k in sd if k.startswith("features.")}
    assert all(torch.equal(loaded[k], sd[k]) for k in loaded)
    assert not any(p.requires_grad for p in m.parameters())


def test_require_vgg_weights_errors(tmp_path):
    for missing in (None, ""):
        with pytest.raises(ConfigError, match=r"--set params\.vgg19_weights=PATH") as e:
            require_vgg_weights(missing, needed_by="style/content losses")
        assert "style/content losses" in str(e.value) and "safetensors" in str(e.value)
    with pytest.raises(ConfigError, match="not found") as e:
        require_vgg_weights(tmp_path / "nope.pth")
    assert "nope.pth" in str(e.value) and "params.vgg19_weights=PATH" in str(e.value)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="unsupported file type"):
        require_vgg_weights(tmp_path / "w.bin")
    ok = tmp_path / "w.pth"
    ok.write_bytes(b"x")
    assert require_vgg_weights(ok) == ok
    with pytest.raises(ConfigError, match="not found"):
        load_vgg19_weights(tmp_path / "nope.safetensors")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_vgg19_weights_bad_files(tmp_path):
    # corrupt / truncated
    for name in ("corrupt.pth", "corrupt.safetensors"):
        (tmp_path / name).write_bytes(b"\x00garbage" * 10)
        with pytest.raises(ConfigError, match="cannot read") as e:
            load_vgg19_weights(tmp_path / name)
        assert name in str(e.value)
    good = tmp_path / "good.pth"
    torch.save(torchvision_layout_state_dict(), good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ConfigError, match="cannot read"):
        load_vgg19_weights(trunc)
    # an unrestricted pickle (arbitrary object) is refused by weights_only=True
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"features.0.weight": pickle.PickleError("x")}))
    with pytest.raises(ConfigError, match="evil.pth"):
        load_vgg19_weights(evil)
    # wrong keys: VGG-16 layout (13 convs) / not a state dict
    sd = torchvision_layout_state_dict()
    del sd["features.34.weight"], sd["features.34.bias"]
    sd["features.99.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "keys.pth")
    with pytest.raises(ConfigError, match=r"missing keys features\.34\.bias, features\.34\.weight") as e:
        load_vgg19_weights(tmp_path / "keys.pth")
    assert "unexpected keys features.99.weight" in str(e.value)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="not a state dict"):
        load_vgg19_weights(tmp_path / "list.pth")
    # wrong shape
    sd = torchvision_layout_state_dict()
    sd["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ConfigError, match=r"features\.0\.weight has shape \(64, 1, 3, 3\), expected \(64, 3, 3, 3\)"):
        load_vgg19_weights(tmp_path / "shape.pth")
