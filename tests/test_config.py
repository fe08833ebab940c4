"""medsyn.config: YAML + ``--set`` overrides into typed dataclasses, with errors naming the key."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from medsyn.config import (
    DataConfig,
    NormConfig,
    RunConfig,
    build_config,
    config_hash,
    load_config,
    parse_override,
    to_dict,
)
from medsyn.errors import ConfigError
from medsyn.methods import METHODS


def _yaml(tmp_path, data, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_defaults_are_nie_on_the_sample():
    cfg = load_config(None)
    assert cfg.method == "nie-dual-attention"
    assert cfg.data.root == "sample" and cfg.data.source == ["t1n"] and cfg.data.target == "t2w"
    assert cfg.data.context_slices == 5 and cfg.data.patch_size == [144, 144]
    assert cfg.params["attention"] is True and cfg.params["base_filters"] == 64  # resolved method params


def test_yaml_load_typed_sections_and_variant_defaults(tmp_path):
    p = _yaml(tmp_path, {
        "method": "nie-unet",
        "params": {"base_filters": 16},
        "data": {"source": ["t1n", "t2f"], "target": "t2w", "patch_size": [64, 96],
                 "normalization": {"t2w": {"kind": "zscore", "clip": 4}}},
        "train": {"batch_size": 4, "minutes": 2},
    })
    cfg = load_config(p)
    assert isinstance(cfg, RunConfig) and isinstance(cfg.data, DataConfig)
    assert cfg.method == "nie-unet"
    assert cfg.data.source == ["t1n", "t2f"] and cfg.data.patch_size == [64, 96]
    assert cfg.data.normalization["t2w"] == NormConfig(kind="zscore", clip=4.0)
    assert cfg.train.batch_size == 4
    assert cfg.train.minutes == 2.0 and isinstance(cfg.train.minutes, float)
    # the variant's own defaults (UNet baseline: no discriminators) under the user's params
    assert cfg.params["base_filters"] == 16
    assert cfg.params["use_d1"] is False and cfg.params["use_d2"] is False and cfg.params["attention"] is False
    assert cfg.train.epochs == 20  # untouched keys keep their defaults


def test_set_overrides_are_yaml_typed_and_win_over_the_file(tmp_path):
    p = _yaml(tmp_path, {"train": {"batch_size": 4}, "data": {"label": "seg"}})
    cfg = load_config(p, [
        "train.batch_size=2",
        "train.amp=true",
        "train.max_steps=7",
        "train.minutes=0.5",
        "data.patch_size=[32, 48]",
        "data.source=[t1n, t1c]",
        "data.label=null",
        "data.slice_axis=coronal",
        "data.normalization.ct.kind=window",
        "data.normalization.ct.low=-1000",
        "params.beta=3",
        "params.adam_betas=[0.5, 0.9]",
    ])
    assert cfg.train.batch_size == 2
    assert cfg.train.amp is True
    assert cfg.train.max_steps == 7
    assert cfg.train.minutes == 0.5
    assert cfg.data.patch_size == [32, 48]
    assert cfg.data.source == ["t1n", "t1c"]
    assert cfg.data.label is None
    assert cfg.data.slice_axis == "coronal"
    assert cfg.data.normalization["ct"] == NormConfig(kind="window", low=-1000.0)
    assert cfg.params["beta"] == 3.0 and isinstance(cfg.params["beta"], float)
    assert cfg.params["adam_betas"] == [0.5, 0.9]


def test_parse_override():
    assert parse_override("train.batch_size=4") == (["train", "batch_size"], 4)
    assert parse_override("data.root=/data/a=b") == (["data", "root"], "/data/a=b")
    assert parse_override("data.manifest=") == (["data", "manifest"], "")
    for bad in ("train.batch_size", "=4"):
        with pytest.raises(ConfigError, match="--set"):
            parse_override(bad)


@pytest.mark.parametrize("override, key, closest", [
    ("train.batch_sise=4", "train.batch_sise", "batch_size"),
    ("trian.batch_size=4", "trian", "train"),
    ("data.patchsize=[32,32]", "data.patchsize", "patch_size"),
    ("inference.overlapp=0.25", "inference.overlapp", "overlap"),
    ("data.normalization.ct.kindd=window", "data.normalization.ct.kindd", "kind"),
])
def test_unknown_key_names_key_and_closest(override, key, closest):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert repr(key) in msg
    assert f"did you mean {closest!r}" in msg


def test_unknown_key_in_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"'data\.sorce'.*'source'"):
        load_config(_yaml(tmp_path, {"data": {"sorce": ["t1n"]}}))


@pytest.mark.parametrize("override, key, expected", [
    ("train.batch_size=four", "train.batch_size", "integer"),
    ("train.batch_size=2.5", "train.batch_size", "integer"),
    ("train.batch_size=true", "train.batch_size", "integer"),
    ("train.amp=maybe", "train.amp", "true or false"),
    ("train.minutes=soon", "train.minutes", "float | null"),
    ("data.patch_size=32", "data.patch_size", "list"),
    ("data.patch_size=[32, big]", "data.patch_size[1]", "integer"),
    ("data.target=[t2w]", "data.target", "string"),
    ("data.manifest=3", "data.manifest", "str | null"),
    ("data=3", "data", "mapping"),
    ("params.depth=deep", "params.depth", "integer"),
])
def test_wrong_type_names_key_and_expected_type(override, key, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert repr(key) in str(e.value)
    assert expected in str(e.value)


@pytest.mark.parametrize("override, key, allowed, close", [
    ("data.slice_axis=axal", "data.slice_axis", ["'axial'", "'coronal'", "'sagittal'"], "axial"),
    ("inference.blend=gauss", "inference.blend", ["'gaussian'", "'uniform'"], "gaussian"),
    ("data.normalization.t1n.kind=z-score", "data.normalization.t1n.kind", ["'zscore'", "'percentile'", "'window'"], "zscore"),
    ("params.generator=resnet", "params.generator", ["'unet'", "'fcn'"], None),
])
def test_bad_literal_lists_allowed_values(override, key, allowed, close):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert repr(key) in msg
    for a in allowed:
        assert a in msg
    if close:
        assert f"did you mean {close!r}" in msg


def test_unknown_method_suggests_closest():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["method=nie-dual-atention"])
    msg = str(e.value)
    assert "method" in msg and "'nie-dual-atention'" in msg
    assert "did you mean 'nie-dual-attention'" in msg
    for name in METHODS.names():  # and lists the known ones
        assert name in msg


@pytest.mark.parametrize("override, match", [
    ("params.base_filter=8", r"'params\.base_filter'.*did you mean 'base_filters'"),
    ("params.lamda1=0.1", r"'params\.lamda1'.*did you mean 'lambda1'"),
    ("params.p=3", r"'params\.p'.*allowed values: 1, 2"),
    ("params.beta=-1", r"'params\.beta'"),
    ("params.adam_betas=[0.5]", r"'params\.adam_betas'"),
])
def test_method_params_are_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_method_params_cross_checks():
    with pytest.raises(ConfigError, match="attention"):
        load_config(None, ["params.use_d2=false"])  # attention needs D2
    cfg = load_config(None, ["params.use_d2=false", "params.attention=false"])
    assert cfg.params["use_d2"] is False


@pytest.mark.parametrize("override, key", [
    ("data.context_slices=4", "data.context_slices"),
    ("data.context_slices=0", "data.context_slices"),
    ("data.patch_size=[4, 4]", "data.patch_size"),
    ("data.patch_size=[32, 32, 32]", "data.patch_size"),
    ("data.label_fraction=1.5", "data.label_fraction"),
    ("train.batch_size=0", "train.batch_size"),
    ("inference.overlap=1.0", "inference.overlap"),
    ("data.source=[]", "data.source"),
])
def test_run_level_validation(override, key):
    with pytest.raises(ConfigError, match=repr(key).replace(".", r"\.")):
        load_config(None, [override])


def test_set_into_a_scalar_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'method' is not a section"):
        load_config(_yaml(tmp_path, {"method": "nie-unet"}), ["method.x=1"])
    with pytest.raises(ConfigError, match="'method'.*expected a string"):
        load_config(None, ["method.x=1"])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found") as e:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_yaml(tmp_path, "train: [1, 2\n", "broken.yaml"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_yaml(tmp_path, "- a\n- b\n", "list.yaml"))
    assert load_config(_yaml(tmp_path, "", "empty.yaml")) == load_config(None)


def test_resolved_config_round_trip(tmp_path):
    cfg = load_config(_yaml(tmp_path, {"method": "nie-sgan", "data": {"normalization": {"ct": {"kind": "window"}}}}),
                      ["train.batch_size=3", "data.train=[a, b]", "data.val=[]", "params.adam_betas=[0.5, 0.99]"])
    d = to_dict(cfg)
    again = build_config(d)
    assert again == cfg
    assert to_dict(again) == d
    # as saved in a run folder: through YAML text
    from_text = build_config(yaml.safe_load(yaml.safe_dump(d)))
    assert from_text == cfg and config_hash(from_text) == config_hash(cfg)
    # the hash sees a change
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=4))
    assert config_hash(changed) != config_hash(cfg)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_resolves_and_round_trips(name):
    cfg = load_config(None, [f"method={name}"])
    assert build_config(to_dict(cfg)) == cfg


def test_small_configs_change_only_documented_keys_and_the_demo_follows_them():
    """configs/nie2018_*_small.yaml extend the paper configs; the demo uses the same small-data
    settings (a smaller generator aside), so the two cannot drift apart."""
    from medsyn.cli.demo import demo_config

    paper, small = load_config("configs/nie2018_brats_t1_t2.yaml"), load_config("configs/nie2018_brats_t1_t2_small.yaml")
    assert small.method == paper.method == "nie-dual-attention"
    assert load_config("configs/nie2018_unet_small.yaml").method == "nie-unet"
    changed = {k for k in set(paper.params) | set(small.params) if paper.params.get(k) != small.params.get(k)}
    assert changed == {"base_filters", "lr_g", "loss_region", "warmup_steps"}
    demo = build_config(demo_config(1.0, "cpu", 1))
    assert {k: v for k, v in demo.params.items() if k != "base_filters"} == \
        {k: v for k, v in small.params.items() if k != "base_filters"}
    assert demo.data.patch_size == small.data.patch_size
    assert demo.data.patches_per_subject == small.data.patches_per_subject
    assert (demo.data.flip, demo.train.lr_schedule, demo.train.batch_size) == \
        (small.data.flip, small.train.lr_schedule, small.train.batch_size) == ("left-right", "cosine", 8)
    assert {m: n.kind for m, n in small.data.normalization.items()} == {"t1n": "zscore", "t2w": "zscore"}
    assert {m: n.kind for m, n in demo.data.normalization.items()} == {"t1n": "zscore", "t2w": "zscore"}
    assert {m: n.kind for m, n in paper.data.normalization.items()} == {"t1n": "percentile", "t2w": "percentile"}


def test_lr_schedule_and_flip_keys_validate_and_keep_old_run_hashes():
    """train.lr_schedule / data.flip: allowed values named; 'left-right' refused for sagittal slices;
    at their defaults they are left out of the config hash, so run and cross-validation folders
    written before these keys existed keep their hash."""
    import hashlib
    import json

    with pytest.raises(ConfigError, match="train.lr_schedule.*'method', 'cosine'"):
        load_config(None, ["train.lr_schedule=linear"])
    with pytest.raises(ConfigError, match="data.flip.*'none', 'left-right', 'in-plane'"):
        load_config(None, ["data.flip=yes"])
    with pytest.raises(ConfigError, match="data.flip.*sagittal"):
        load_config(None, ["data.flip=left-right", "data.slice_axis=sagittal"])
    assert load_config(None, ["data.flip=in-plane", "data.slice_axis=sagittal"]).data.flip == "in-plane"
    cfg = load_config("configs/nie2018_brats_t1_t2.yaml")
    old = to_dict(cfg)  # as medsyn wrote it before the two keys
    del old["train"]["lr_schedule"], old["data"]["flip"]
    assert config_hash(cfg) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert build_config(old) == cfg  # an old config.yaml resolves to the defaults
    for change in ("train.lr_schedule=cosine", "data.flip=left-right"):
        assert config_hash(load_config("configs/nie2018_brats_t1_t2.yaml", [change])) != config_hash(cfg)


def test_small_configs_anneal_over_the_budget_and_flip_while_the_paper_configs_do_not():
    for name in ("unet", "fcn", "sgan", "brats_t1_t2"):
        small = load_config(f"configs/nie2018_{name}_small.yaml")
        assert (small.train.lr_schedule, small.data.flip) == ("cosine", "left-right"), name
        paper = load_config(f"configs/nie2018_{name}.yaml")
        assert (paper.train.lr_schedule, paper.data.flip) == ("method", "none"), name
        assert small.method == paper.method, name
        assert {k: v for k, v in small.params.items() if k not in ("base_filters", "lr_g", "loss_region", "warmup_steps")} \
            == {k: v for k, v in paper.params.items() if k not in ("base_filters", "lr_g", "loss_region", "warmup_steps")}
