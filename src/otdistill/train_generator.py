"""Train the latent diffusion generator: the autoencoder first, then the DiT on its latents."""

from __future__ import annotations

import copy
import logging
import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import GeneratorConfig
from .data import ImageSet, LabelledData
from .io import atomic_path, generator, invoked_command
from .models.generator import (
    LatentDiffusion,
    build_autoencoder,
    build_dit,
    load_generator,
)

log = logging.getLogger(__name__)


def random_batches(n: int, batch_size: int, steps: int, g: torch.Generator):
    """`steps` index batches drawn epoch by epoch from seeded permutations."""
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos:pos + batch_size]
        pos += batch_size


def to_unit(images_uint8: torch.Tensor, device) -> torch.Tensor:
    return images_uint8.to(device=device, dtype=torch.float32) / 255.0


def cosine_lr(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_autoencoder(cfg: GeneratorConfig, train: ImageSet, channels: int, image_size: int, device, quiet=False):
    ae = build_autoencoder(cfg.autoencoder, channels, image_size).to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.autoencoder.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, cfg.autoencoder.steps))
    g = generator(cfg.seed, "autoencoder")
    torch.manual_seed(cfg.seed)
    ae.train()
    bar = tqdm(random_batches(len(train), cfg.autoencoder.batch_size, cfg.autoencoder.steps, g),
               total=cfg.autoencoder.steps, desc="autoencoder", disable=quiet)
    for idx in bar:
        x = to_unit(train.get(idx), device) * 2 - 1
        post = ae.encode(x).latent_dist
        recon = ae.decode(post.sample(generator=None)).sample
        rec = F.mse_loss(recon, x)
        loss = rec + cfg.autoencoder.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{rec.item():.4f}")
    ae.eval().requires_grad_(False)
    return ae


@torch.no_grad()
def encode_all(model: LatentDiffusion, images: ImageSet, device, indices: torch.Tensor | None = None,
               batch_size: int = 500, desc: str | None = None) -> torch.Tensor:
    """Scaled latents of `images` (or of those at `indices`), in batches, on the CPU; a progress
    bar when `desc` is given."""
    indices = torch.arange(len(images)) if indices is None else indices
    starts = tqdm(range(0, len(indices), batch_size), desc=desc, unit="batch", disable=desc is None, leave=False)
    return torch.cat([model.encode(to_unit(images.get(indices[s:s + batch_size]), device)).cpu() for s in starts])


def train_dit(cfg: GeneratorConfig, model: LatentDiffusion, latents: torch.Tensor, labels: torch.Tensor, device, quiet=False):
    dit = model.dit.to(device).train().requires_grad_(True)
    ema = copy.deepcopy(dit).eval().requires_grad_(False)
    opt = torch.optim.AdamW(dit.parameters(), lr=cfg.dit.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, cfg.dit.steps))
    noise_sched = model.noise_scheduler("ddpm")
    g = generator(cfg.seed, "dit")
    # diffusers' label embedding drops 10% of class labels to the null class in train mode
    # (classifier-free guidance) using the global RNG, so seed it too.
    torch.manual_seed(cfg.seed)
    T = noise_sched.config.num_train_timesteps
    bar = tqdm(random_batches(len(latents), cfg.dit.batch_size, cfg.dit.steps, g), total=cfg.dit.steps,
               desc="dit", disable=quiet)
    for idx in bar:
        z0 = latents[idx].to(device)
        y = labels[idx].to(device)
        noise = torch.randn(z0.shape, generator=g).to(device)
        t = torch.randint(0, T, (len(idx),), generator=g).to(device)
        zt = noise_sched.add_noise(z0, noise, t)
        pred = dit(zt, timestep=t, class_labels=y).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), dit.parameters()):
                pe.lerp_(p, 1 - cfg.dit.ema_decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema


def train_generator(cfg: GeneratorConfig, data: LabelledData, device, quiet=False) -> LatentDiffusion:
    """Train both parts and save the generator folder at cfg.path (atomically)."""
    start = time.time()
    ae = train_autoencoder(cfg, data.train, data.channels, data.image_size, device, quiet)
    info = {
        "class_names": data.class_names, "class_ids": data.class_ids, "dataset": data.name,
        "channels": data.channels, "image_size": data.image_size,
        "num_train_timesteps": cfg.num_train_timesteps,
        "command": invoked_command(),
    }
    factor = 2 ** (len(cfg.autoencoder.block_out_channels) - 1)
    dit = build_dit(cfg.dit, cfg.autoencoder.latent_channels, data.image_size // factor, data.num_classes)
    model = LatentDiffusion(ae, dit, info)
    latents = encode_all(model, data.train, device, desc=None if quiet else "encode training images")
    # Unit-variance latents suit the DiT's noise schedule (the SD VAE's 0.18215 plays this role).
    scale = 1.0 / latents.std().item()
    ae.register_to_config(scaling_factor=scale)
    latents = latents * scale
    recon = model.decode(latents[:500].to(device)).cpu()
    info["autoencoder_mse"] = F.mse_loss(recon, to_unit(data.train.get(torch.arange(500)), "cpu")).item()
    model.dit = train_dit(cfg, model, latents, data.train.labels, device, quiet)
    info["train_seconds"] = round(time.time() - start, 1)
    with atomic_path(cfg.path) as tmp:
        model.save(tmp)
    log.info("generator saved to %s", cfg.path)
    return load_generator(cfg.path, device)
