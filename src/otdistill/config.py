"""Typed configuration: dataclasses, YAML recipes and dotted command-line overrides.

A recipe is a YAML file whose keys mirror the dataclasses below. Every key is checked:
an unknown key is an error naming the closest valid key, and every value is converted
to (or rejected as not being) the declared type.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import config_rules
from .errors import UserError


@dataclass
class DataConfig:
    """Which labelled image set to distill."""

    name: str = "fashion-mnist"  # fashion-mnist | digits | imagefolder
    root: str | None = None  # folder of the files; None = the adapter's default location
    class_list: str | None = None  # imagefolder: text file, one class folder per line
    image_size: int | None = None  # resize every image to this square size; None = native
    # imagefolder channels: auto (1 when every image is grayscale, else 3; with
    # bad_files=unchecked the first image of each class decides) | 1 | 3
    channels: int | str = "auto"
    test_fraction: float = 0.2  # digits/imagefolder without a test folder: held-out share
    split_seed: int = 0  # seed of that held-out split
    # unreadable or empty image files, found by opening each at load: skip (a warning names them) | stop;
    # unchecked: no scan (fast on ImageNet's 1.3 M files), a bad file stops the stage that reads it
    bad_files: str = "skip"


@dataclass
class AutoencoderConfig:
    """A small diffusers AutoencoderKL trained on the dataset (ignored when loaded)."""

    # channels per resolution level (len - 1 = downsampling steps)
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    layers_per_block: int = 1  # ResNet blocks per level
    latent_channels: int = 4  # channels of the latent
    norm_num_groups: int = 8  # GroupNorm groups
    steps: int = 1500  # training steps
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # AdamW learning rate
    kl_weight: float = 1e-6  # weight of the KL term of the VAE loss
    # a generator folder (or a diffusers AutoencoderKL folder) whose autoencoder is used as it
    # is, scaling factor included, instead of training one; the keys above are then unused
    pretrained: str | None = None


@dataclass
class DiTConfig:
    """A diffusers DiTTransformer2DModel (generator.backend: dit)."""

    num_layers: int = 6  # transformer blocks
    num_attention_heads: int = 4  # heads per block
    attention_head_dim: int = 32  # channels per head (width = heads x dim)
    patch_size: int = 2  # latent patch side


@dataclass
class UNetConfig:
    """A diffusers UNet2DModel with a class embedding (generator.backend: unet)."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])  # channels per resolution level
    layers_per_block: int = 2  # ResNet blocks per level
    attention: list[bool] = field(default_factory=lambda: [False, True, True])  # self-attention at each level
    attention_head_dim: int = 32  # channels per attention head
    norm_num_groups: int = 32  # GroupNorm groups


@dataclass
class DiffusionConfig:
    """How the denoiser is trained; everything here is recorded in generator.json."""

    steps: int = 5000  # training steps (raising it continues a finished training)
    batch_size: int = 128  # latents per step
    lr: float = 3e-4  # peak AdamW learning rate (linear warm-up, then cosine decay)
    warmup_steps: int = 100  # steps of linear learning-rate warm-up
    ema_decay: float = 0.999  # EMA of weights kept for sampling
    label_drop: float = 0.1  # share of training labels replaced by the null class (what CFG needs)
    prediction: str = "epsilon"  # epsilon | v_prediction: the denoiser's target; the sampler follows it
    loss_weighting: str = "none"  # none | min_snr (min-SNR-gamma weighting of the timesteps)
    min_snr_gamma: float = 5.0  # gamma of min_snr
    noise_schedule: str = "linear"  # linear (DiT's betas) | cosine (squared-cosine alpha_bar)
    num_train_timesteps: int = 1000  # DDPM training timesteps


@dataclass
class GeneratorConfig:
    """Where the generator lives; `otdistill train-generator` makes it when absent."""

    path: str = "checkpoints/fashion-mnist/generator"  # generator folder (diffusers save_pretrained parts + generator.json)
    space: str = "latent"  # latent (denoise the autoencoder's latents) | pixel (denoise images; no autoencoder)
    backend: str = "dit"  # dit | unet: the denoiser (see generator.dit / generator.unet)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # full training state (weights, EMA, optimiser, RNG) saved atomically every N steps to
    # PATH.training/, so a killed training resumes where it was; 0 = only at the end
    checkpoint_every: int = 250
    # also keep the EMA generator at these denoiser steps as PATH.training/step-N/, a loadable
    # generator folder, to measure how quality grows along one training
    snapshot_steps: list[int] = field(default_factory=list)
    seed: int = 0  # seed of generator training
    # `run` and `sample` stop before sampling from a generator whose check (GENERATOR/quality.json)
    # says "not ready"; true samples from it anyway (e.g. to look at what it draws, or a tiny test recipe)
    allow_unready: bool = False


@dataclass
class OTGuidanceConfig:
    """G_W, the paper's OT term: entropic OT between the class's generated set and real latents."""

    weight: float = 0.0  # beta_1, relative to the sampler's own update norm; 0 = off
    reg: float = 0.05  # lambda_1, relative to the mean ground cost
    cost: str = "l1"  # l1 | sqeuclidean | cosine
    pool_size: int = 100  # R real latents per class
    pool_select: str = "random"  # random | kmeans
    pool_seed: int = 0  # seed of the pool's selection
    input: str = "x0"  # x0 (predicted clean latent) | zt
    max_iter: int = 1000  # Sinkhorn iteration cap
    tol: float = 1e-6  # Sinkhorn marginal error; float32 latents cannot reach much lower


@dataclass
class FeatureOTConfig:
    """Our extension, not the paper's: entropic OT between the class's generated set and real
    images in classifiers' penultimate features; the predicted clean latent is decoded and
    embedded, and the gradient flows back through the classifier and the decoder."""

    weight: float = 0.0  # relative to the sampler's own update norm; 0 = off
    reg: float = 0.05  # relative to the mean ground cost
    cost: str = "sqeuclidean"  # sqeuclidean | cosine | l1, between features
    pool_size: int = 200  # real training images per class
    # random | herding (our herding baseline's pool_size picks in the classifier's features: the
    # class's most typical images, spread so that their mean stays on the class mean) | kmeans (the
    # images nearest pool_size k-means centres in those features: the class's modes, a diverse target)
    # | confident / informative (by the classifier's softmax: the images it is surest of, or those it
    # assigns to the class whose labels carry the most information, the highest entropy first)
    pool_select: str = "random"
    pool_seed: int = 0  # seed of the pool's choice
    # the classifiers whose features it matches: teacher folders (model.json; imported torchvision
    # models too) or a surrogate folder (its last epoch); several add their log OT values, so each
    # space counts alike; empty = the first label teacher (teachers.0.path)
    classifiers: list[str] = field(default_factory=list)
    max_iter: int = 1000  # Sinkhorn iteration cap
    tol: float = 1e-6  # Sinkhorn marginal error


@dataclass
class DeviationConfig:
    """G_D of IGD: away from the most cosine-similar latent already generated for the class."""

    weight: float = 0.0  # gamma, in the units `scaling` gives it; 0 = off
    memory_size: int = 64  # latents already generated for the class it compares with (most recent)
    input: str = "x0"  # x0 (predicted clean latent) | zt
    # relative (gamma x the sampler update's norm x the unit gradient) | igd (IGD's code: gamma x the
    # raw gradient of the cosine similarity, so IGD's published gamma works with input zt)
    scaling: str = "relative"


@dataclass
class InfluenceConfig:
    """G_I of IGD: match a surrogate's training gradient on the decoded predicted image to the
    mean gradient of real images of the class, over checkpoints of the surrogate's training."""

    weight: float = 0.0  # k; the step is k * sqrt(1 - alpha_bar_t) * |reference| * g / |g|; 0 = off
    # the reference: relative (the sampler update) | igd (IGD's code: 0.0015 x the predicted noise,
    # so IGD's published k works as published)
    scaling: str = "relative"
    # how the gradients are matched: layers (1 - cosine per parameter tensor, summed) | flat (IGD's
    # code: 1 - cosine of all parameters as one vector)
    distance: str = "layers"
    # where the gradient is taken: x0 (the predicted clean latent, d x0 / d z_t taken as the identity) |
    # denoiser (IGD's code: z_t, through the denoiser's guided prediction; one more denoiser forward and
    # backward per guided step)
    through: str = "x0"
    surrogate: str = "checkpoints/fashion-mnist/surrogate"  # made by `otdistill train-surrogate`
    real_per_class: int = 100  # real images whose mean gradient is the target
    seed: int = 0  # seed of the real images' choice


@dataclass
class SurrogateConfig:
    """The surrogate classifier whose training trajectory influence guidance reads."""

    arch: str = "convnet3"  # classifier name (see Classifiers in the README)
    epochs: int = 4  # training epochs
    checkpoints: list[int] = field(default_factory=lambda: [0, 1, 2, 4])  # epochs saved (0 = init)
    train_subset: int = 10000  # images of the training split it sees (0 = all)
    batch_size: int = 128  # images per step
    lr: float = 1e-3  # AdamW learning rate
    seed: int = 0  # seed of its initialisation and batches


@dataclass
class GuidanceConfig:
    # Steps [start, stop) of the respaced schedule (0 = noisiest) where terms act.
    window: list[int] = field(default_factory=lambda: [0, 50])
    ot: OTGuidanceConfig = field(default_factory=OTGuidanceConfig)
    feature_ot: FeatureOTConfig = field(default_factory=FeatureOTConfig)
    deviation: DeviationConfig = field(default_factory=DeviationConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)


@dataclass
class SampleConfig:
    """Class-conditional sampling of IPC images per class."""

    ipc: int = 10  # images per class
    steps: int = 50  # sampling steps (respaced from the training timesteps)
    # ddim | ddpm (for a DiT with sigma channels, such as DiT-XL/2, with its learned variance: DiT's
    # learned-range interpolation between the posterior variance and beta_t)
    scheduler: str = "ddim"
    # which training timesteps the steps visit: leading (diffusers': every T/steps-th from 0) | dit
    # (DiT's and IGD's respacing: evenly strided over 0..T-1, both ends kept; ddpm only)
    spacing: str = "leading"
    cfg_scale: float = 2.0  # classifier-free guidance scale (1 = none)
    # latent channels CFG guides: all | first3 (DiT's forward_with_cfg, "for exact reproducibility");
    # the others, and a DiT's sigma channels, are the conditional prediction's
    cfg_channels: str = "all"
    batch_size: int = 50  # latents of one class per forward pass
    # classes sharing each DiT forward pass (fills a GPU at IPC 10); a class's bytes depend on
    # it, since the shared batch changes the float arithmetic, so keep it when resuming
    classes_per_pass: int = 1
    seed: int = 0  # per-class noise seeds derive from it
    # our extension, not the paper's: draw oversample x ipc images per class and keep the ipc
    # that `keep` picks among them (a real-image selection method applied to the generated
    # candidates; guidance acts on all of them); 1 = keep every drawn image
    oversample: int = 1
    # random | herding (the first teacher's features) | kmeans (latents) | confident (its highest
    # class probability) | informative (its least sure of those it assigns to the class)
    keep: str = "herding"
    # our extension, not the paper's: the first `real` images of each class are the real training
    # images the selection `real_select` picks (as its baseline would), kept as they are; the
    # sampler draws the other ipc - real, and the guidance terms see the real ones (encoded) as
    # images already made for the class, so the generated ones complement them. With formation F
    # it counts parts: real of the F^2 x ipc images of a class are real, packed first
    real: int = 0
    # random | herding (the first teacher's features) | kmeans (latents) | confident (its highest
    # class probability) | informative (its least sure of those it assigns to the class)
    real_select: str = "herding"
    # noise | prototypes (D4M-style: each latent starts from a k-means centre of its class's real
    # latents, noised to init_strength of the schedule, then denoised) | a real-image selection
    # (random, herding, kmeans; our extension: each latent starts from the latent of one of the
    # images it picks, as the baseline of that name would, noised and denoised the same way)
    init: str = "noise"
    init_strength: float = 0.7  # prototypes or a selection: share of the sampling steps run (1.0 = from pure noise)
    prototype_candidates: int = 2000  # prototypes: real images per class the k-means sees
    # multi-formation (IDC): each stored image packs formation x formation images of 1/formation its side, made
    # (sampled, selected) at full size as formation^2 x ipc per class; students train on the parts enlarged back.
    # The budget stays ipc stored images per class. Real-image baselines pack alike (benchmarks: *_mf2 rows)
    formation: int = 1
    # guidance terms added inside a window of steps (plain sampling when all weights are 0)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)


@dataclass
class TeacherConfig:
    """One teacher classifier; `otdistill train-teacher` makes it when absent, with the recipe
    below (recorded in its model.json; the learning rate decays on a cosine over all epochs)."""

    path: str = "checkpoints/fashion-mnist/teachers/convnet3"  # teacher folder (model.safetensors + model.json)
    arch: str = "convnet3"  # classifier name, e.g. convnet3, resnet18, tv:resnet50
    epochs: int = 5  # training epochs
    batch_size: int = 128  # images per step
    optimizer: str = "adamw"  # adamw | sgd (Nesterov momentum 0.9)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 5e-4  # weight decay
    crop_scale_min: float = 0.8  # RandomResizedCrop lower area bound (1 = no crop)
    flip: bool = True  # random horizontal flip
    seed: int = 0  # seed of its initialisation and batches


@dataclass
class RelabelConfig:
    """LIA: which of the ordered `teachers` label a set of a given IPC. Each [ipc, count] pair
    says "from this IPC on, the first `count` teachers"; the last pair not above the set's
    IPC applies. Fewer teachers at low IPC give simpler labels the few images can carry."""

    # [[ipc, count], ...]: from this IPC on, the first count teachers
    schedule: list[list[int]] = field(default_factory=lambda: [[1, 1], [10, 2], [50, 4]])
    # schedule (the paper's IPC rule above) | entropy (our extension: the count measured from the images,
    # the first teacher's label entropy on them relative to real training images; see docs/lia.md)
    rule: str = "schedule"
    real_per_class: int = 50  # entropy rule: real training images per class it compares with


@dataclass
class SoftLossConfig:
    """The soft-protocol student loss: a weighted sum, so the paper's ablations are config.
    KL alone is the RDED/SRe2L recipe; ce + mse + sd is the paper's OTM."""

    kl: float = 1.0  # weight of KL(teacher || student) at `temperature`
    ce: float = 0.0  # kappa_1: cross-entropy with the hard label
    mse: float = 0.0  # kappa_2: MSE between student and teacher logits
    sd: float = 0.0  # beta_2: batch-level Sinkhorn distance between softened outputs (OTM)
    temperature: float = 4.0  # for kl
    sd_temperature: float = 2.0  # softening temperature of the sd term
    sd_eps: float = 0.1  # entropic regularisation of the sd term
    sd_iterations: int = 20  # Sinkhorn iterations of the sd term


@dataclass
class StudentConfig:
    """How a student is trained on a distilled set and scored on the real test set."""

    arch: str = "convnet3"  # classifier name trained on the distilled set
    protocols: list[str] = field(default_factory=lambda: ["soft", "hard"])  # soft | hard (this section's recipe; teacher or class labels) | dc | dsa (the field's hard-label protocols, fixed by their source; dsa-e20: another length); docs/protocols.md
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one student per seed and protocol; mean +- std over them
    epochs: int = 300  # training epochs (the headline is the final one)
    batch_size: int = 50  # images per step
    optimizer: str = "adamw"  # adamw | sgd (Nesterov) | sgd_dc (plain momentum, as DC/DSA)
    lr: float = 1e-3  # peak learning rate (cosine schedule)
    weight_decay: float = 0.01  # weight decay
    soft_loss: SoftLossConfig = field(default_factory=SoftLossConfig)
    soft_labels: str = "online"  # online: teachers label each augmented view | stored: the artifact's logits
    crop_scale_min: float = 0.5  # RandomResizedCrop lower area bound
    image_size: int | None = None  # training crop and test view side (ImageNet: 224 from 256); None = the set's
    flip: bool = True  # random horizontal flip
    cutmix: float = 0.0  # probability that a batch is CutMix-ed (the teachers label the mixed view)
    ema_decay: float = 0.0  # > 0: score an exponential moving average of the student's weights
    eval_every: int = 0  # also score every N epochs: the learning curve and the labelled best-epoch extra; 0 = final only
    curve_test_images: int = 0  # score the curve's epochs on this many test images spread over the split (0 = all); the reported final epoch always on all
    test_batch_size: int = 100  # images per forward pass when scoring the test set (on 2 CPU cores 14 s for 10k images, 17.5 s at 1000: student-speed.json)
    micro_batch: int | None = None  # forward / backward a batch in parts of at most this many images, their gradients summed: the same gradient, 1.5-1.6x faster at batch 100-256 on 2 CPU cores (caches); only for students without BatchNorm and per-image losses (not soft_loss.sd), the whole batch otherwise; None = 32 on a CPU, 0 (the whole batch) on a GPU
    workers: int | None = None  # student cells trained at once, each in its own process with an equal share of the threads: a small student leaves 2 CPU cores half idle at batch 10-50 (soft cells 1.3x, dsa's micro-batched ones level: student-speed.json); None = 2 on a CPU with at least 2 threads, 1 on a GPU or under torchrun
    compile: bool = False  # torch.compile the student's training passes: on 2 CPU cores 1.1-1.55x from batch 50 up, nothing at batch 10, 12-25 s of compiling per student (docs/protocols.md)


@dataclass
class MetricsConfig:
    """Distribution metrics against held-out real images (the test split)."""

    per_class: int = 200  # held-out real images per class
    k: int = 5  # neighbours for density / coverage
    seed: int = 0  # seed of the held-out images' choice


@dataclass
class Config:
    output: str = "runs/fashion-mnist"  # run folder; every stage writes under it (config.yaml, distilled/, baselines/, report/)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    teachers: list[TeacherConfig] = field(default_factory=lambda: [TeacherConfig()])
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # the real-image sets `run` also evaluates with the same students, to answer "better than
    # picking real images?" (each made once into OUTPUT/baselines/METHOD/): a list of random |
    # herding | kmeans | confident | informative | rded (RDED's teacher-scored crops of real
    # images, selection.py); [] (or none) = no baseline; a single name is a one-item list
    baseline: str | list[str] = field(default_factory=lambda: ["random"])

    def __post_init__(self):
        # recipes and manifests written before `baseline` became a list hold one name (or none)
        if isinstance(self.baseline, str):
            self.baseline = [] if self.baseline == "none" else [self.baseline]


# ---------------------------------------------------------------- conversion


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key(key: str, valid: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{where}{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return UserError(f"unknown config key '{where}{key}': {hint}")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the declared type, or raise a UserError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for tp_ in inner[:-1]:  # the first type that takes the value; the last one's error otherwise
            try:
                return _convert(value, tp_, where)
            except UserError:
                pass
        return _convert(value, inner[-1], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{where}' must be a mapping, got {value!r}")
        return _build(tp, value, where + ".")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{where}' must be a list, got {value!r}")
        return [_convert(v, item_tp, f"{where}.{i}") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"config key '{where}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config key '{where}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key '{where}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp} at {where}")


def _build(cls, values: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    for key in values:
        if key not in names:
            raise _unknown_key(str(key), names, where)
    kwargs = {k: _convert(v, hints[k], where + k) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(values: dict, check: bool = True) -> Config:
    """A Config from a key tree; with `check`, every value is also checked against its
    choices and range (config_rules), so a bad value stops before any work."""
    cfg = _build(Config, values or {})
    if check:
        config_rules.check(cfg)
    return cfg


def _set_dotted(tree: dict, dotted: str, value: Any, defaults: dict) -> None:
    """Set `a.b.0.c = value` inside a plain dict tree, checking keys against the defaults."""
    parts = dotted.split(".")
    node, ref, where = tree, defaults, ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"config key '{where}{part}': index out of range (list has {len(node)} items)")
            key = int(part)
            ref = ref[0] if isinstance(ref, list) and ref else ref
        else:
            if not isinstance(ref, dict) or part not in ref:
                raise _unknown_key(part, list(ref) if isinstance(ref, dict) else [], where)
            key = part
            ref = ref[part]
        if last:
            node[key] = value
        else:
            node = node[key]
            where += f"{part}."


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key.path=value, e.g. sample.ipc=50")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_recipe(path: str | Path, _seen: tuple = ()) -> dict:
    """A recipe's key tree; `base: other.yaml` (relative to the file; a list merges several
    in order) is read first and the recipe's keys are merged over it, so variants state only
    what differs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; recipes live in configs/ (e.g. configs/fashion-mnist.yaml)")
    if path.resolve() in _seen:
        raise UserError(f"config file {path} includes itself through `base`")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise UserError(f"config file {path} must hold a mapping of keys")
    bases = tree.pop("base", None)
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases or []:
        merged = _merge(merged, read_recipe(path.parent / base, (*_seen, path.resolve())))
    return _merge(merged, tree)


def _per_ipc_block(per_ipc: Any, ipc: int) -> dict:
    """The keys a recipe's `per_ipc` section sets at this IPC: each `N: {keys}` entry says "from
    IPC N on" (like relabel.schedule), the last entry not above `ipc` applies; {} below the first."""
    if not isinstance(per_ipc, dict) or not all(isinstance(k, int) and k >= 1 for k in per_ipc):
        raise UserError("config key 'per_ipc' must map IPC values (whole numbers >= 1) to keys, e.g. "
                        "per_ipc: {10: {sample: {cfg_scale: 1.0}}}")
    chosen = [k for k in sorted(per_ipc) if k <= ipc]
    if not chosen:
        return {}
    block = per_ipc[chosen[-1]] or {}
    if not isinstance(block, dict):
        raise UserError(f"config key 'per_ipc.{chosen[-1]}' must hold a mapping of keys")
    _build(Config, block, f"per_ipc.{chosen[-1]}.")  # its keys and types, named by where they sit
    return block


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (or the defaults) and apply `key.path=value` overrides. A recipe's
    `per_ipc` section (settings chosen separately per IPC) goes over the file's keys for the
    run's sample.ipc, and the overrides over both."""
    tree = read_recipe(path) if path is not None else {}
    per_ipc = tree.pop("per_ipc", None)

    def expanded(tree: dict) -> dict:
        # Validate the file's keys and types first, then expand it to a full tree so overrides can
        # reach any key; values are checked once the overrides are in.
        tree = to_dict(from_dict(tree, check=False))
        for text in overrides:
            key, value = parse_override(text)
            _set_dotted(tree, key, value, tree)
        return tree

    full = expanded(tree)
    if per_ipc is not None:
        full = expanded(_merge(tree, _per_ipc_block(per_ipc, full["sample"]["ipc"])))
    return from_dict(full)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def non_defaults(obj):
    """A config section as plain data without the fields left at their defaults, so a key added
    in a later version (whose default keeps the old behaviour) does not orphan earlier outputs."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if value != default:
                out[f.name] = non_defaults(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [non_defaults(v) for v in obj]
    return obj


def fingerprint(*sections) -> str:
    """A short stable hash of config sections: a stage's output records the inputs that made it."""
    blob = json.dumps([non_defaults(s) for s in sections], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
