"""Typed configuration: dataclasses loaded from YAML, overridable with ``--set a.b=c``.

A run's configuration is a :class:`RunConfig`. Its ``method`` section is typed by the method's
own dataclass (looked up in :data:`medsyn.methods.METHODS`), so every paper hyper-parameter has a
named default in one place. Loading validates every key and type and names the offending key
with the allowed values or the closest known key.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from medsyn.errors import ConfigError

# ----------------------------------------------------------------------------------------------
# Sections shared by every method
# ----------------------------------------------------------------------------------------------


@dataclass
class NormConfig:
    """How one modality's intensities are mapped to network range (see data/normalization.py).

    kind: ``zscore`` (z-score inside the mask, then clipped to ±clip and divided by clip so the
    network sees about [-1, 1]), ``percentile`` (clip to [lower, upper] percentiles inside the
    mask, scale to [-1, 1]), ``window`` (fixed window [low, high] in native units, e.g. CT HU
    [-1024, 3000], scaled to [-1, 1]).
    """

    kind: Literal["zscore", "percentile", "window"] = "percentile"
    lower: float = 0.5  # percentile kind: lower percentile
    upper: float = 99.5  # percentile kind: upper percentile
    clip: float = 5.0  # zscore kind: |z| clipped here, then divided by it
    low: float = -1024.0  # window kind: native-unit window (HU for CT)
    high: float = 3000.0

    NUMERIC_BOUNDS: ClassVar[dict[str, Bound]] = {}  # filled below, once Bound exists
    #: the fields each kind reads; the others are ignored by that kind (see :func:`readable_dict`)
    KIND_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {"percentile": ("lower", "upper"), "zscore": ("clip",),
                                                          "window": ("low", "high")}

    def readable(self) -> dict[str, Any]:
        """The kind and the fields it reads. A field of another kind is kept only when it was set
        away from its default, so that reading the dict back gives this object exactly."""
        used = self.KIND_FIELDS.get(self.kind, ())
        defaults = NormConfig()
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                      if f.name != "kind" and (f.name in used or getattr(self, f.name) != getattr(defaults, f.name))}}


@dataclass
class DataConfig:
    """Where the data is and how training samples are drawn.

    root: a dataset folder (subject folders with ``<modality>.nii.gz``), or ``sample`` for the
    bundled sample. manifest: optional CSV (subject, modality, path, split).
    """

    root: str = "sample"
    manifest: str | None = None
    source: list[str] = field(default_factory=lambda: ["t1n"])
    target: str = "t2w"
    mask: str | None = None  # modality name of a mask file (brainmask/bodymask); None → computed
    label: str | None = "seg"  # optional label modality, used for oversampling and region metrics
    # subject-level splits: explicit lists win; otherwise a seeded shuffle with these fractions
    train: list[str] | None = None
    val: list[str] | None = None
    test: list[str] | None = None
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    slice_axis: Literal["axial", "coronal", "sagittal"] = "axial"
    context_slices: int = 5  # k adjacent source slices → 1 target slice (Nie et al. Sec. 2.5)
    patch_size: list[int] = field(default_factory=lambda: [144, 144])
    patches_per_subject: int = 200  # defines an epoch: patches_per_subject × n_train / batch steps
    foreground_fraction: float = 0.9  # share of patch centres drawn inside the mask
    label_fraction: float = 0.0  # share of patch centres drawn inside the label (seg > 0)
    augment: bool = False
    # random flips of each training patch, the same for its source stack, target and mask (drawn
    # from the sample's own generator, so resumed runs and loader workers draw the same flips):
    # "left-right" mirrors the patch across the brain's midline (the canonical RAS grid's first
    # axis; axial or coronal slices), "in-plane" each in-plane axis independently, "none" off
    flip: Literal["none", "left-right", "in-plane"] = "none"
    normalization: dict[str, NormConfig] = field(default_factory=dict)  # per modality
    resample: bool = False  # resample modalities onto the first source's grid if they differ
    # preprocessed cache (docs/scaling.md): None → $MEDSYN_CACHE/preprocessed or ~/.cache/medsyn/preprocessed
    cache_dir: str | None = None
    cache_margin: int = 16  # voxels kept around the foreground's bounding box
    cache_workers: int = 2  # processes building the cache


@dataclass
class TrainConfig:
    """The loop: budget, device, logging and checkpoints (shared by all methods)."""

    seed: int = 0
    batch_size: int = 10
    epochs: int = 20
    max_steps: int | None = None
    minutes: float | None = None
    # learning rates over the run: "method" = the method's own schedule (Nie et al.: step decay
    # every 2 epochs); "cosine" = every optimiser's rate annealed from its configured value to 0
    # over the run's budget (train.minutes when set — whichever of time and steps ends first —,
    # else the steps); its position is saved in checkpoints (training/schedules.py)
    lr_schedule: Literal["method", "cosine"] = "method"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each process uses cuda:LOCAL_RANK)
    amp: bool = False  # bf16 autocast on CUDA; ignored on CPU (docs/scaling.md)
    compile: bool = False  # torch.compile the generator (critics stay eager: gradient penalties need double backward)
    find_unused_parameters: bool = False  # DDP: set when a method leaves some trained parameters without gradient
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    validate: bool = True
    val_metric: str = "psnr"  # metric used to keep the best checkpoint
    val_slices: int = 64  # validation slices, spread over the val subjects' foreground (0: every slice)
    num_workers: int = 0  # loader processes cutting patches ahead (per training process); results do not change


@dataclass
class InferenceConfig:
    """Full-volume sliding-window inference."""

    overlap: float = 0.5
    blend: Literal["gaussian", "uniform"] = "gaussian"
    batch_size: int = 16
    # write the training targets' background value outside the foreground mask (skull-stripped
    # MR: 0). Turn off when the target extends beyond the source's mask (e.g. CT skull vs a
    # skull-stripped MR source).
    mask_background: bool = True
    # which voxels are computed (docs/inference.md); only with mask_background, whose mask it uses:
    # "foreground": tile each slice's box around the source foreground mask, skip the windows and
    #   slices that hold none of it (fastest; inside the mask equal to the full computation on
    #   that tiling); "foreground-grid": skip on the whole slice's grid (inside the mask equal to
    #   "full"); "full": every window of every slice (the whole field of view).
    region: Literal["foreground", "foreground-grid", "full"] = "foreground"
    fold_batchnorm: bool = True  # fold eval-mode BatchNorm into the convolution before it (same values)
    compile: bool = False  # torch.compile (inductor): minutes of compilation first; pays off on many volumes
    amp: bool = False  # bf16 autocast (CUDA, or a CPU with native bf16); outputs differ from fp32 by ~1e-3


@dataclass
class RunConfig:
    method: str = "nie-dual-attention"
    params: dict[str, Any] = field(default_factory=dict)  # typed by the method's config class
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


# ----------------------------------------------------------------------------------------------
# Numeric bounds: one declared range per numeric field, checked by one function
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """The allowed range of a numeric config field (or of every item of a numeric list).

    ``lo``/``hi`` None: unbounded on that side (the value must still be finite).
    ``note`` is appended to the message, e.g. "0 switches it off".
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    def ok(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a number"
        if self.lo is not None and self.hi is not None:
            rng = f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            rng = f"{'>' if self.lo_open else '≥'} {self.lo:g}"
        elif self.hi is not None:
            rng = f"{'<' if self.hi_open else '≤'} {self.hi:g}"
        else:
            rng = "(finite)"
        return f"{kind} {rng}" + (f" ({self.note})" if self.note else "")


POSITIVE = Bound(0, lo_open=True)
NON_NEGATIVE = Bound(0)
AT_LEAST_1 = Bound(1)
UNIT = Bound(0, 1)  # fractions, probabilities, Dice
UNIT_OPEN = Bound(0, 1, hi_open=True)  # dropout, Adam β, overlap
FINITE = Bound()

#: Field name (fnmatch pattern) → allowed range, first match wins. A config dataclass may declare
#: ``NUMERIC_BOUNDS`` (a ClassVar of the same form) for its own fields; those are looked up first.
#: tests/test_newuser.py checks that every numeric field of every config class has a bound.
BOUND_RULES: list[tuple[str, Bound]] = [
    ("lr_decay_every", AT_LEAST_1),
    ("lr_decay_*", Bound(0, 1, lo_open=True, note="the factor the learning rate is multiplied by")),
    ("lr", Bound(0, lo_open=True, note="a positive learning rate")),
    ("lr_*", Bound(0, lo_open=True, note="a positive learning rate")),
    ("lambda*", Bound(0, note="a loss weight; 0 switches the term off")),
    ("*weight*", Bound(0, note="a weight; 0 switches the term off")),
    ("beta1", UNIT_OPEN), ("beta2", UNIT_OPEN), ("adam_betas", UNIT_OPEN),
    ("*dropout", UNIT_OPEN),
    ("*fraction", UNIT), ("*_prob", UNIT), ("min_dice", UNIT),
    ("*seed", NON_NEGATIVE),
    ("log_every", Bound(1, note="log every N steps")),
    ("*_every", Bound(0, note="every N steps; 0 switches it off")),
    ("warmup_steps", NON_NEGATIVE),  # reconstruction-only generator updates first; 0 = the paper's step
    ("minutes", Bound(0, lo_open=True, note="a time budget in minutes; leave it out for no budget")),
    ("max_steps", Bound(1, note="generator updates; leave it out to train train.epochs epochs")),
    ("*epochs", AT_LEAST_1),
    ("patch_size", Bound(8, note="pixels")), ("slice_size", Bound(8, note="pixels")),
    ("overlap", UNIT_OPEN),
    ("num_workers", NON_NEGATIVE), ("*_padding", NON_NEGATIVE), ("*res_units", NON_NEGATIVE),
    ("cache_margin", Bound(0, note="voxels around the foreground")), ("cache_workers", NON_NEGATIVE),
    ("val_slices", Bound(0, note="0: every foreground slice")),
    ("n_classes", Bound(2, note="background + lesion classes")),
    ("p", Bound(1, note="1 = L1, 2 = L2")),
    ("beta", NON_NEGATIVE), ("pan_margin", NON_NEGATIVE),
    ("*clip", POSITIVE), ("*_std", POSITIVE), ("filter_mae", POSITIVE),
    ("batch_size", AT_LEAST_1), ("patches_per_subject", AT_LEAST_1), ("keep_checkpoints", AT_LEAST_1),
    ("context_slices", AT_LEAST_1), ("depth", AT_LEAST_1), ("n_*", AT_LEAST_1), ("*_channels", AT_LEAST_1),
    ("*_filters", AT_LEAST_1), ("*_layers", AT_LEAST_1), ("max_attempts", AT_LEAST_1), ("*_tries", AT_LEAST_1),
    ("fill_value", FINITE),  # a value in network range (BraSyn's zero-filled contrast)
]

NormConfig.NUMERIC_BOUNDS = {"lower": Bound(0, 100, note="a percentile"), "upper": Bound(0, 100, note="a percentile"),
                             "low": FINITE, "high": FINITE}


def _numeric_kind(tp: Any) -> str | None:
    """'int' / 'float' when annotation ``tp`` is a number, a list of numbers, or either or null."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = {_numeric_kind(a) for a in args if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is list:
        return _numeric_kind(args[0]) if args else None
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    return None


def numeric_fields(cls: type) -> dict[str, str]:
    """``{field: 'int' | 'float'}`` for every numeric (or numeric-list) field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: k for f in dataclasses.fields(cls) if (k := _numeric_kind(hints[f.name])) is not None}


def numeric_bound(cls: type, name: str) -> Bound | None:
    """The declared range of field ``name`` of config class ``cls`` (class table first, then BOUND_RULES)."""
    for table in (getattr(cls, "NUMERIC_BOUNDS", {}).items(), BOUND_RULES):
        for pattern, bound in table:
            if fnmatch.fnmatchcase(name, pattern):
                return bound
    return None


def check_bounds(obj: Any, prefix: str = "") -> None:
    """ConfigError naming the key when a numeric field of dataclass ``obj`` is outside its range."""
    for name, kind in numeric_fields(type(obj)).items():
        value = getattr(obj, name)
        if value is None:
            continue
        # a field without a declared range (tests/test_newuser.py flags it) is only required to be finite
        bound = numeric_bound(type(obj), name) or FINITE
        items = value if isinstance(value, list) else [value]
        if not all(bound.ok(v) for v in items):
            key = f"{prefix}.{name}" if prefix else name
            each = "a list of which each item is " if isinstance(value, list) else ""
            raise ConfigError(f"config key {key!r}: got {value!r}, expected {each}{bound.describe(kind == 'int')}")


# ----------------------------------------------------------------------------------------------
# Generic dataclass <-> dict with validation
# ----------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    if tp is type(None):
        return "null"  # what the user writes in YAML / --set, not Python's NoneType
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return the converted value or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key {key!r}: got {value!r}, expected {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"config key {key!r}: got {value!r}, allowed values: {', '.join(map(repr, args))}{hint}"
        )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        _, val_tp = args or (str, Any)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: got {value!r}, expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key {key!r}: got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: got {value!r}, expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: got {value!r}, expected a string")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or '<root>'!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r}{hint} Known keys here: {', '.join(fields)}"
            )
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise ConfigError(f"config section {prefix or '<root>'!r}: {e}") from None
    check_bounds(obj, prefix)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


def to_dict(obj: Any, *, readable: bool = False) -> Any:
    """Dataclass tree → plain dict/list/scalars (JSON/YAML-serialisable).

    ``readable``: for people and for ``config.yaml``, a normalisation lists only the fields its
    kind reads (:meth:`NormConfig.readable`: a percentile recipe without the CT window's
    ``low``/``high``). Reading that back with :func:`build_config` gives the same config, so
    :func:`config_hash` and ``--resume`` (which use the full form) do not change.
    """
    if readable and isinstance(obj, NormConfig):
        return obj.readable()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name), readable=readable) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v, readable=readable) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, readable=readable) for v in obj]
    return obj


def readable_dict(obj: Any) -> Any:
    """:func:`to_dict` with ``readable=True``."""
    return to_dict(obj, readable=True)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.batch_size=4"`` → (["train", "batch_size"], 4). Values are parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.batch_size=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for p in path[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: expected a mapping at the top level")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file, with ``extends: other.yaml`` (relative to this file) merged underneath.

    Baselines and ablations extend the paper config and change only what differs.
    """
    p = Path(path).resolve()
    if p in _seen:
        raise ConfigError(f"config file {str(path)!r}: 'extends' loops back to itself")
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {str(path)!r}: 'extends' must be a file name")
    return deep_merge(read_config_yaml(p.parent / base, _seen + (p,)), data)


def config_dirs() -> list[Path]:
    """Where the paper configs are: the source checkout's ``configs/`` (a clone, ``pip install -e .``),
    then ``<prefix>/share/medsyn/configs`` (a normal install: pyproject's data-files)."""
    import site
    import sys

    here = Path(__file__).resolve()
    dirs = [here.parents[2] / "configs", *(Path(p) / "share" / "medsyn" / "configs" for p in (sys.prefix, site.USER_BASE))]
    return [d for d in dirs if d.is_dir()]


def config_names() -> list[str]:
    return sorted({p.stem for d in config_dirs() for p in d.glob("*.yaml")})


def resolve_config(path: str | Path) -> Path:
    """A YAML path as given, or the name of a bundled config (``nie2018_brats_t1_t2``, with or
    without ``.yaml``); ConfigError listing the bundled names when it is neither."""
    p = Path(path)
    if p.is_file():
        return p
    if p.parent == Path("."):
        for d in config_dirs():
            for cand in (d / p.name, d / f"{p.name}.yaml"):
                if cand.is_file():
                    return cand
    names = config_names()
    close = difflib.get_close_matches(p.stem, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"config {str(path)!r}: not found (no such file, and not the name of a bundled config).{hint} "
                      f"Give a YAML file or one of: {', '.join(names) or '(none found)'} (`medsyn configs` lists them)")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (or defaults when ``path`` is None), apply ``--set`` overrides, validate.
    ``path`` may also name a bundled config (:func:`resolve_config`)."""
    data = read_config_yaml(resolve_config(path)) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return build_config(data)


def build_config(data: dict[str, Any]) -> RunConfig:
    cfg: RunConfig = from_dict(RunConfig, data)
    from medsyn.methods import METHODS  # late import: methods import config

    spec = METHODS.get(cfg.method, key="method")
    # validate the method parameters against the method's dataclass and its variant defaults
    cfg.params = spec.resolved(cfg.params)
    canonicalize_modalities(cfg.data)
    validate_run_config(cfg)
    return cfg


def canonicalize_modalities(d: DataConfig) -> None:
    """BraTS 2021 modality names in ``d`` → the BraTS 2023 ones (``t1ce`` → ``t1c`` …), in place;
    one alias map for configs and discovered files (medsyn.data.layouts.canonical_modality)."""
    from medsyn.data.layouts import canonical_modality

    d.source = [canonical_modality(m) for m in d.source]
    d.target = canonical_modality(d.target)
    d.label = canonical_modality(d.label) if d.label else d.label
    d.mask = canonical_modality(d.mask) if d.mask else d.mask
    d.normalization = {canonical_modality(k): v for k, v in d.normalization.items()}


def validate_run_config(cfg: RunConfig) -> None:
    d = cfg.data
    if not cfg.data.source:
        raise ConfigError("config key 'data.source': give at least one source modality, e.g. [t1n]")
    if d.context_slices < 1 or d.context_slices % 2 == 0:
        raise ConfigError(f"config key 'data.context_slices': got {d.context_slices}, expected an odd number ≥ 1 (5 in Nie et al.)")
    if len(d.patch_size) != 2:
        raise ConfigError(f"config key 'data.patch_size': got {d.patch_size}, expected two sizes ≥ 8, e.g. [144, 144]")
    if d.flip == "left-right" and d.slice_axis == "sagittal":
        raise ConfigError("config key 'data.flip': 'left-right' mirrors across the midline, which sagittal slices do "
                          "not hold (left-right is their slice axis); use 'in-plane', 'none', or axial/coronal slices")


def method_params(cfg: RunConfig) -> Any:
    """The method's typed parameter dataclass for ``cfg``."""
    from medsyn.methods import METHODS

    return METHODS.get(cfg.method, key="method").make_params(cfg.params)


#: keys added after run folders were written, left out of :func:`config_hash` while at their default,
#: so a run or cross-validation folder written before them keeps its hash
HASH_OMITTED_DEFAULTS: dict[tuple[str, str], Any] = {("train", "lr_schedule"): "method", ("data", "flip"): "none"}


def config_hash(cfg: RunConfig) -> str:
    d = to_dict(cfg)
    for (section, key), default in HASH_OMITTED_DEFAULTS.items():
        if d[section].get(key) == default:
            del d[section][key]
    blob = json.dumps(d, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two resolved config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}.{k}" if prefix else k
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, key)
        elif va != vb:
            out.append(f"{key}: {va!r} → {vb!r}")
    return out
