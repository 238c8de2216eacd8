"""Train the generator: the autoencoder first (latent space), then the denoiser on its latents.

Both trainings are resumable: every generator.checkpoint_every steps their full state
(weights, EMA, optimiser, schedule, batch order, RNG) is written atomically to
PATH.training/, and the same command after a kill continues from there to the same weights
an uninterrupted run ends with. Raising the step count continues a finished training.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import GeneratorConfig, fingerprint
from .data import ImageSet, LabelledData, to_unit
from .errors import UserError
from .io import atomic_path, generator, invoked_command, read_json
from .models.generator import (
    Generator,
    backend,
    build_autoencoder,
    load_autoencoder,
    load_generator,
)
from .progress import progress

log = logging.getLogger(__name__)

WEIGHTINGS = ("none", "min_snr")


class BatchStream:
    """Index batches drawn epoch by epoch from seeded permutations; its state (generator,
    permutation, position) is saved with a training so a resumed run draws the same batches."""

    def __init__(self, n: int, batch_size: int, g: torch.Generator):
        self.n, self.batch_size, self.g = n, batch_size, g
        self.perm, self.pos = torch.randperm(n, generator=g), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.g), 0
        self.pos += self.batch_size
        return self.perm[self.pos - self.batch_size:self.pos]

    def state_dict(self) -> dict:
        return {"g": self.g.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["g"])
        self.perm, self.pos = state["perm"], state["pos"]


def warmup_cosine(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def training_dir(cfg: GeneratorConfig) -> Path:
    path = Path(cfg.path)
    return path.with_name(path.name + ".training")


class Resumable:
    """One training's loop state on disk: restored when its recipe matches, saved atomically."""

    def __init__(self, cfg: GeneratorConfig, part: str, recipe: str, modules: dict, stream: BatchStream):
        self.file = training_dir(cfg) / f"{part}.pt"
        self.part, self.recipe, self.modules, self.stream = part, recipe, modules, stream
        self.every = cfg.checkpoint_every
        self.seconds_before, self.begun = 0.0, time.time()

    def restore(self) -> int:
        """The step to continue from (0 when nothing was saved)."""
        self.begun = time.time()
        if not self.file.exists():
            return 0
        state = torch.load(self.file, map_location="cpu", weights_only=False)
        if state["recipe"] != self.recipe:
            raise UserError(f"{self.file} holds a {self.part} training made with a different recipe; rerun with "
                            "--force to start over, or restore the generator keys it was made with")
        for name, m in self.modules.items():
            m.load_state_dict(state[name])
        self.stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["rng"])
        self.seconds_before = state["seconds"]
        log.info("resuming the %s training at step %d", self.part, state["step"])
        return state["step"]

    def save(self, step: int) -> None:
        state = {name: m.state_dict() for name, m in self.modules.items()}
        state.update(recipe=self.recipe, step=step, stream=self.stream.state_dict(), rng=torch.get_rng_state(),
                     seconds=self.seconds())
        with atomic_path(self.file) as tmp:
            torch.save(state, tmp)

    def seconds(self) -> float:
        """Training seconds over every run that contributed (killed, resumed or continued)."""
        return round(self.seconds_before + time.time() - self.begun, 1)

    def after_step(self, step: int, total: int) -> None:
        if step == total or (self.every and step % self.every == 0):
            self.save(step)


def _loop(name: str, total: int, state: Resumable, step_fn, quiet: bool) -> float:
    """Run step_fn from the saved step to `total`; returns the training's seconds in all."""
    start = state.restore()
    bar = progress(range(start, total), total=total, initial=start, desc=name, disable=quiet)
    for step in bar:
        bar.set_postfix(loss=f"{step_fn(step):.4f}")
        state.after_step(step + 1, total)
    return state.seconds()


def _recipe(*sections) -> str:
    """The recipe of a training without its step count, which may grow."""
    return fingerprint(*[dataclasses.replace(s, steps=0) if hasattr(s, "steps") else s for s in sections])


def train_autoencoder(cfg: GeneratorConfig, train: ImageSet, channels: int, image_size: int, device, quiet=False):
    a = cfg.autoencoder
    torch.manual_seed(cfg.seed)  # initial weights; the posterior's samples use the global RNG too, saved with the state
    ae = build_autoencoder(a, channels, image_size).to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, a.steps))
    stream = BatchStream(len(train), a.batch_size, generator(cfg.seed, "autoencoder"))
    state = Resumable(cfg, "autoencoder", _recipe(a, cfg.seed), {"model": ae, "opt": opt, "sched": sched}, stream)
    ae.train()

    def step(_):
        x = to_unit(train.get(stream.next()), device) * 2 - 1
        post = ae.encode(x).latent_dist
        rec = F.mse_loss(ae.decode(post.sample()).sample, x)
        loss = rec + a.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return rec.item()

    seconds = _loop("autoencoder", a.steps, state, step, quiet)
    ae.eval().requires_grad_(False)
    return ae, seconds


@torch.no_grad()
def encode_all(model: Generator, images: ImageSet, device, indices: torch.Tensor | None = None,
               batch_size: int = 500, desc: str | None = None) -> torch.Tensor:
    """Scaled latents of `images` (or of those at `indices`), in batches, on the CPU; a progress
    bar when `desc` is given."""
    indices = torch.arange(len(images)) if indices is None else indices
    starts = progress(range(0, len(indices), batch_size), desc=desc, unit="batch", disable=desc is None, leave=False)
    return torch.cat([model.encode(to_unit(images.get(indices[s:s + batch_size]), device)).cpu() for s in starts])


def loss_weights(alpha_bar: torch.Tensor, cfg) -> torch.Tensor:
    """Per-sample weights of the MSE: min-SNR-gamma (Hang et al. 2023) expressed for the
    target the denoiser predicts, or ones."""
    if cfg.loss_weighting == "none":
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=cfg.min_snr_gamma)
    return clipped / snr if cfg.prediction == "epsilon" else clipped / (snr + 1)


def train_denoiser(cfg: GeneratorConfig, model: Generator, latents: torch.Tensor, labels: torch.Tensor, device,
                   quiet=False):
    d = cfg.diffusion
    net = model.denoiser.to(device).train().requires_grad_(True)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=d.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, d.steps, d.warmup_steps))
    noise_sched = model.noise_scheduler("ddpm")
    alphas = noise_sched.alphas_cumprod.to(device)
    g = generator(cfg.seed, "denoiser")
    stream = BatchStream(len(latents), d.batch_size, g)
    arch = cfg.dit if cfg.backend == "dit" else cfg.unet
    # the latents it learns depend on every autoencoder key, its step count included
    ae_recipe = [dataclasses.asdict(cfg.autoencoder)] if cfg.space == "latent" else []
    recipe = _recipe(cfg.space, cfg.backend, arch, d, cfg.seed, *ae_recipe)
    state = Resumable(cfg, "denoiser", recipe, {"model": net, "ema": ema, "opt": opt, "sched": sched}, stream)
    T = noise_sched.config.num_train_timesteps
    null = model.null_class

    def step(i):
        idx = stream.next()
        z0 = latents[idx].to(device)
        y = labels[idx].clone()
        y[torch.rand(len(idx), generator=g) < d.label_drop] = null
        noise = torch.randn(z0.shape, generator=g).to(device)
        t = torch.randint(0, T, (len(idx),), generator=g).to(device)
        zt = noise_sched.add_noise(z0, noise, t)
        target = noise if d.prediction == "epsilon" else noise_sched.get_velocity(z0, noise, t)
        per_sample = (model.forward(zt, t, y.to(device)) - target).pow(2).flatten(1).mean(1)
        loss = (per_sample * loss_weights(alphas[t], d)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - d.ema_decay)
        if i + 1 in cfg.snapshot_steps:
            snapshot(cfg, model, ema, i + 1, state.seconds())
        return loss.item()

    seconds = _loop(cfg.backend, d.steps, state, step, quiet)
    return ema, seconds


def snapshot(cfg: GeneratorConfig, model: Generator, ema, step: int, seconds: float) -> None:
    """Save the EMA denoiser at this step as a generator folder beside the training state."""
    info = {**model.info, "snapshot": {"step": step, "train_seconds": seconds}}
    with atomic_path(training_dir(cfg) / f"step-{step}") as tmp:
        Generator(model.autoencoder, ema, info).save(tmp)


def train_generator(cfg: GeneratorConfig, data: LabelledData, device, quiet=False, force=False) -> Generator:
    """Train (or continue) both parts and save the generator folder at cfg.path (atomically)."""
    if force:
        shutil.rmtree(training_dir(cfg), ignore_errors=True)
    info = {
        "class_names": data.class_names, "class_ids": data.class_ids, "dataset": data.name,
        "channels": data.channels, "image_size": data.image_size, "space": cfg.space, "backend": cfg.backend,
        "prediction": cfg.diffusion.prediction, "noise_schedule": cfg.diffusion.noise_schedule,
        "num_train_timesteps": cfg.diffusion.num_train_timesteps,
        "recipe": dataclasses.asdict(cfg), "command": invoked_command(),
    }
    seconds = {}
    ae, size = None, data.image_size
    if cfg.space == "latent" and cfg.autoencoder.pretrained:
        ae = load_autoencoder(cfg.autoencoder.pretrained).to(device)
        check_autoencoder_fits(ae, data.channels, data.image_size)
    elif cfg.space == "latent":
        ae, seconds["autoencoder"] = train_autoencoder(cfg, data.train, data.channels, data.image_size, device, quiet)
    if ae is not None:
        size //= 2 ** (len(ae.config.block_out_channels) - 1)
    channels = ae.config.latent_channels if ae is not None else data.channels
    torch.manual_seed(cfg.seed)  # the denoiser's initial weights
    model = Generator(ae, backend(cfg.backend).build(cfg, channels, size, data.num_classes), info)
    latents = encode_all(model, data.train, device, desc=None if quiet else "encode training images")
    if ae is not None and not cfg.autoencoder.pretrained:
        # Unit-variance latents suit the noise schedule (the SD VAE's 0.18215 plays this role).
        scale = 1.0 / latents.std().item()
        ae.register_to_config(scaling_factor=scale)
        latents = latents * scale
    if ae is not None:
        recon = model.decode(latents[:500].to(device)).cpu()
        info["autoencoder_mse"] = F.mse_loss(recon, to_unit(data.train.get(torch.arange(500)), "cpu")).item()
    model.denoiser, seconds["denoiser"] = train_denoiser(cfg, model, latents, data.train.labels, device, quiet)
    info["train_seconds"] = {**seconds, "total": round(sum(seconds.values()), 1)}
    with atomic_path(cfg.path) as tmp:
        model.save(tmp)
    log.info("generator saved to %s", cfg.path)
    return load_generator(cfg.path, device)


def check_autoencoder_fits(ae, channels: int, image_size: int) -> None:
    factor = 2 ** (len(ae.config.block_out_channels) - 1)
    if ae.config.in_channels != channels or image_size % factor:
        raise UserError(f"generator.autoencoder.pretrained takes {ae.config.in_channels}-channel images with sides "
                        f"divisible by {factor}; the data has {channels} channels at {image_size} px")


def needs_more_steps(cfg: GeneratorConfig) -> bool:
    """Whether the trained generator at cfg.path recorded fewer steps than cfg asks for (an
    imported or older folder records none and is taken as finished)."""
    made = read_json(Path(cfg.path) / "generator.json").get("recipe")
    if not made:
        return False
    return cfg.diffusion.steps > made["diffusion"]["steps"] or (
        cfg.space == "latent" and not cfg.autoencoder.pretrained and cfg.autoencoder.steps > made["autoencoder"]["steps"])
