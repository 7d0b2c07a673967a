"""One dataclass of every setting, with named presets.

A run is fully described by a :class:`Config`. Presets (``smoke``, ``cpu``, ``paper``) fill in the
fields that differ from the defaults for a given method; command-line flags and papermill parameters
override single fields on top. Every field is validated on construction, with a one-line message that
names the field and the values it accepts.

The ``paper`` preset follows the seed study (WangFeng18/UnsupervisedLearningCodes at ``caa59b9``;
see ``shared/reference/seed-protocol.md``): BYOL on CIFAR-100, CIFAR ResNet-18, batch 512, lr 0.12,
201 epochs with step decay x0.1 at 160/190/200, SGD momentum 0.9, weight decay 5e-4, fixed EMA 0.996,
the ``aug+`` pipeline, and BatchNorm over batch/4 (the seed's 4-GPU DataParallel).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from .augment import CROP_SCALE, PIPELINES
from .data import DATASETS, DIGITS_STYLE, is_folder



class _Registered(Sequence):
    """The names of the methods registered so far, in registration order: a live, read-only sequence.

    The methods own their entries: each class in ``sslnb/methods/`` registers itself
    (:func:`register_method`, called by ``Method.__init_subclass__``), and importing ``sslnb`` imports
    every module of ``sslnb/methods/``. This floor validates against the list without importing upward."""

    def __init__(self, table: dict):
        self._table = table

    def __getitem__(self, i):
        return tuple(self._table)[i]

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return repr(tuple(self._table))


# name -> (its settings per preset on top of the preset's "all", a function cfg -> the parts of its run
# names after method and dataset)
_METHOD_ENTRIES: dict[str, tuple[dict[str, dict], Callable]] = {}
METHODS = _Registered(_METHOD_ENTRIES)  # the one list: every method registered (sslnb.methods)


def register_method(name: str, presets: dict[str, dict], run_tag: Callable) -> None:
    """Enter a method: ``presets`` maps a preset name to the settings in which the method's runs differ
    from the preset's shared ones; ``run_tag(cfg) -> list[str]`` gives the parts of a run's directory name
    that say what it is (BYOL: its BN code). Registering a name twice replaces the entry (a reloaded
    module); a preset that does not exist is refused."""
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        raise ConfigError(f"method {name!r} sets preset {unknown[0]!r}{nearest(unknown[0], PRESETS)}")
    for values in presets.values():
        check_known(values)
    _METHOD_ENTRIES[name] = (presets, run_tag)


def run_tag(cfg: "Config") -> list[str]:
    """The method's parts of ``cfg``'s run name (``rundir.run_name``)."""
    return list(_METHOD_ENTRIES[cfg.method][1](cfg))

SIMCLR_LOSSES = ("seed", "standard")
INSDIS_LOSSES = ("softmax", "nce")
INSDIS_HEADS = ("linear", "mlp")
NETWORKS = ("resnet18", "resnet50")
AUGMENTS = PIPELINES  # defined by sslnb.augment, where the pipelines are
LR_SCHEDULES = ("step", "cos")
TARGET_INITS = ("independent", "copy")
VIEW_BN = ("separate", "joint")
DIST_BN = ("groups", "local", "sync")
SIMCLR_GATHER = ("global", "local")
PROBES = ("seed", "none")
PRESETS = ("smoke", "cpu", "laptop", "paper")


class ConfigError(ValueError):
    """A setting has a value it cannot take; the message is one line naming the field."""


@dataclass(frozen=True)
class Config:
    """Every setting of a run. Defaults are the seed's BYOL command (see module docstring)."""

    # what to train
    method: str = "byol"  # the method trained (supervised: the labelled reference of the same backbone)
    dataset: str = "cifar100"  # digits: embedded, offline; cifar10/cifar100 from DATA_ROOT; fashion: Fashion-MNIST; folder:PATH your images
    network: str = "resnet18"  # the CIFAR ResNet (3x3 stem, no max-pool)
    width: int = 64  # channels of the first stage; the seed's ResNets use 64
    image_size: int = 32  # crops and test images are resized to this (the cpu preset uses 16)
    train_size: int = 0  # 0 = the whole train split; otherwise the first N images of a fixed shuffle
    data_root: str = "data"  # where CIFAR and Fashion-MNIST files are (or are downloaded to)
    download: bool = True  # fetch CIFAR with torchvision where the files are missing
    # the embedded digits rendered differently: entries of sslnb.data.DIGITS_STYLE that differ from it
    # (e.g. {"shift": 0} for centred digits); {} = the standard rendering
    digits_style: dict = field(default_factory=dict)

    # optimisation (seed-protocol section 4)
    epochs: int = 201  # passes over the training images (0: the untrained network, evaluated)
    batch_size: int = 512  # global batch, over all devices
    lr: float = 0.12  # SGD learning rate at the start (scaled by the schedule)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # on every parameter, as the seed
    optimizer: str = "sgd"  # sgd (the seed: momentum, weight decay on every parameter) | adam
    lr_schedule: str = "step"  # step: multiply by lr_decay at each milestone | cos: cosine to 0
    lr_milestones: tuple[int, ...] = (160, 190, 200)  # epochs (from 0) at which the step schedule decays
    lr_decay: float = 0.1  # the step schedule's factor
    augment: str = "aug+"  # the seed's augmentation pipeline: normal (its first one) or aug+ (flip and blur added)
    crop_scale: tuple[float, ...] = CROP_SCALE  # the random crop's area range (the seed's 0.2-1 in both pipelines)
    seed: int = 0  # initial weights, data order and augmentation randomness

    # BatchNorm, as named behaviour (seed-protocol sections 2 and 9)
    bn_code: str = "111"  # BN1 (online projector) BN2 (predictor) BN3 (target projector)
    bn_affine: bool = True  # learnable scale and shift in BN1/BN2/BN3
    bn_groups: int = 4  # ghost BatchNorm: each BN sees batch_size / bn_groups samples
    view_bn: str = "separate"  # each view forwarded on its own (seed) or both in one BN batch
    # BatchNorm over several processes (sslnb.dist.configure_batchnorm): groups = batch_size / bn_groups
    # images per BN whatever the number of processes | local: each process's own share (DDP's default) |
    # sync: the whole global batch (SyncBatchNorm)
    dist_bn: str = "groups"

    # BYOL's moving-average target
    ema: float = 0.996  # target <- ema * target + (1 - ema) * online, after every step
    ema_schedule: str = "fixed"  # fixed (seed) or cos (BYOL paper: ema -> 1 over training)
    target_init: str = "independent"  # the seed builds the target separately; the paper copies

    # the heads: the projector after the backbone, and the predictor of the methods that have one (BYOL)
    proj_dim: int = 256  # projection (and prediction) output size
    proj_hidden: int = 0  # 0 = the backbone feature size, as in the seed (512 for ResNet-18)
    pred_hidden: int = 256  # the predictor's hidden size
    pred_lr_mult: float = 1.0  # predictor lr = lr * this (1 in the seed; >1 as in Tian et al., 2021)

    # SimCLR and InsDis
    temperature: float = 0.5  # softmax temperature of NT-Xent and of the instance-discrimination softmax
    simclr_loss: str = "seed"  # seed: B-1 summed cross-view negatives (seed-protocol 3b) | standard NT-Xent
    insdis_loss: str = "softmax"  # softmax over the whole memory bank (seed) | nce (Wu et al., 2018)
    insdis_head: str = "linear"  # linear D -> 128 (seed default) | mlp: D -> D -> BN -> 128
    nce_k: int = 4096  # noise samples per image for insdis_loss = nce (the paper's K)
    bank_momentum: float = 0.5  # memory bank: v <- normalise(m v + (1 - m) f)

    # evaluation (seed-protocol section 6)
    knn_k: int = 200  # neighbours of the weighted kNN monitor
    knn_t: float = 0.07  # temperature of the kNN monitor's vote weights
    # measure (kNN, collapse diagnostics) after every N-th epoch and after the last; the epochs between
    # record their training figures only. How often a run is measured, not what it trains.
    eval_every: int = 1
    probe: str = "seed"  # the seed's linear probe on layer-6 features, or none
    probe_epochs: int = 100  # epochs of the linear probe
    probe_lr: float = 30.0  # the linear probe's learning rate (the seed's 30)
    probe_milestones: tuple[int, ...] = (40, 60, 80)  # probe epochs after which its rate is multiplied by 0.2

    # where and how it runs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # processes (GPUs) training this run together under torchrun; batch_size stays the global batch
    world_size: int = 1
    # SimCLR under several processes: global = negatives from every process's samples, with gradients
    # (the seed's DataParallel computed the loss on the whole batch) | local = each process's own samples
    simclr_gather: str = "global"
    # speed only (issue "performance"): results do not change beyond bf16 rounding
    channels_last: str = "auto"  # auto (on for CUDA, and on a CPU only at width >= 64, as measured) | on | off
    amp: str = "auto"  # auto (bf16 autocast on CUDA, none on a CPU) | bf16 | none
    compile: bool = False  # torch.compile the method's forward

    # provenance
    preset: str = ""  # the preset this config was made from, for provenance only

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type.startswith("tuple") and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        if isinstance(self.crop_scale, tuple) and all(_is_number(v) for v in self.crop_scale):
            object.__setattr__(self, "crop_scale", tuple(float(v) for v in self.crop_scale))
        if isinstance(self.digits_style, dict):
            object.__setattr__(self, "digits_style", _normal_style(self.digits_style))
        validate(self)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, preset: str = "cpu", method: str = "byol", **overrides) -> "Config":
        """The preset's settings for ``method``, then ``overrides`` field by field."""
        _check_choice("preset", preset, PRESETS)
        _check_choice("method", method, METHODS)
        check_known(overrides)
        values = {**_PRESET_VALUES[preset], **_METHOD_ENTRIES[method][0].get(preset, {})}
        values.update(method=method, preset=preset)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> "Config":
        check_known(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """The config a dict of settings (a ``config.json``) describes; an unknown key or a value that is
        not allowed is a one-line :class:`ConfigError` (never silently dropped)."""
        if not isinstance(d, dict):
            raise ConfigError(f"expected a JSON object of settings, got a {type(d).__name__}")
        check_known(d)
        return cls(**d)

    @property
    def bn1(self) -> bool:
        return self.bn_code[0] == "1"

    @property
    def bn2(self) -> bool:
        return self.bn_code[1] == "1"

    @property
    def bn3(self) -> bool:
        return self.bn_code[2] == "1"


def field_names() -> list[str]:
    return [f.name for f in fields(Config)]


def nearest(name: str, choices) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to a misspelt ``name`` (by spelling, or by the
    initials of its words: ``learning_rate`` -> ``lr``), or ``""``."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    initials = "".join(word[:1] for word in str(name).replace("-", "_").split("_"))
    if not close and initials in choices:
        close = [initials]
    return f"; did you mean {close[0]!r}?" if close else ""


def check_known(settings) -> None:
    """Refuse a setting name that is not a Config field, naming the nearest one."""
    unknown = sorted(set(settings) - set(field_names()))
    if unknown:
        hint = nearest(unknown[0], field_names()) or f"; known settings: {', '.join(field_names())}"
        raise ConfigError(f"unknown setting {unknown[0]!r}{hint}")


# Values that differ from the dataclass defaults, per preset, for every method; each method adds its own
# (the ``presets`` of its class in sslnb/methods/, entered by register_method).
_PRESET_VALUES: dict[str, dict] = {
    "paper": {},  # the dataclass defaults are the seed's BYOL command
    # The book's default on a 2-core laptop: the embedded digits, a narrow ResNet-18 (width 8) on 16x16
    # crops, batch 64 with BatchNorm over 32 samples (the seed's per-GPU size for batch 128). Measured on
    # 2 cores: about 7 s per epoch with one thread, so two runs train side by side in ~3 minutes.
    "cpu": dict(
        dataset="digits", width=8, image_size=16, epochs=20, batch_size=64, lr=0.1,
        lr_milestones=(16, 19), bn_groups=2, augment="normal", download=False, knn_k=50,
    ),
    # Where BYOL and SimCLR beat raw pixels on two cores (bench/byol_map.py, point canvas-10k-w8-40ep; the
    # book's page "How much compute does BYOL need?"): the cpu preset's network and batch on 10,000
    # Fashion-MNIST items placed at a random position and scale on a 32x32 canvas (data.fashion_canvas), for
    # 40 epochs (6,280 steps), 0.015 PFLOP per BYOL run; measured after every 5th epoch (and the last). On
    # plain Fashion-MNIST (point fashion-10k-w8-40ep, the preset until issue 25) BYOL learns but no method
    # beats the raw pixels; at half the cost (batch 32, 20 epochs) BYOL falls below them again.
    "laptop": dict(
        dataset="fashion-canvas", train_size=10000, width=8, image_size=16, epochs=40, batch_size=64, lr=0.1,
        lr_milestones=(32, 38), bn_groups=2, augment="normal", download=True, knn_k=50, eval_every=5,
    ),
    # Seconds: for tests. Tiny data, a tiny network, two epochs.
    "smoke": dict(
        dataset="digits", width=4, image_size=16, train_size=256, epochs=2, batch_size=64,
        lr=0.05, lr_milestones=(1,), bn_groups=2, augment="normal", download=False,
        knn_k=20, probe_epochs=5, probe_milestones=(3,), proj_dim=32, pred_hidden=32,
    ),
}


# ---------------------------------------------------------------------- validation
# The fields that take one of a few values, and those values (validation and --help use this table).
CHOICES = {"method": METHODS, "dataset": DATASETS + ("folder:PATH",), "network": NETWORKS, "augment": AUGMENTS,
           "lr_schedule": LR_SCHEDULES, "optimizer": ("sgd", "adam"), "ema_schedule": ("fixed", "cos"),
           "target_init": TARGET_INITS, "view_bn": VIEW_BN, "probe": PROBES, "simclr_loss": SIMCLR_LOSSES,
           "insdis_loss": INSDIS_LOSSES, "insdis_head": INSDIS_HEADS, "channels_last": ("auto", "on", "off"),
           "amp": ("auto", "bf16", "none"), "dist_bn": DIST_BN, "simclr_gather": SIMCLR_GATHER,
           "preset": PRESETS + ("",)}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    """A number that is not a bool, infinite or NaN."""
    return _is_number(v) and math.isfinite(v)


def _normal_style(style: dict) -> dict:
    """``digits_style`` in one canonical form, so that equal renderings give equal configs (and run
    names): pairs as lists of floats, numbers as floats, entries equal to the default dropped, keys
    sorted. Entries it cannot read are kept as they are for :func:`validate` to name."""
    out = {}
    for key in sorted(style):
        value = style[key]
        if isinstance(value, (list, tuple)) and all(_is_number(v) for v in value):
            value = [float(v) for v in value]
        elif _is_number(value):
            value = float(value)
        default = DIGITS_STYLE.get(key)
        if default is not None and value == (list(default) if isinstance(default, tuple) else default):
            continue
        out[key] = value
    return out


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _check(name: str, ok: bool, expected: str, value) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is not allowed; expected {expected}")


def validate(c: Config) -> None:
    """Raise :class:`ConfigError` (one line, naming the field) on the first bad setting."""
    for name, allowed in CHOICES.items():
        if name == "dataset" and is_folder(c.dataset):  # your own images: the folder is checked when loaded
            _check(name, len(c.dataset) > len("folder:"), "folder:PATH with PATH a folder of images", c.dataset)
            continue
        _check_choice(name, getattr(c, name), allowed)
    lo_hi = isinstance(c.crop_scale, tuple) and len(c.crop_scale) == 2 and all(_is_number(v) for v in c.crop_scale)
    _check("crop_scale", lo_hi and 0 < c.crop_scale[0] <= c.crop_scale[1] <= 1,
           "two numbers 0 < lo <= hi <= 1, such as 0.2,1", c.crop_scale)
    _check("digits_style", isinstance(c.digits_style, dict), "a dict of sslnb.data.DIGITS_STYLE entries",
           c.digits_style)
    for key, value in c.digits_style.items():
        _check("digits_style", key in DIGITS_STYLE, f"entries of {', '.join(DIGITS_STYLE)}", key)
        if isinstance(DIGITS_STYLE[key], tuple):
            ok = (isinstance(value, list) and len(value) == 2 and all(_is_number(v) and math.isfinite(v) for v in value)
                  and value[0] <= value[1])
            _check(f"digits_style[{key!r}]", ok, "two numbers lo <= hi", value)
        else:
            _check(f"digits_style[{key!r}]", _is_number(value) and math.isfinite(value), "a number", value)
    code_ok = isinstance(c.bn_code, str) and len(c.bn_code) == 3 and set(c.bn_code) <= {"0", "1"}
    _check("bn_code", code_ok, "three bits BN1 BN2 BN3 such as '111', '101' or '000'", c.bn_code)
    for name in ("width", "epochs", "batch_size", "image_size", "bn_groups", "proj_dim", "knn_k", "nce_k",
                 "world_size", "eval_every"):
        v = getattr(c, name)
        lo = 0 if name == "epochs" else 1
        _check(name, isinstance(v, int) and not isinstance(v, bool) and v >= lo, f"an integer >= {lo}", v)
    for name in ("train_size", "proj_hidden", "pred_hidden", "probe_epochs", "seed"):
        v = getattr(c, name)
        _check(name, isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0", v)
    _check("image_size", c.image_size >= 8, "an integer >= 8", c.image_size)
    for name in ("lr", "knn_t", "probe_lr", "temperature", "pred_lr_mult"):
        v = getattr(c, name)
        _check(name, _finite(v) and v > 0, "a finite number > 0", v)
    for name in ("momentum", "weight_decay", "lr_decay"):
        v = getattr(c, name)
        _check(name, _finite(v) and v >= 0, "a finite number >= 0", v)
    _check("ema", _finite(c.ema) and 0 <= c.ema <= 1, "a number in [0, 1]", c.ema)
    _check("bank_momentum", _finite(c.bank_momentum) and 0 <= c.bank_momentum < 1,
           "a number in [0, 1)", c.bank_momentum)
    for name in ("lr_milestones", "probe_milestones"):
        v = getattr(c, name)
        ok = isinstance(v, tuple) and all(isinstance(e, int) and e >= 0 for e in v) and list(v) == sorted(v)
        _check(name, ok, "increasing epoch numbers such as 160,190,200", v)
    _check("bn_groups", c.batch_size % c.bn_groups == 0 and c.batch_size // c.bn_groups >= 2,
           f"a divisor of batch_size={c.batch_size} leaving at least 2 samples per group", c.bn_groups)
    _check("world_size", c.batch_size % c.world_size == 0,
           f"a divisor of batch_size={c.batch_size} (each process takes an equal share)", c.world_size)
    if c.dist_bn == "groups":
        _check("bn_groups", c.bn_groups % c.world_size == 0,
               f"a multiple of world_size={c.world_size} with dist_bn=groups (or choose dist_bn=local or sync)",
               c.bn_groups)
    _check("device", c.device in ("auto", "cpu", "cuda") or c.device.startswith("cuda:"),
           "auto, cpu, cuda or cuda:N", c.device)
    for name in ("download", "bn_affine", "compile"):
        _check(name, isinstance(getattr(c, name), bool), "true or false", getattr(c, name))


# ---------------------------------------------------------------------- parsing
def parse_value(name: str, text: str):
    """Turn a command-line string into the type of field ``name`` (bool, int, float, tuple, str)."""
    types = {f.name: f.type for f in fields(Config)}
    check_known([name])
    kind = types[name]
    try:
        if kind == "bool":
            low = str(text).lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return low in ("1", "true", "yes")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("tuple[float"):
            return tuple(float(t) for t in str(text).split(",") if t.strip() != "")
        if kind.startswith("tuple"):
            return tuple(int(t) for t in str(text).split(",") if t.strip() != "")
        if kind == "dict":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not allowed; expected a value of type {kind}") from None
    return str(text)


# ---------------------------------------------------------------------- documentation
def field_docs() -> list[tuple[str, list[dict]]]:
    """Every Config field documented from the dataclass itself, in its groups: ``[(group title, [{name,
    type, default, choices, meaning}, ...]), ...]``. A comment block after a blank line (or above a field
    that has a comment of its own) titles a group; a comment at the end of a field's line, or right above a
    field without one, is its meaning. ``--help`` and the book's "Every setting" page are made from this,
    so they cannot drift from the code."""
    import inspect

    source = inspect.getsource(Config).splitlines()
    lines = source[next(i for i, line in enumerate(source) if line.startswith("class ")) + 1:]
    defaults = Config()
    types = {f.name: f.type for f in fields(Config)}
    groups: list[tuple[str, list[dict]]] = []
    pending: list[str] = []
    blank_before = True
    for line in lines:
        text = line.strip()
        if text.startswith("def ") or text.startswith("@"):
            break
        if not text:
            blank_before = True
            continue
        if text.startswith("#"):
            if not pending:
                pending_after_blank = blank_before
            pending.append(text.lstrip("# ").rstrip())
            blank_before = False
            continue
        name = text.split(":", 1)[0].strip()
        if name not in types:
            blank_before = False
            continue
        own = line.split("  # ", 1)[1].strip() if "  # " in line else ""
        if pending and (pending_after_blank or own):
            groups.append((" ".join(pending), []))
            pending = []
        elif not groups or (blank_before and not pending):
            groups.append(("other settings" if groups else "", []))
        meaning = own or " ".join(pending)
        pending = []
        blank_before = False
        default = getattr(defaults, name)
        groups[-1][1].append({"name": name, "type": types[name], "default": default,
                              "choices": CHOICES.get(name), "meaning": meaning})
    return groups


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def field_help(doc: dict) -> str:
    """One line for ``--help``: the meaning, the type, the allowed values and the default."""
    choices = f"; one of {' | '.join(c or chr(39) * 2 for c in doc['choices'])}" if doc["choices"] else ""
    meaning = f"{doc['meaning']}. " if doc["meaning"] else ""
    return f"{meaning}[{doc['type']}{choices}; default {_shown(doc['default'])}]".replace("%", "%%")


def settings_markdown() -> str:
    """The book's appendix page "Every setting", generated from :func:`field_docs`."""
    out = ["# Every setting", "",
           "Every field of `sslnb.config.Config`, generated from the dataclass (its comments and defaults) "
           "when the book is built. Each is a flag of `python -m sslnb.train` (`--bn-code 010`), a keyword of "
           "`Config.from_preset` and a key of a run's `config.json`; the presets (`smoke`, `cpu`, `laptop`, "
           "`paper`) change some defaults (see `_PRESET_VALUES` in `sslnb/config.py`, and each method's "
           "`presets` in `sslnb/methods/`).", ""]
    for title, docs in field_docs():
        out += [f"## {title[:1].upper() + title[1:] if title else 'What to train'}", "",
                "| flag (field) | meaning | default | type, allowed |", "|---|---|---|---|"]
        for d in docs:
            allowed = ", ".join(f"`{c}`" for c in d["choices"] if c) if d["choices"] else ""
            meaning = d["meaning"].replace("|", "\\|")
            out.append(f"| `--{d['name'].replace('_', '-')}` | {meaning} | `{_shown(d['default']) or chr(39) * 2}` "
                       f"| `{d['type']}`{': ' + allowed if allowed else ''} |")
        out.append("")
    return "\n".join(out)
