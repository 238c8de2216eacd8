"""Random-weight stand-ins for the real checkpoint files the ImageNet path reads, in their real
formats: an original facebookresearch DiT state dict and an AutoencoderKL. Shared by
imagenet_rehearsal.py (at DiT-XL/2 + SD-VAE size) and the tests (tiny), so both exercise the
importer on the same kind of file. Nothing here comes from the library under test.
"""

from __future__ import annotations

import numpy as np
import torch

# the SD VAE's shape (stabilityai/sd-vae-ft-ema / -mse config.json: 4 levels, 2 ResNet blocks a level,
# 4 latent channels, 32 groups, 256 px, latents scaled by 0.18215)
SD_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32,
          "sample_size": 256}


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """DiT's fixed positional table (the MAE recipe), written out independently."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return np.concatenate([one_d(dim // 2, w), one_d(dim // 2, h)], axis=1)


def original_dit_state_dict(seed: int = 0, hidden: int = 32, depth: int = 2, classes: int = 5, size: int = 4,
                            patch: int = 2, in_channels: int = 4, std: float | None = 0.2) -> dict:
    """Random weights under facebookresearch/DiT's parameter names (learned sigma: 2x channels out,
    classes + 1 label rows, the last the null class); nothing is zero, adaLN included, so every
    part of the function counts. std None scales each weight by 1 / sqrt(fan-in) instead of a fixed
    std, which keeps a 28-block, width-1152 DiT's activations finite."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        scale = std if std is not None else (1 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.02)
        return torch.randn(*shape, generator=g) * scale

    d, out = hidden, patch * patch * 2 * in_channels
    sd = {"x_embedder.proj.weight": r(d, in_channels, patch, patch), "x_embedder.proj.bias": r(d),
          "t_embedder.mlp.0.weight": r(d, 256), "t_embedder.mlp.0.bias": r(d),
          "t_embedder.mlp.2.weight": r(d, d), "t_embedder.mlp.2.bias": r(d),
          # an embedding row is not a matrix product: unit scale, as nn.Embedding initialises it
          "y_embedder.embedding_table.weight": r(classes + 1, d) * (1 if std is not None else np.sqrt(d)),
          "pos_embed": torch.from_numpy(sincos_2d(d, size // patch)).float()[None],
          "final_layer.linear.weight": r(out, d), "final_layer.linear.bias": r(out),
          "final_layer.adaLN_modulation.1.weight": r(2 * d, d), "final_layer.adaLN_modulation.1.bias": r(2 * d)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d),
                   b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
                   b + "mlp.fc1.weight": r(4 * d, d), b + "mlp.fc1.bias": r(4 * d),
                   b + "mlp.fc2.weight": r(d, 4 * d), b + "mlp.fc2.bias": r(d),
                   b + "adaLN_modulation.1.weight": r(6 * d, d), b + "adaLN_modulation.1.bias": r(6 * d)})
    return sd


def autoencoder_kl(block_out_channels=(8, 8), layers_per_block: int = 1, norm_num_groups: int = 4,
                   latent_channels: int = 4, sample_size: int = 32, seed: int = 0):
    """A diffusers AutoencoderKL with diffusers' own random initialisation (seeded); SD_VAE gives the
    SD VAE's shape."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    levels = len(block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(block_out_channels),
                         layers_per_block=layers_per_block, latent_channels=latent_channels,
                         norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=0.18215)
