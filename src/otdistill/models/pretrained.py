"""Real checkpoints from local files, never the network, converted once into otdistill folders.

- DiT: the original facebookresearch `.pt` state dict (e.g. DiT-XL-2-256x256.pt), converted
  to the diffusers DiTTransformer2DModel, or a diffusers folder (a pipeline's transformer/).
- VAE: a diffusers AutoencoderKL folder (stabilityai/sd-vae-ft-mse or -ema, or a pipeline's vae/).
- Classifiers: torchvision architectures with a local state-dict file (e.g. resnet18-f37072fd.pth).

Loading is safe only: safetensors, or torch.load(weights_only=True), which refuses pickled
code. A wrong file, format or shape ends in one UserError naming what was expected.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import UserError

# attention heads of the published DiT sizes, by hidden width (S, B, L and XL)
DIT_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or a .pt/.pth/.bin file; a training checkpoint's "ema",
    "model" or "state_dict" entry is unwrapped (EMA first, as DiT samples from it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, SafetensorError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a loadable tensor checkpoint ({first}); otdistill reads safetensors or "
                        "torch.save'd state dicts of plain tensors only (never pickled objects)") from None
    for key in ("ema", "model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return sd


def dit_from_original(sd: dict[str, torch.Tensor], heads: int | None = None, where: str = "checkpoint"):
    """A diffusers DiTTransformer2DModel with the weights of an original-format DiT state dict
    (facebookresearch/DiT models.py names), computing the original's function: its timestep
    embedding included (generator.json records it, see TIMESTEP_EMBEDDINGS). Its shape is read
    from the tensors; the number of heads from the published sizes unless given."""
    from diffusers import DiTTransformer2DModel

    from .generator import set_timestep_embedding

    needed = ["x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
              "blocks.0.attn.qkv.weight", "final_layer.linear.weight", "pos_embed"]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise UserError(f"{where} is not an original DiT state dict (no {', '.join(missing[:3])}); give a "
                        "facebookresearch DiT .pt such as DiT-XL-2-256x256.pt, or a diffusers folder")
    hidden, in_channels, patch, _ = sd["x_embedder.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = heads or DIT_HEADS.get(hidden)
    if heads is None or hidden % heads:
        raise UserError(f"{where}: a DiT of width {hidden} is not a published size; give the number of attention "
                        "heads (--heads)")
    grid = math.isqrt(sd["pos_embed"].shape[1])
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=in_channels,
        out_channels=sd["final_layer.linear.weight"].shape[0] // (patch * patch), num_layers=depth,
        sample_size=grid * patch, patch_size=patch,
        num_embeds_ada_norm=sd["y_embedder.embedding_table.weight"].shape[0] - 1)  # last row: the null class
    new = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"], "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"], "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        # diffusers keeps a copy of the (shared) timestep and class embedders in every block
        emb = dst + "norm1.emb."
        for j, k in ((0, 1), (2, 2)):
            for p in ("weight", "bias"):
                new[f"{emb}timestep_embedder.linear_{k}.{p}"] = sd[f"t_embedder.mlp.{j}.{p}"]
        new[emb + "class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"]
        for p in ("weight", "bias"):
            q, k, v = sd[f"{src}attn.qkv.{p}"].chunk(3)
            new.update({f"{dst}attn1.to_q.{p}": q, f"{dst}attn1.to_k.{p}": k, f"{dst}attn1.to_v.{p}": v})
            new[f"{dst}attn1.to_out.0.{p}"] = sd[f"{src}attn.proj.{p}"]
            new[f"{dst}norm1.linear.{p}"] = sd[f"{src}adaLN_modulation.1.{p}"]
            new[f"{dst}ff.net.0.proj.{p}"] = sd[f"{src}mlp.fc1.{p}"]
            new[f"{dst}ff.net.2.{p}"] = sd[f"{src}mlp.fc2.{p}"]
    try:
        model.load_state_dict(new, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{where}: the DiT weights do not fit together ({str(exc).splitlines()[1].strip()})") from None
    set_timestep_embedding(model, "dit-original")
    fixed = model.pos_embed.pos_embed
    if not torch.allclose(sd["pos_embed"].float().view_as(fixed), fixed, atol=1e-4):
        raise UserError(f"{where}: its positional embedding is not DiT's fixed 2-D sin-cos table; it is not a DiT "
                        "checkpoint this converter knows")
    return model


def load_dit(path: str | Path, heads: int | None = None):
    """A DiT from an original .pt/.safetensors state dict (converted to compute the original's
    function) or a diffusers folder (safetensors), which loads as it is, diffusers' timestep
    embedding included."""
    from diffusers import DiTTransformer2DModel

    path = Path(path)
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        try:
            return DiTTransformer2DModel.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"{folder} is not a diffusers DiT folder with safetensors weights "
                            f"({str(exc).splitlines()[0]})") from None
    return dit_from_original(read_state_dict(path), heads, str(path))


def load_vae(path: str | Path):
    """A diffusers AutoencoderKL folder (safetensors), e.g. sd-vae-ft-ema, or a pipeline's vae/."""
    from .generator import load_autoencoder

    return load_autoencoder(path, "vae", "give the local copy of stabilityai/sd-vae-ft-ema or sd-vae-ft-mse")


def _class_list(class_ids: list[str], class_names: list[str] | None, expected: int, what: str) -> list[str]:
    if len(class_ids) != expected:
        raise UserError(f"{what} has {expected} classes but the class list has {len(class_ids)}; give the list of "
                        "class ids in the model's label order (for ImageNet-1K: the 1000 sorted wnids)")
    if class_names is not None and len(class_names) != len(class_ids):
        raise UserError(f"{len(class_names)} class names for {len(class_ids)} class ids")
    return class_names or list(class_ids)


def import_generator(dit_path: str | Path, vae_path: str | Path, class_ids: list[str], out: str | Path,
                     class_names: list[str] | None = None, heads: int | None = None) -> Path:
    """Convert a local DiT + VAE into an otdistill generator folder (autoencoder/, dit/,
    generator.json), written atomically; returns its path."""
    from ..io import atomic_path, invoked_command, sha256_file
    from .generator import Generator

    dit, vae = load_dit(dit_path, heads), load_vae(vae_path)
    if vae.config.latent_channels != dit.config.in_channels:
        raise UserError(f"the VAE makes {vae.config.latent_channels}-channel latents but the DiT takes "
                        f"{dit.config.in_channels}; they do not belong together")
    names = _class_list(class_ids, class_names, dit.config.num_embeds_ada_norm, f"the DiT {dit_path}")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    info = {"class_names": names, "class_ids": list(class_ids), "dataset": "imported",
            "channels": vae.config.in_channels, "image_size": dit.config.sample_size * factor,
            "num_train_timesteps": 1000,
            # load_dit converts an original DiT file to the original's; a diffusers folder stays as it is
            "timestep_embedding": "diffusers" if Path(dit_path).is_dir() else "dit-original", "imported": {
                "dit": str(dit_path), "vae": str(vae_path),
                "dit_sha256": sha256_file(dit_path) if Path(dit_path).is_file() else None},
            "command": invoked_command()}
    model = Generator(vae, dit.eval(), info)
    with atomic_path(out) as tmp:
        model.save(tmp)
    return Path(out)


def import_classifier(arch: str, weights: str | Path, class_ids: list[str], image_size: int, out: str | Path,
                      class_names: list[str] | None = None, mean: list[float] | None = None,
                      std: list[float] | None = None) -> Path:
    """A torchvision classifier with a local state-dict file -> an otdistill teacher folder
    (model.safetensors + model.json), usable as a teacher or a surrogate."""
    from safetensors.torch import save_file

    from ..io import atomic_path, invoked_command, sha256_file, write_json
    from .classifiers import build_classifier

    if not arch.startswith("tv:"):
        raise UserError(f"import-teacher takes torchvision architectures as tv:<name> (e.g. tv:resnet18), got '{arch}'")
    sd = read_state_dict(weights)
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    model = build_classifier(arch, len(class_ids), 3, image_size, mean, std)
    try:
        model.net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).splitlines()[1:2]).strip() or str(exc).splitlines()[0]
        raise UserError(f"{weights} does not fit {arch} with {len(class_ids)} classes ({detail})") from None
    names = _class_list(class_ids, class_names, len(class_ids), arch)
    info = {"arch": arch, "num_classes": len(class_ids), "in_channels": 3, "image_size": image_size,
            "mean": mean, "std": std, "class_names": names, "class_ids": list(class_ids), "dataset": "imported",
            "test_accuracy": None, "imported": {"weights": str(weights), "sha256": sha256_file(weights)},
            "command": invoked_command()}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        write_json(tmp / "model.json", info)
    return Path(out)
