"""The class-conditional diffusion generator: one interface over diffusers parts.

On disk a generator is a folder:
    autoencoder/   diffusers AutoencoderKL (save_pretrained); absent in pixel space
    dit/ | unet/   the denoiser (save_pretrained), named by its backend; class index K is the
                   null class used for classifier-free guidance
    generator.json class names, image shape, backend, noise schedule, prediction type, timestep
                   embedding, how it was made (folders written before these keys existed read as
                   a latent DiT predicting noise on the linear schedule with diffusers' timestep
                   embedding, which is what they are)

Nothing outside models/ reaches into the parts: the sampler, the guidance terms, the real-latent
pools and the importers use `Generator`'s methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..config import AutoencoderConfig, GeneratorConfig
from ..config_rules import SPACINGS  # the choices of sample.spacing
from ..errors import UserError
from ..io import read_json

# Noise schedules by config name; DiT's linear betas are the default.
SCHEDULES = {
    "linear": {"beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}
PREDICTIONS = ("epsilon", "v_prediction")
SAMPLERS = ("ddim", "ddpm")  # sample.scheduler: the diffusers scheduler that draws samples
CFG_CHANNELS = {"all": None, "first3": 3}  # sample.cfg_channels: the leading channels CFG guides (None = all)
# generator.json "timestep_embedding": diffusers (the sinusoidal projections as the diffusers
# class builds them; its DiT's frequencies are exp(-ln(10^4) i / (half - 1))) | dit-original (the
# facebookresearch DiT's exp(-ln(10^4) i / half), cosines first as in diffusers' DiT: its
# weights compute its function only so)
TIMESTEP_EMBEDDINGS = ("diffusers", "dit-original")


def dit_timesteps(num_train: int, steps: int) -> list[int]:
    """DiT's (and IGD's) respacing, diffusion/respace.py space_timesteps(T, "steps"): `steps`
    timesteps evenly strided over 0..T-1 by (T-1)/(steps-1), each rounded, both ends kept;
    noisiest first, as diffusers walks them. (diffusers' "leading" spacing never visits T-1.)"""
    if not 1 <= steps <= num_train:
        raise UserError(f"sample.steps={steps} must lie in 1..{num_train} (the generator's training timesteps)")
    stride = (num_train - 1) / (steps - 1) if steps > 1 else 1
    kept, at = [], 0.0
    for _ in range(steps):  # accumulated as DiT does, so the rounding matches it
        kept.append(round(at))
        at += stride
    return sorted(kept, reverse=True)


def build_autoencoder(cfg: AutoencoderConfig, channels: int, image_size: int):
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    factor = 2 ** (n - 1)
    if image_size % factor:
        raise UserError(f"image size {image_size} is not divisible by the autoencoder's downsampling factor {factor}; "
                        f"set data.image_size to a multiple of {factor} or change generator.autoencoder.block_out_channels")
    return AutoencoderKL(
        in_channels=channels, out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups, sample_size=image_size,
        scaling_factor=1.0,
    )


def load_autoencoder(path: str | Path, subfolder: str = "autoencoder",
                     hint: str = "point generator.autoencoder.pretrained at a generator folder or a diffusers "
                                 "AutoencoderKL folder"):
    """The frozen AutoencoderKL of a folder's `subfolder` (a generator's autoencoder/, a pipeline's
    vae/), or of a diffusers AutoencoderKL folder itself; `hint` names the fix when there is none."""
    from diffusers import AutoencoderKL

    path = Path(path)
    folder = path / subfolder if (path / subfolder).is_dir() else path
    if not (folder / "config.json").is_file():
        raise UserError(f"{path} holds no autoencoder (no {subfolder}/config.json or config.json); {hint}")
    try:
        ae = AutoencoderKL.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"could not load the autoencoder in {folder}: {str(exc).splitlines()[0]}") from None
    return ae.eval().requires_grad_(False)


def set_timestep_embedding(denoiser: torch.nn.Module, kind: str) -> None:
    """Give a denoiser's sinusoidal timestep projections (the diffusers DiT keeps one per block)
    the embedding `kind` of TIMESTEP_EMBEDDINGS, the function its weights were trained with."""
    from diffusers.models.embeddings import Timesteps

    if kind not in TIMESTEP_EMBEDDINGS:
        raise UserError(f"unknown timestep embedding '{kind}' in generator.json; use one of "
                        f"{', '.join(TIMESTEP_EMBEDDINGS)} (dit-original for a converted facebookresearch DiT)")
    if kind == "dit-original":
        for proj in denoiser.modules():
            if isinstance(proj, Timesteps):
                proj.downscale_freq_shift = 0


# ---------------------------------------------------------------- denoiser backends


@dataclass(frozen=True)
class Backend:
    """What the generator needs of one kind of denoiser."""

    build: Callable[[GeneratorConfig, int, int, int], torch.nn.Module]  # (cfg, channels, size, classes)
    load: Callable[[Path], torch.nn.Module]  # from its save_pretrained folder
    # (m, z, t, labels) -> the prediction, then any learned-variance channels
    forward: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    null_class: Callable[[torch.nn.Module], int]  # the label CFG's unconditional branch uses


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, backend: Backend) -> None:
    BACKENDS[name] = backend


def _build_dit(cfg: GeneratorConfig, channels: int, size: int, num_classes: int):
    from diffusers import DiTTransformer2DModel
    from diffusers.models.embeddings import LabelEmbedding

    d = cfg.dit
    if size % d.patch_size:
        raise UserError(f"latent size {size} is not divisible by generator.dit.patch_size={d.patch_size}")
    dit = DiTTransformer2DModel(
        num_attention_heads=d.num_attention_heads, attention_head_dim=d.attention_head_dim,
        in_channels=channels, out_channels=channels, num_layers=d.num_layers,
        sample_size=size, patch_size=d.patch_size, num_embeds_ada_norm=num_classes,
    )
    # diffusers gives every block its own label embedding, each dropping labels to the null
    # class on its own in train mode, so the all-null input CFG samples with is never trained;
    # the trainer drops labels once per sample instead (generator.diffusion.label_drop).
    for m in dit.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0
    return dit


def _load_dit(path: Path):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False)


def _forward_dit(m, z, t, labels):
    # a DiT trained with learned variance (DiT-XL/2) also outputs sigma channels after the prediction
    return m(z, timestep=t, class_labels=labels).sample


def _build_unet(cfg: GeneratorConfig, channels: int, size: int, num_classes: int):
    from diffusers import UNet2DModel

    u = cfg.unet
    if len(u.attention) != len(u.block_out_channels):
        raise UserError(f"generator.unet.attention has {len(u.attention)} entries for {len(u.block_out_channels)} "
                        "levels of generator.unet.block_out_channels; give one true/false per level")
    if size % 2 ** (len(u.block_out_channels) - 1):
        raise UserError(f"size {size} is not divisible by the UNet's downsampling factor "
                        f"{2 ** (len(u.block_out_channels) - 1)}; use fewer levels in generator.unet.block_out_channels")
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=u.layers_per_block,
        block_out_channels=tuple(u.block_out_channels), norm_num_groups=u.norm_num_groups,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in u.attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.attention)),
        attention_head_dim=u.attention_head_dim, num_class_embeds=num_classes + 1,
    )


def _load_unet(path: Path):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False)


register_backend("dit", Backend(_build_dit, _load_dit, _forward_dit, lambda m: m.config.num_embeds_ada_norm))
register_backend("unet", Backend(_build_unet, _load_unet,
                                 lambda m, z, t, labels: m(z, t, class_labels=labels).sample,
                                 lambda m: m.config.num_class_embeds - 1))


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"unknown generator backend '{name}'; generator.backend must be one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


# ---------------------------------------------------------------- the generator


class Generator:
    """A class-conditional denoiser, optionally over an autoencoder's latents, with the
    metadata tying it to a dataset. In pixel space (no autoencoder) the 'latents' are the
    images scaled to [-1, 1]."""

    def __init__(self, autoencoder: torch.nn.Module | None, denoiser: torch.nn.Module, info: dict):
        self.autoencoder = autoencoder
        self.denoiser = denoiser
        self.info = info
        self.labels: list[int] | None = None  # the denoiser's label of each dataset class, set by bind()
        self._backend = backend(self.backend_name)
        if denoiser is not None:  # applied at load: save_pretrained's config does not keep it
            set_timestep_embedding(denoiser, info.get("timestep_embedding", "diffusers"))

    @property
    def backend_name(self) -> str:
        return self.info.get("backend", "dit")

    @property
    def prediction(self) -> str:
        return self.info.get("prediction", "epsilon")

    @property
    def num_classes(self) -> int:
        return len(self.info["class_names"])

    @property
    def null_class(self) -> int:
        return self._backend.null_class(self.denoiser)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.denoiser.config.in_channels
        s = self.denoiser.config.sample_size
        return (c, s, s)

    def bind(self, class_ids: list[str], class_names: list[str]) -> None:
        """Map a dataset's classes to the denoiser's labels: the same classes, or a subset of
        them (ImageNette from an ImageNet-1K DiT), matched by class id."""
        ids = self.info.get("class_ids") or self.info["class_names"]
        if list(class_names) == self.info["class_names"] and len(class_ids) == len(ids):
            self.labels = list(range(len(ids)))
        elif set(class_ids) <= set(ids):
            self.labels = [ids.index(c) for c in class_ids]
        else:
            missing = [c for c in class_ids if c not in ids]
            raise UserError(f"the generator knows no class {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                            f"of the dataset (it has {', '.join(ids[:3])}...); retrain it (`otdistill train-generator "
                            "--force`) or fix data.class_list")

    def label(self, class_index: int) -> int:
        return self.labels[class_index] if self.labels is not None else class_index

    def to(self, device) -> "Generator":
        if self.autoencoder is not None:
            self.autoencoder.to(device)
        self.denoiser.to(device)
        return self

    @property
    def learned_sigma(self) -> bool:
        """Whether the denoiser also outputs variance channels (DiT-XL/2 does: DiT's learned range)."""
        return self.denoiser.config.out_channels == 2 * self.denoiser.config.in_channels

    def reads_variance(self, kind: str) -> bool:
        """Whether sampler `kind` uses the learned variance: DDPM does, DDIM has no variance to learn."""
        return kind == "ddpm" and self.learned_sigma

    def noise_scheduler(self, kind: str = "ddpm", steps: int | None = None, spacing: str = "leading"):
        """The diffusers scheduler `kind` on the generator's noise schedule; given `steps`, set to
        visit them by `spacing` (SPACINGS). A learned-sigma DiT's DDPM interpolates its variance
        between the posterior's and beta_t (diffusers' learned_range, DiT's LEARNED_RANGE)."""
        from diffusers import DDIMScheduler, DDPMScheduler

        classes = dict(zip(SAMPLERS, (DDIMScheduler, DDPMScheduler)))
        if kind not in classes:
            raise UserError(f"unknown scheduler '{kind}'; sample.scheduler must be one of {', '.join(SAMPLERS)}")
        variance = {"variance_type": "learned_range"} if self.reads_variance(kind) else {}
        sched = classes[kind](num_train_timesteps=self.info["num_train_timesteps"], clip_sample=False,
                              prediction_type=self.prediction, **variance,
                              **SCHEDULES[self.info.get("noise_schedule", "linear")])
        if steps is None:
            return sched
        if spacing == "leading":
            sched.set_timesteps(steps)
        elif spacing == "dit" and kind == "ddpm":
            sched.set_timesteps(timesteps=dit_timesteps(self.info["num_train_timesteps"], steps))
        else:
            raise UserError(f"sample.spacing={spacing} needs sample.scheduler=ddpm (diffusers' DDIM steps by a fixed "
                            f"stride); spacing must be one of {', '.join(SPACINGS)}")
        return sched

    def forward(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, variance: bool = False) -> torch.Tensor:
        """The denoiser's raw prediction (noise or velocity, see `prediction`) for denoiser labels;
        with `variance`, a learned-sigma DiT's variance channels follow it."""
        out = self._backend.forward(self.denoiser, z, t, labels)
        return out if variance else out[:, :z.shape[1]]

    def predict(self, z: torch.Tensor, t, class_index: int | Sequence[int], cfg_scale: float,
                cfg_channels: str = "all", variance: bool = False) -> torch.Tensor:
        """The prediction with classifier-free guidance in one batched forward pass; one class
        for all rows, or a class per row. At scale 1 the unconditional half is skipped. CFG acts
        on the leading channels `cfg_channels` names (CFG_CHANNELS); the rest, variance channels
        included, are the conditional branch's, as in DiT's forward_with_cfg."""
        if cfg_channels not in CFG_CHANNELS:
            raise UserError(f"unknown sample.cfg_channels '{cfg_channels}'; use one of {', '.join(CFG_CHANNELS)}")
        n = len(z)
        rows = [class_index] * n if isinstance(class_index, int) else list(class_index)
        labels = [self.label(c) for c in rows]
        if cfg_scale != 1.0:
            labels += [self.null_class] * n
            z = torch.cat([z, z])
        timesteps = torch.full((len(labels),), int(t), device=z.device, dtype=torch.long)
        out = self.forward(z, timesteps, torch.tensor(labels, device=z.device), variance)
        if cfg_scale == 1.0:
            return out
        cond, uncond = out.chunk(2)
        k = CFG_CHANNELS[cfg_channels] or z.shape[1]
        if k == out.shape[1]:
            return uncond + cfg_scale * (cond - uncond)
        return torch.cat([uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k]), cond[:, k:]], dim=1)

    def clean(self, pred: torch.Tensor, z: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """The clean latent a prediction stands for (the schedulers' x0): (z_t - sqrt(1 - ab) eps) / sqrt(ab),
        or sqrt(ab) z_t - sqrt(1 - ab) v from a velocity; differentiable."""
        if self.prediction == "epsilon":
            return (z - (1 - alpha_bar) ** 0.5 * pred) / alpha_bar ** 0.5
        return alpha_bar ** 0.5 * z - (1 - alpha_bar) ** 0.5 * pred

    def predicted_noise(self, pred: torch.Tensor, z: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """The noise a prediction stands for: itself, or sqrt(ab) v + sqrt(1 - ab) z_t from a velocity."""
        if self.prediction == "epsilon":
            return pred
        return alpha_bar ** 0.5 * pred + (1 - alpha_bar) ** 0.5 * z

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> scaled latents (posterior mean)."""
        if self.autoencoder is None:
            return images * 2 - 1
        dist = self.autoencoder.encode(images * 2 - 1).latent_dist
        return dist.mean * self.autoencoder.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1] (differentiable, for guidance terms)."""
        out = latents if self.autoencoder is None else \
            self.autoencoder.decode(latents / self.autoencoder.config.scaling_factor).sample
        return ((out + 1) / 2).clamp(0, 1)

    def save(self, path: str | Path) -> None:
        """Write the folder (callers wrap this in io.atomic_path)."""
        from ..io import write_json

        path = Path(path)
        if self.autoencoder is not None:
            self.autoencoder.save_pretrained(path / "autoencoder")
        self.denoiser.save_pretrained(path / self.backend_name)
        write_json(path / "generator.json", self.info)


def load_generator(path: str | Path, device="cpu") -> Generator:
    path = Path(path)
    if not (path / "generator.json").exists():
        raise UserError(f"{path} is not a generator folder (no generator.json); train one with "
                        "`otdistill train-generator CONFIG`")
    info = read_json(path / "generator.json")
    name = info.get("backend", "dit")
    parts = [name] + ([] if info.get("space") == "pixel" else ["autoencoder"])
    for part in parts:
        if not (path / part).exists():
            raise UserError(f"{path} is not a generator folder (no {part}); train one with `otdistill train-generator CONFIG`")
    ae = None if info.get("space") == "pixel" else load_autoencoder(path)
    try:
        denoiser = backend(name).load(path / name)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"could not load the generator in {path}: {exc}") from None
    model = Generator(ae, denoiser.eval().requires_grad_(False), info)
    if model.null_class != model.num_classes:
        raise UserError(f"generator in {path}: the {name} has {model.null_class} classes but generator.json "
                        f"lists {model.num_classes}")
    return model.to(device)
