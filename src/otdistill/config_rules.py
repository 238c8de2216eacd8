"""What each config key accepts beyond its type: one of a few names, or a range.

`check(cfg)` runs when a config is loaded, on every key whatever else is switched on, so a
wrong value stops the command before any work instead of hours later in the stage that
reads it. Names that a registry owns (datasets, generator backends, ground costs, ...) are
read from it, lazily: this module must not pull the models in when a config is merely printed.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .errors import UserError

Problem = str | None  # what is wrong with a value, or None when it is fine


@dataclass(frozen=True)
class OneOf:
    names: tuple | Callable[[], Iterable]

    def options(self) -> list:
        return list(self.names() if callable(self.names) else self.names)

    def problem(self, value, cfg) -> Problem:
        options = self.options()
        if value in options:
            return None
        close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0)
        return (f"must be one of {', '.join(map(str, options))}, got {value!r}"
                + (f"; did you mean '{close[0]}'?" if close else ""))

    def invalid(self, cfg) -> Any:
        return "no-such-choice"


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself is excluded
    open_high: bool = False

    def problem(self, value, cfg) -> Problem:
        below = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        above = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if not (below or above):
            return None
        lo = "" if self.low is None else f"{self.low:g} {'<' if self.open_low else '<='} "
        hi = "" if self.high is None else f" {'<' if self.open_high else '<='} {self.high:g}"
        return f"must satisfy {lo}value{hi}, got {value!r}"

    def invalid(self, cfg) -> Any:
        return self.low - 1 if self.low is not None else self.high + 1


@dataclass(frozen=True)
class Rule:
    """A check that needs the whole config or a structure: `fn(value, cfg)` returns the problem."""

    fn: Callable[[Any, Any], Problem]
    bad: Callable[[Any], Any]  # an invalid value for the walk in the tests

    def problem(self, value, cfg) -> Problem:
        return self.fn(value, cfg)

    def invalid(self, cfg) -> Any:
        return self.bad(cfg)


# sample.spacing: which training timesteps the sampling steps visit (models/generator.py reads it here)
SPACINGS = ("leading", "dit")

POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
SHARE = Range(0, 1)  # a probability or fraction, both ends allowed
DECAY = Range(0, 1, open_high=True)


def _owned(module: str, name: str) -> Callable[[], Iterable]:
    """The names a module owns (a registry or a tuple of choices), imported when first checked."""
    return lambda: getattr(importlib.import_module(f".{module}", __package__), name)


def _arch(value, cfg) -> Problem:
    from .models.classifiers import arch_problem

    return arch_problem(value)


def _device(value, cfg) -> Problem:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return None
    return f"must be auto, cpu, cuda or cuda:N, got {value!r}"


def _protocol(value, cfg) -> Problem:
    from .protocols import problem

    return problem(value)


def _non_empty(value, cfg) -> Problem:
    return None if value else "must list at least one entry"


def _distinct(value, cfg) -> Problem:
    repeated = sorted({v for v in value if value.count(v) > 1})
    return f"lists {', '.join(repeated)} more than once" if repeated else None


def _window(value, cfg) -> Problem:
    steps = cfg.sample.steps
    if len(value) == 2 and 0 <= value[0] < value[1] and value[0] < steps:
        return None
    return (f"must be [start, stop] with 0 <= start < stop and start < sample.steps={steps} (a stop past the "
            f"last step means to the end), got {value}")


def _spacing(value, cfg) -> Problem:
    if value not in SPACINGS:
        return f"must be one of {', '.join(SPACINGS)}, got {value!r}"
    if value == "dit" and cfg.sample.scheduler != "ddpm":
        return (f"dit needs sample.scheduler=ddpm (diffusers' {cfg.sample.scheduler} steps by a fixed stride); "
                "set the scheduler to ddpm or the spacing to leading")
    return None


def _real(value, cfg) -> Problem:
    made = cfg.sample.ipc * cfg.sample.formation ** 2  # packed, real counts parts
    if not 0 <= value < made:
        bound = f"sample.ipc={cfg.sample.ipc}" + (f" x sample.formation^2 = {made}" if made > cfg.sample.ipc else "")
        return f"must satisfy 0 <= value < {bound} (all real is the {cfg.sample.real_select} baseline itself), got {value}"
    if value and cfg.sample.init in _owned("selection", "SELECTIONS")():
        return (f"{value} real images and sample.init={cfg.sample.init} would start the generated images from the "
                "same real picks; set sample.init to noise or prototypes, or sample.real to 0")
    return None


def _formation(value, cfg) -> Problem:
    if value < 1:
        return f"must be at least 1 (1 = one image per stored image), got {value}"
    if cfg.data.image_size and cfg.data.image_size % value:  # a native size is checked once the data is read
        return f"must divide data.image_size={cfg.data.image_size} so that the parts tile it, got {value}"
    return None


def _snapshots(value, cfg) -> Problem:
    steps = cfg.generator.diffusion.steps
    bad = [s for s in value if not 1 <= s <= steps]
    return f"steps {bad} lie outside 1..generator.diffusion.steps={steps}" if bad else None


def _checkpoints(value, cfg) -> Problem:
    epochs = cfg.sample.guidance.surrogate.epochs
    if value and all(0 <= e <= epochs for e in value):
        return None
    return f"must list epochs in 0..sample.guidance.surrogate.epochs={epochs}, got {value}"


def _schedule(value, cfg) -> Problem:
    if value and all(len(pair) == 2 and pair[0] >= 1 and pair[1] >= 1 for pair in value):
        return None
    return f"must be a list of [ipc, count] pairs with ipc >= 1 and count >= 1, got {value}"


# Dotted keys; N stands for every index of a list.
RULES: dict[str, OneOf | Range | Rule] = {
    "device": Rule(_device, lambda cfg: "gpu"),
    "baseline": Rule(_distinct, lambda cfg: ["random", "random"]),
    "baseline.N": OneOf(_owned("selection", "BASELINES")),
    "data.name": OneOf(_owned("data", "ADAPTERS")),
    "data.channels": OneOf(("auto", 1, 3)),
    "data.image_size": AT_LEAST_1,
    "data.test_fraction": Range(0, 1, open_low=True, open_high=True),
    "data.bad_files": OneOf(("skip", "stop", "unchecked")),
    "generator.space": OneOf(("latent", "pixel")),
    "generator.backend": OneOf(_owned("models.generator", "BACKENDS")),
    "generator.checkpoint_every": NON_NEGATIVE,
    "generator.snapshot_steps": Rule(_snapshots, lambda cfg: [0]),
    "generator.autoencoder.block_out_channels.N": AT_LEAST_1,
    "generator.autoencoder.layers_per_block": AT_LEAST_1,
    "generator.autoencoder.latent_channels": AT_LEAST_1,
    "generator.autoencoder.norm_num_groups": AT_LEAST_1,
    "generator.autoencoder.steps": AT_LEAST_1,
    "generator.autoencoder.batch_size": AT_LEAST_1,
    "generator.autoencoder.lr": POSITIVE,
    "generator.autoencoder.kl_weight": NON_NEGATIVE,
    "generator.dit.num_layers": AT_LEAST_1,
    "generator.dit.num_attention_heads": AT_LEAST_1,
    "generator.dit.attention_head_dim": AT_LEAST_1,
    "generator.dit.patch_size": AT_LEAST_1,
    "generator.unet.block_out_channels.N": AT_LEAST_1,
    "generator.unet.layers_per_block": AT_LEAST_1,
    "generator.unet.attention_head_dim": AT_LEAST_1,
    "generator.unet.norm_num_groups": AT_LEAST_1,
    "generator.diffusion.steps": AT_LEAST_1,
    "generator.diffusion.batch_size": AT_LEAST_1,
    "generator.diffusion.lr": POSITIVE,
    "generator.diffusion.warmup_steps": NON_NEGATIVE,
    "generator.diffusion.ema_decay": DECAY,
    "generator.diffusion.label_drop": DECAY,
    "generator.diffusion.prediction": OneOf(_owned("models.generator", "PREDICTIONS")),
    "generator.diffusion.loss_weighting": OneOf(_owned("train_generator", "WEIGHTINGS")),
    "generator.diffusion.min_snr_gamma": POSITIVE,
    "generator.diffusion.noise_schedule": OneOf(_owned("models.generator", "SCHEDULES")),
    "generator.diffusion.num_train_timesteps": AT_LEAST_1,
    "sample.ipc": AT_LEAST_1,
    "sample.steps": AT_LEAST_1,
    "sample.scheduler": OneOf(_owned("models.generator", "SAMPLERS")),
    "sample.spacing": Rule(_spacing, lambda cfg: "trailing"),
    "sample.cfg_scale": NON_NEGATIVE,
    "sample.cfg_channels": OneOf(_owned("models.generator", "CFG_CHANNELS")),
    "sample.batch_size": AT_LEAST_1,
    "sample.classes_per_pass": AT_LEAST_1,
    "sample.oversample": AT_LEAST_1,
    "sample.keep": OneOf(_owned("selection", "SELECTIONS")),
    "sample.real": Rule(_real, lambda cfg: cfg.sample.ipc * cfg.sample.formation ** 2),
    "sample.real_select": OneOf(_owned("selection", "SELECTIONS")),
    "sample.formation": Rule(_formation, lambda cfg: 0),
    "sample.init": OneOf(lambda: ("noise", "prototypes", *_owned("selection", "SELECTIONS")())),
    "sample.init_strength": Range(0, 1, open_low=True),
    "sample.prototype_candidates": AT_LEAST_1,
    "sample.guidance.window": Rule(_window, lambda cfg: [cfg.sample.steps, cfg.sample.steps + 1]),
    "sample.guidance.ot.weight": NON_NEGATIVE,
    "sample.guidance.ot.reg": POSITIVE,
    "sample.guidance.ot.cost": OneOf(_owned("ot", "COSTS")),
    "sample.guidance.ot.pool_size": AT_LEAST_1,
    "sample.guidance.ot.pool_select": OneOf(_owned("guidance.pool", "POOL_SELECTIONS")),
    "sample.guidance.ot.input": OneOf(_owned("guidance.common", "INPUTS")),
    "sample.guidance.ot.max_iter": AT_LEAST_1,
    "sample.guidance.ot.tol": POSITIVE,
    "sample.guidance.feature_ot.weight": NON_NEGATIVE,
    "sample.guidance.feature_ot.reg": POSITIVE,
    "sample.guidance.feature_ot.cost": OneOf(_owned("ot", "COSTS")),
    "sample.guidance.feature_ot.pool_size": AT_LEAST_1,
    "sample.guidance.feature_ot.pool_select": OneOf(_owned("guidance.feature_ot", "POOL_SELECTIONS")),
    "sample.guidance.feature_ot.max_iter": AT_LEAST_1,
    "sample.guidance.feature_ot.tol": POSITIVE,
    "sample.guidance.deviation.weight": NON_NEGATIVE,
    "sample.guidance.deviation.memory_size": AT_LEAST_1,
    "sample.guidance.deviation.input": OneOf(_owned("guidance.common", "INPUTS")),
    "sample.guidance.deviation.scaling": OneOf(_owned("guidance.common", "SCALINGS")),
    "sample.guidance.influence.weight": NON_NEGATIVE,
    "sample.guidance.influence.real_per_class": AT_LEAST_1,
    "sample.guidance.influence.scaling": OneOf(_owned("guidance.common", "SCALINGS")),
    "sample.guidance.influence.distance": OneOf(_owned("guidance.influence", "DISTANCES")),
    "sample.guidance.influence.through": OneOf(_owned("guidance.influence", "THROUGH")),
    "sample.guidance.surrogate.arch": Rule(_arch, lambda cfg: "convnet3-wide"),
    "sample.guidance.surrogate.epochs": AT_LEAST_1,
    "sample.guidance.surrogate.checkpoints": Rule(_checkpoints, lambda cfg: [-1]),
    "sample.guidance.surrogate.train_subset": NON_NEGATIVE,
    "sample.guidance.surrogate.batch_size": AT_LEAST_1,
    "sample.guidance.surrogate.lr": POSITIVE,
    "teachers": Rule(_non_empty, lambda cfg: []),
    "teachers.N.arch": Rule(_arch, lambda cfg: "resnet19"),
    "teachers.N.epochs": AT_LEAST_1,
    "teachers.N.batch_size": AT_LEAST_1,
    "teachers.N.lr": POSITIVE,
    "teachers.N.weight_decay": NON_NEGATIVE,
    "teachers.N.optimizer": OneOf(_owned("train", "OPTIMIZERS")),
    "teachers.N.crop_scale_min": Range(0, 1, open_low=True),
    "relabel.schedule": Rule(_schedule, lambda cfg: [[10, 0]]),
    "relabel.rule": OneOf(("schedule", "entropy")),
    "relabel.real_per_class": AT_LEAST_1,
    "student.arch": Rule(_arch, lambda cfg: "tv:no_such_net"),
    "student.protocols": Rule(_non_empty, lambda cfg: []),
    "student.protocols.N": Rule(_protocol, lambda cfg: "dsb"),
    "student.seeds": Rule(_non_empty, lambda cfg: []),
    "student.epochs": AT_LEAST_1,
    "student.batch_size": AT_LEAST_1,
    "student.optimizer": OneOf(_owned("train", "OPTIMIZERS")),
    "student.lr": POSITIVE,
    "student.weight_decay": NON_NEGATIVE,
    "student.soft_loss.kl": NON_NEGATIVE,
    "student.soft_loss.ce": NON_NEGATIVE,
    "student.soft_loss.mse": NON_NEGATIVE,
    "student.soft_loss.sd": NON_NEGATIVE,
    "student.soft_loss.temperature": POSITIVE,
    "student.soft_loss.sd_temperature": POSITIVE,
    "student.soft_loss.sd_eps": POSITIVE,
    "student.soft_loss.sd_iterations": AT_LEAST_1,
    "student.soft_labels": OneOf(_owned("evaluate", "SOFT_LABELS")),
    "student.crop_scale_min": Range(0, 1, open_low=True),
    "student.image_size": AT_LEAST_1,
    "student.cutmix": SHARE,
    "student.ema_decay": DECAY,
    "student.eval_every": NON_NEGATIVE,
    "student.curve_test_images": NON_NEGATIVE,
    "student.micro_batch": NON_NEGATIVE,
    "student.workers": AT_LEAST_1,
    "student.test_batch_size": AT_LEAST_1,
    "metrics.per_class": AT_LEAST_1,
    "metrics.k": AT_LEAST_1,
}


def values(cfg, key: str) -> list[tuple[str, Any]]:
    """(concrete key, value) for a rule's dotted key; N expands to each list index."""
    found = [("", cfg)]
    for part in key.split("."):
        step = []
        for where, node in found:
            if part == "N":
                step += [(f"{where}{i}.", v) for i, v in enumerate(node)]
            else:
                step.append((f"{where}{part}.", getattr(node, part)))
        found = step
    return [(where[:-1], v) for where, v in found]


def check(cfg) -> None:
    """Raise one UserError naming every key whose value is not accepted."""
    problems = []
    for key, rule in RULES.items():
        for where, value in values(cfg, key):
            if value is None:  # an optional key left unset
                continue
            problem = rule.problem(value, cfg)
            if problem:
                problems.append(f"{where}: {problem}")
    if problems:
        raise UserError("config: " + "; ".join(problems))
