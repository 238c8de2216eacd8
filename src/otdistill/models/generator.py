"""The class-conditional latent diffusion generator, assembled from diffusers parts.

On disk a generator is a folder:
    autoencoder/   diffusers AutoencoderKL (save_pretrained)
    dit/           diffusers DiTTransformer2DModel (save_pretrained); class index K is the
                   null class used for classifier-free guidance
    generator.json class names, image shape, noise schedule, how it was made
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import AutoencoderConfig, DiTConfig
from ..errors import UserError
from ..io import read_json

# DiT's noise schedule (linear betas); the sampler's scheduler is derived from it.
SCHEDULE = {"beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear", "clip_sample": False}


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


def build_dit(cfg: DiTConfig, latent_channels: int, latent_size: int, num_classes: int):
    from diffusers import DiTTransformer2DModel

    if latent_size % cfg.patch_size:
        raise UserError(f"latent size {latent_size} is not divisible by generator.dit.patch_size={cfg.patch_size}")
    return DiTTransformer2DModel(
        num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
        in_channels=latent_channels, out_channels=latent_channels, num_layers=cfg.num_layers,
        sample_size=latent_size, patch_size=cfg.patch_size, num_embeds_ada_norm=num_classes,
    )


@dataclass
class LatentDiffusion:
    """An autoencoder, a class-conditional DiT and the metadata tying them to a dataset."""

    autoencoder: torch.nn.Module
    dit: torch.nn.Module
    info: dict
    labels: list[int] | None = None  # the DiT label of each dataset class, set by bind()

    @property
    def num_classes(self) -> int:
        return len(self.info["class_names"])

    @property
    def null_class(self) -> int:
        return self.dit.config.num_embeds_ada_norm  # the extra embedding row CFG conditions on

    def bind(self, class_ids: list[str], class_names: list[str]) -> None:
        """Map a dataset's classes to the DiT's labels: the same classes, or a subset of them
        (ImageNette from an ImageNet-1K DiT), matched by class id."""
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

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.dit.config.in_channels
        s = self.dit.config.sample_size
        return (c, s, s)

    def to(self, device) -> "LatentDiffusion":
        self.autoencoder.to(device)
        self.dit.to(device)
        return self

    def noise_scheduler(self, kind: str = "ddpm"):
        from diffusers import DDIMScheduler, DDPMScheduler

        classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
        if kind not in classes:
            raise UserError(f"unknown scheduler '{kind}'; sample.scheduler must be ddim or ddpm")
        return classes[kind](num_train_timesteps=self.info["num_train_timesteps"], **SCHEDULE)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> scaled latents (posterior mean)."""
        dist = self.autoencoder.encode(images * 2 - 1).latent_dist
        return dist.mean * self.autoencoder.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1] (differentiable, for guidance terms)."""
        out = self.autoencoder.decode(latents / self.autoencoder.config.scaling_factor).sample
        return ((out + 1) / 2).clamp(0, 1)

    def save(self, path: str | Path) -> None:
        """Write the folder (callers wrap this in io.atomic_path)."""
        from ..io import write_json

        path = Path(path)
        self.autoencoder.save_pretrained(path / "autoencoder")
        self.dit.save_pretrained(path / "dit")
        write_json(path / "generator.json", self.info)


def load_generator(path: str | Path, device="cpu") -> LatentDiffusion:
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    path = Path(path)
    for part in ("autoencoder", "dit", "generator.json"):
        if not (path / part).exists():
            raise UserError(f"{path} is not a generator folder (no {part}); train one with `otdistill train-generator CONFIG`")
    info = read_json(path / "generator.json")
    try:
        ae = AutoencoderKL.from_pretrained(path / "autoencoder", use_safetensors=True, low_cpu_mem_usage=False)
        dit = DiTTransformer2DModel.from_pretrained(path / "dit", use_safetensors=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"could not load the generator in {path}: {exc}") from None
    if dit.config.num_embeds_ada_norm != len(info["class_names"]):
        raise UserError(f"generator in {path}: the DiT has {dit.config.num_embeds_ada_norm} classes but generator.json "
                        f"lists {len(info['class_names'])}")
    ae.eval().requires_grad_(False)
    dit.eval().requires_grad_(False)
    return LatentDiffusion(ae, dit, info).to(device)
