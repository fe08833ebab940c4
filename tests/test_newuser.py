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
        build_config({"data": {"normalization": {"t2w": {"lower": 60, "upper": 40}}}})
