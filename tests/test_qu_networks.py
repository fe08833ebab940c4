"""Qu et al. networks: output shapes, Sec. 3.1 initialisation, input dropout, segmenter variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medsyn.errors import ConfigError
from medsyn.models.qu import (
    CodeDiscriminator,
    FusionEncoder,
    MaskGenerator,
    ModalityDecoder,
    ModalityDiscriminator,
    ModalityEncoder,
    MultimodalGenerator,
    OneSegmenter,
    PerModalitySegmenter,
    QuDecoder,
    QuEncoder,
    SharedEncoderSegmenter,
    StructureDecoder,
    StructureDiscriminator,
    StructureEncoder,
    build_lesion_segmenter,
    init_discriminator,
    init_mean_filter,
    modality_code,
    reparameterize,
)

B, H, W = 2, 32, 24  # non-square on purpose
BASE, CODE, N_MOD, N_CLS = 4, 8, 4, 5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


# --------------------------------------------------------------------------- shapes


def test_structure_stage_shapes():
    f = torch.rand(B, 1, H, W)
    mean, logvar = StructureEncoder(code_channels=3, base_channels=BASE)(f)
    assert mean.shape == logvar.shape == (B, 3, H // 4, W // 4)
    code = reparameterize(mean, logvar)
    f_r = StructureDecoder(code_channels=3, base_channels=BASE)(code)
    assert f_r.shape == (B, 1, H, W) and f_r.min() >= 0 and f_r.max() <= 1
    assert StructureDiscriminator(BASE, n_layers=3)(f).shape == (B, 1, H // 8, W // 8)
    assert CodeDiscriminator(3, BASE)(code).shape == (B, 1, H // 4, W // 4)
    mask = MaskGenerator(CODE, BASE)(f)
    assert mask.shape == (B, 1, H, W) and mask.min() >= 0 and mask.max() <= 1


def test_reparameterize_formula():
    mean = torch.tensor([[[[1.0, -2.0]]]])
    logvar = torch.tensor([[[[0.0, 2.0 * torch.log(torch.tensor(3.0))]]]])
    eps = torch.tensor([[[[0.5, 1.0]]]])
    torch.testing.assert_close(reparameterize(mean, logvar, eps), torch.tensor([[[[1.5, 1.0]]]]))
    z = reparameterize(torch.zeros(4000), torch.zeros(4000))
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1


def test_modality_stage_shapes_and_condition():
    x = torch.rand(B, 1, H, W)
    code = ModalityEncoder(CODE, BASE)(x)
    assert code.shape == (B, CODE, H // 4, W // 4)
    dec = ModalityDecoder(N_MOD, CODE, BASE).eval()
    assert dec(code, 2).shape == (B, 1, H, W)
    assert dec(code, torch.tensor([0, 3])).shape == (B, 1, H, W)
    cond = modality_code(torch.tensor([0, 3]), N_MOD, code)
    assert cond.shape == (B, N_MOD, H // 4, W // 4)
    assert cond[0, :, 0, 0].tolist() == [1, 0, 0, 0] and cond[1, :, -1, -1].tolist() == [0, 0, 0, 1]
    # Under the mean-filter init every input channel gets the same weight and the one-hot
    # channels always sum to 1, so the condition is (up to the 1e-6 jitter) invisible at init;
    # once the weights differ, the condition changes the output.
    torch.testing.assert_close(dec(code, 0), dec(code, 1), rtol=0, atol=1e-4)
    for conv in convs(dec):
        nn.init.normal_(conv.weight, std=0.3)
    assert not torch.allclose(dec(code, 0), dec(code, 1), atol=1e-3)
    d, c = ModalityDiscriminator(BASE, n_layers=3)(x)
    assert d.shape == c.shape == (B, 1, H // 8, W // 8)
    _, c4 = ModalityDiscriminator(BASE, n_layers=3, class_channels=N_MOD)(x)
    assert c4.shape == (B, N_MOD, H // 8, W // 8)
    with pytest.raises(ValueError, match="modality"):
        dec(code, N_MOD)


def test_multimodal_generator_shares_the_decoder_and_returns_every_modality():
    dec = ModalityDecoder(N_MOD, CODE, BASE)
    gen = MultimodalGenerator(FusionEncoder(N_CLS, CODE, BASE), dec)
    code_g, xs = gen(torch.rand(B, N_CLS, H, W))
    assert code_g.shape == (B, CODE, H // 4, W // 4)
    assert len(xs) == N_MOD and all(x.shape == (B, 1, H, W) for x in xs)
    assert gen.decoder is dec
    sum(x.mean() for x in xs).backward()
    assert all(p.grad is not None for p in gen.encoder.parameters())


@pytest.mark.parametrize(
    "variant, cls, n_encoders, n_decoders",
    [
        ("1SEG", OneSegmenter, 1, 1),
        ("1ECL+4DCL", SharedEncoderSegmenter, 1, N_MOD),
        ("4SEG", PerModalitySegmenter, N_MOD, N_MOD),
    ],
)
def test_lesion_segmenter_variants(variant, cls, n_encoders, n_decoders):
    seg = build_lesion_segmenter(variant, N_MOD, N_CLS, code_channels=CODE, base_channels=BASE).eval()
    assert isinstance(seg, cls)
    x = torch.rand(B, 1, H, W)
    probs = [seg(x, i) for i in range(N_MOD)]
    for p in probs:
        assert p.shape == (B, N_CLS, H, W)
        torch.testing.assert_close(p.sum(dim=1), torch.ones(B, H, W))  # softmax over classes
    assert sum(isinstance(m, QuEncoder) for m in seg.modules()) == n_encoders
    assert sum(isinstance(m, QuDecoder) for m in seg.modules()) == n_decoders
    same = torch.allclose(probs[0], probs[1])
    assert same == (variant == "1SEG")  # only 1SEG uses the same network for every modality


def test_segmenter_parameter_counts_scale_with_sharing():
    def n_params(variant: str) -> int:
        seg = build_lesion_segmenter(variant, N_MOD, N_CLS, code_channels=CODE, base_channels=BASE)
        return sum(p.numel() for p in seg.parameters())

    counts = {v: n_params(v) for v in ("1SEG", "1ECL+4DCL", "4SEG")}
    assert counts["4SEG"] == N_MOD * counts["1SEG"]
    assert counts["1SEG"] < counts["1ECL+4DCL"] < counts["4SEG"]


def test_unknown_variant_and_bad_inputs_fail_loudly():
    with pytest.raises(ConfigError, match="Known: 1ECL\\+4DCL, 1SEG, 4SEG"):
        build_lesion_segmenter("2SEG", N_MOD, N_CLS)
    with pytest.raises(ValueError, match="divisible by 4"):
        ModalityEncoder(CODE, BASE)(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="modality"):
        OneSegmenter(N_MOD, N_CLS, CODE, BASE)(torch.rand(1, 1, H, W), N_MOD)


# --------------------------------------------------------------------------- initialisation (Sec. 3.1)


def test_mean_filter_init_exact_values():
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Conv2d(5, 2, 5), nn.Conv2d(2, 4, (3, 1)), nn.Conv2d(4, 4, 3, groups=2))
    for conv in net:
        conv.bias.data.fill_(7.0)
    init_mean_filter(net, std=0.0)
    for conv, fan in zip(net, (3 * 3 * 3, 5 * 5 * 5, 3 * 1 * 2, 3 * 3 * 2)):
        assert torch.all(conv.weight == 1.0 / fan)  # every weight 1 / (k * k * f)
        assert torch.all(conv.bias == 0)


def test_generators_start_as_mean_filters_with_a_tiny_jitter():
    generators = (
        ModalityEncoder(CODE, BASE),
        ModalityDecoder(N_MOD, CODE, BASE),
        StructureEncoder(3, BASE),
        StructureDecoder(3, BASE),
        MaskGenerator(CODE, BASE),
        FusionEncoder(N_CLS, CODE, BASE),
        build_lesion_segmenter("4SEG", N_MOD, N_CLS, code_channels=CODE, base_channels=BASE),
    )
    for net in generators:
        for conv in convs(net):
            fan = conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels
            torch.testing.assert_close(conv.weight, torch.full_like(conv.weight, 1.0 / fan), rtol=0, atol=1e-5)
            assert torch.all(conv.bias == 0)
    # the jitter breaks the symmetry between output channels (identical filters stay identical)
    w = convs(ModalityEncoder(CODE, BASE))[1].weight
    assert not torch.equal(w[0], w[1])


def test_mean_filter_maps_a_constant_image_to_the_same_constant():
    conv = nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect")
    init_mean_filter(conv, std=0.0)
    out = conv(torch.full((1, 3, 9, 7), 2.5))
    torch.testing.assert_close(out, torch.full((1, 6, 9, 7), 2.5))  # border included
    strided = nn.Conv2d(1, 2, 3, stride=2, padding=1, padding_mode="reflect")
    init_mean_filter(strided, std=0.0)
    torch.testing.assert_close(strided(torch.full((1, 1, 8, 8), -1.0)), torch.full((1, 2, 4, 4), -1.0))


def test_whole_generators_map_constant_inputs_to_constant_outputs():
    dec = ModalityDecoder(N_MOD, CODE, BASE).eval()
    gen = MultimodalGenerator(FusionEncoder(N_CLS, CODE, BASE), dec).eval()
    _, xs = gen(torch.full((1, N_CLS, H, W), 0.3))
    for x in xs:
        assert torch.allclose(x, x.flatten()[0].expand_as(x), atol=1e-6)
    mask = MaskGenerator(CODE, BASE).eval()(torch.full((1, 1, H, W), 1.0))
    assert torch.allclose(mask, mask.flatten()[0].expand_as(mask), atol=1e-6)


def test_discriminator_init_statistics():
    conv = nn.Conv2d(64, 64, 4)  # 65 536 weights
    conv.bias.data.fill_(1.0)
    init_discriminator(conv)
    assert abs(conv.weight.mean().item()) < 0.005
    assert conv.weight.std().item() == pytest.approx(0.2, rel=0.02)  # 0.2 is the std (Sec. 3.1)
    assert torch.all(conv.bias == 0)
    init_discriminator(conv, std=0.02)  # the authors' code value
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.02)
    for net in (ModalityDiscriminator(16), StructureDiscriminator(16), CodeDiscriminator(8, 16)):
        w = torch.cat([c.weight.flatten() for c in convs(net)])
        assert w.std().item() == pytest.approx(0.2, rel=0.05)
        assert all(torch.all(c.bias == 0) for c in convs(net))


def test_every_network_has_dropout_0p1_on_its_input():
    nets = [
        StructureEncoder(3, BASE),
        ModalityEncoder(CODE, BASE),
        FusionEncoder(N_CLS, CODE, BASE),
        StructureDecoder(3, BASE),
        StructureDiscriminator(BASE),
        CodeDiscriminator(3, BASE),
        ModalityDiscriminator(BASE),
        MaskGenerator(CODE, BASE),
        build_lesion_segmenter("1SEG", N_MOD, N_CLS, code_channels=CODE, base_channels=BASE),
    ]
    containers = (nn.Sequential, nn.ModuleList)
    for net in nets:
        # the first leaf layer in registration (= forward) order
        first = next(m for m in net.modules() if not list(m.children()) and not isinstance(m, containers))
        assert isinstance(first, nn.Dropout) and first.p == 0.1, type(net).__name__
    dec = ModalityDecoder(N_MOD, CODE, BASE)
    assert dec.dropout.p == 0.1
    assert all(m.p == 0.0 for m in dec.decoder.modules() if isinstance(m, nn.Dropout))  # never on the condition
    enc = ModalityEncoder(CODE, BASE, input_dropout=0.0).train()
    x = torch.rand(1, 1, H, W)
    torch.testing.assert_close(enc(x), enc(x))


def test_one_lesion_segmenter_per_modality_by_default_multichannel_as_option():
    from medsyn.methods.qu2023 import PerModalitySegmenter, QuConfig, SliceSegmenter, build_segmenter, \
        segment_views, segmentation_loss

    torch.manual_seed(0)
    kw = dict(modalities=["t1n", "t1c", "t2w"], n_classes=3, seg_channels=[4, 8], seg_res_units=0, input_dropout=0.0)
    per = build_segmenter(QuConfig(**kw))  # Sec. 2.9: one network per modality
    multi = build_segmenter(QuConfig(**kw, segmenter_input="multichannel"))
    assert isinstance(per, PerModalitySegmenter) and len(per.nets) == 3 and isinstance(multi, SliceSegmenter)
    x = torch.rand(2, 3, 16, 16)
    p = per(x)
    assert p.shape == (2, 3, 3, 16, 16) and torch.allclose(p.sum(2), torch.ones(2, 3, 16, 16))
    x2 = x.clone()
    x2[:, 1] = torch.rand(2, 16, 16)  # change one modality: only its own view changes
    p2 = per(x2)
    assert torch.equal(p[:, 0], p2[:, 0]) and torch.equal(p[:, 2], p2[:, 2]) and not torch.equal(p[:, 1], p2[:, 1])
    assert segment_views(multi, x).shape == (2, 1, 3, 16, 16) and segment_views(per, x).shape == (2, 3, 3, 16, 16)
    label = torch.randint(0, 3, (2, 1, 16, 16))
    cfg = QuConfig(**kw)
    total = segmentation_loss(p, label, cfg)  # Σ_i over the modalities' losses
    assert torch.allclose(total, sum(segmentation_loss(p[:, i], label, cfg) for i in range(3)))


def test_modality_decoder_output_depends_on_the_modality_for_a_positive_code():
    """DC(code, i) must differ between modalities once the modality weights differ (as after
    training) — here for a code whose first-block pre-activations are all positive, as the
    trained sample run's real codes are (encoder outputs mostly ≥ 0, mean-filter weights > 0)."""
    torch.manual_seed(0)
    dec = ModalityDecoder(N_MOD, CODE, BASE, input_dropout=0.0).eval()
    first = dec.decoder.net[1][0]  # the first conv: [code | one-hot] -> BASE·2^n_up channels
    with torch.no_grad():
        first.weight[:, CODE:] += 0.05 * torch.randn_like(first.weight[:, CODE:])  # distinct per-modality weights
        for name, p in dec.named_parameters():  # the conditional norms' per-modality scale and shift, if any
            if name.endswith(("modality_scale", "modality_shift")):
                p += 0.05 * torch.randn_like(p)
        code = 1.0 + torch.rand(1, CODE, H // 4, W // 4)
        pre = first(torch.cat([code, torch.zeros(1, N_MOD, H // 4, W // 4)], 1))
        assert (pre > 0).all()  # the regime the test is about
        outs = [dec(code, i) for i in range(N_MOD)]
    assert max(float((o - outs[0]).abs().max()) for o in outs[1:]) > 1e-3


def _positive_code_decoder():
    torch.manual_seed(0)
    dec = ModalityDecoder(N_MOD, CODE, BASE, input_dropout=0.0)
    code = 1.0 + torch.rand(1, CODE, H // 4, W // 4)  # first-block pre-activations all positive
    return dec, code


def test_modality_decoder_training_separates_the_modalities_for_a_positive_code():
    """From the initialisation, one gradient step towards a different target per modality makes
    DC(code, i) differ: the gradient reaches modality-specific parameters that no instance norm
    cancels (with the one-hot concatenation alone the outputs stay equal to ~1e-6)."""
    dec, code = _positive_code_decoder()
    targets = [torch.full((1, 1, H, W), v) for v in (0.2, 0.4, 0.6, 0.8)]
    opt = torch.optim.SGD(dec.parameters(), lr=1.0)
    sum(((dec(code, i) - t) ** 2).mean() for i, t in enumerate(targets)).backward()
    opt.step()
    with torch.no_grad():
        outs = [dec.eval()(code, i) for i in range(N_MOD)]
    assert min(float((outs[i] - outs[j]).abs().mean()) for i in range(N_MOD) for j in range(i)) > 1e-3


def test_modality_decoder_starts_as_the_concatenation_only_decoder_and_loads_its_weights():
    """The conditional norms start at identity: same seed, same outputs as the plain decoder
    (QuDecoder on [code | one-hot], no first norm) that DC was before; its state dict (no
    per-modality parameters) loads strictly, with the per-modality parameters at identity."""
    torch.manual_seed(0)
    dec = ModalityDecoder(N_MOD, CODE, BASE).eval()
    torch.manual_seed(0)
    nn.Dropout(0.1)  # ModalityDecoder's input dropout (draws nothing)
    plain = QuDecoder(CODE + N_MOD, 1, BASE, 2, input_dropout=0.0, first_norm=False).eval()
    code = torch.randn(B, CODE, H // 4, W // 4)
    for i in range(N_MOD):
        ref = plain(torch.cat([code, modality_code(i, N_MOD, code)], 1))
        torch.testing.assert_close(dec(code, i), ref, rtol=0, atol=0)
    old = {f"decoder.{k}": v for k, v in plain.state_dict().items()}
    assert not any("modality_" in k for k in old)
    fresh = ModalityDecoder(N_MOD, CODE, BASE).eval()
    fresh.load_state_dict(old)  # strict
    torch.testing.assert_close(fresh(code, torch.tensor([1, 3])), dec(code, torch.tensor([1, 3])), rtol=0, atol=0)
    extra = [k for k in fresh.state_dict() if k not in old]
    assert extra and all(k.endswith(("modality_scale", "modality_shift")) for k in extra)
