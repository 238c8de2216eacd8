"""Real checkpoint formats, written tiny by the tests: the original facebookresearch DiT state
dict, diffusers folders, torchvision state dicts. Converted DiT outputs are checked against an
independent implementation of the original DiT forward pass."""

import argparse
import json

import checkpoint_files  # benchmarks/, on the path through conftest
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel

from otdistill.cli import main
from otdistill.errors import UserError
from otdistill.models.generator import load_generator
from otdistill.models.pretrained import dit_from_original, import_generator, load_dit, load_vae, read_state_dict
from otdistill.teachers import load_teacher

HIDDEN, HEADS, DEPTH, PATCH, IN_CH, CLASSES, SIZE = 32, 2, 2, 2, 4, 5, 4


def original_dit_state_dict(seed: int = 0, hidden: int = HIDDEN, depth: int = DEPTH, classes: int = CLASSES,
                            size: int = SIZE) -> dict:
    """A tiny random original-format DiT (checkpoint_files.py, shared with imagenet_rehearsal.py)."""
    return checkpoint_files.original_dit_state_dict(seed, hidden, depth, classes, size, PATCH, IN_CH)


def original_timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """models.py TimestepEmbedder.timestep_embedding: frequencies exp(-ln(10^4) i / half), i < half,
    cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(-float(np.log(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def original_forward(sd: dict, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, heads: int = HEADS) -> torch.Tensor:
    """The original DiT forward pass (models.py: DiT.forward with its TimestepEmbedder, adaLN-Zero
    blocks and final layer), written from its equations, independent of diffusers."""
    n, p = len(x), PATCH
    d = sd["x_embedder.proj.weight"].shape[0]
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    grid = h.shape[-1]
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]
    temb = F.linear(F.silu(F.linear(original_timestep_embedding(t), sd["t_embedder.mlp.0.weight"],
                                    sd["t_embedder.mlp.0.bias"])), sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    c = temb + sd["y_embedder.embedding_table.weight"][y]

    def modulate(v, shift, scale):  # LayerNorm without affine, eps 1e-6, then x * (1 + scale) + shift
        return F.layer_norm(v, (d,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]

    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(blocks):
        b = f"blocks.{i}."
        mods = F.linear(F.silu(c), sd[b + "adaLN_modulation.1.weight"], sd[b + "adaLN_modulation.1.bias"]).chunk(6, 1)
        q, k, v = F.linear(modulate(h, mods[0], mods[1]), sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).chunk(3, -1)
        q, k, v = (a.view(n, -1, heads, d // heads).transpose(1, 2) for a in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, -1) @ v
        att = F.linear(att.transpose(1, 2).reshape(n, -1, d), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = h + mods[2][:, None] * att
        m = F.gelu(F.linear(modulate(h, mods[3], mods[4]), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]),
                   approximate="tanh")
        h = h + mods[5][:, None] * F.linear(m, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    shift, scale = F.linear(F.silu(c), sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, 1)
    h = F.linear(modulate(h, shift, scale), sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    h = h.view(n, grid, grid, p, p, -1)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(n, -1, grid * p, grid * p)


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("t", [999, 500, 1])
def test_original_dit_converts_to_the_same_function(t):
    """At every t, for a class and for the null class (label = classes), the converted DiT is the
    original's function; timesteps far from 0 are where another timestep embedding shows."""
    sd = original_dit_state_dict()
    model = dit_from_original(sd, heads=HEADS).eval()
    assert model.config.num_layers == DEPTH and model.config.out_channels == 2 * IN_CH
    assert model.config.num_embeds_ada_norm == CLASSES and model.config.sample_size == SIZE
    x = torch.randn(3, IN_CH, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ts, y = torch.full((3,), t), torch.tensor([0, 4, CLASSES])  # CLASSES = the null class
    with torch.no_grad():
        ours = model(x, timestep=ts, class_labels=y).sample
    ref = original_forward(sd, x, ts, y)
    assert relative_error(ours, ref) < 1e-5


def test_checkpoint_files_load_safely_or_say_why_not(tmp_path):
    sd = original_dit_state_dict()
    torch.save({"ema": sd, "model": {}}, tmp_path / "train.pt")  # a training checkpoint: EMA weights used
    assert set(read_state_dict(tmp_path / "train.pt")) == set(sd)
    torch.save({"model": sd, "args": argparse.Namespace(model="DiT-XL/2")}, tmp_path / "pickled.pt")
    with pytest.raises(UserError, match="plain tensors only"):
        read_state_dict(tmp_path / "pickled.pt")  # weights_only refuses the pickled Namespace
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a loadable tensor checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="not an original DiT state dict"):
        dit_from_original({"conv.weight": torch.zeros(1)}, where="x.pt")
    with pytest.raises(UserError, match="--heads"):
        dit_from_original(sd)  # width 32 is no published DiT size
    broken = dict(sd, **{"blocks.1.mlp.fc1.weight": torch.zeros(3, 3)})
    with pytest.raises(UserError, match="do not fit together"):
        dit_from_original(broken, heads=HEADS)
    moved = dict(sd, pos_embed=sd["pos_embed"] + 1)
    with pytest.raises(UserError, match="positional embedding"):
        dit_from_original(moved, heads=HEADS)


def _tiny_vae(folder):
    vae = checkpoint_files.autoencoder_kl(latent_channels=IN_CH)
    vae.save_pretrained(folder / "vae")  # a pipeline-style folder: vae/ inside
    return vae


def test_import_generator_from_original_pt_and_sample_a_class_subset(tmp_path):
    torch.save(original_dit_state_dict(), tmp_path / "DiT-tiny.pt")
    _tiny_vae(tmp_path / "sd-vae")
    wnids = [f"n0000000{i}" for i in range(CLASSES)]
    (tmp_path / "classes.txt").write_text("\n".join(wnids) + "\n")
    out = tmp_path / "generator"
    assert main(["import-generator", "--dit", str(tmp_path / "DiT-tiny.pt"), "--vae", str(tmp_path / "sd-vae"),
                 "--classes", str(tmp_path / "classes.txt"), "--heads", str(HEADS), "--out", str(out)]) == 0
    model = load_generator(out)
    assert model.info["image_size"] == SIZE * 2 and model.info["class_ids"] == wnids
    # generator.json records the original's timestep embedding and loading applies it again
    assert model.info["timestep_embedding"] == "dit-original"
    x, t999, y = torch.randn(2, IN_CH, SIZE, SIZE), torch.tensor([999, 999]), torch.tensor([1, CLASSES])
    with torch.no_grad():
        assert relative_error(model.forward(x, t999, y), original_forward(original_dit_state_dict(), x, t999, y)[:, :IN_CH]) < 1e-5
    model.bind([wnids[3], wnids[1]], ["c", "a"])  # a two-class subset, e.g. ImageNette of ImageNet-1K
    assert model.labels == [3, 1] and model.null_class == CLASSES
    z = torch.randn(2, IN_CH, SIZE, SIZE)
    with torch.no_grad():
        eps = model.predict(z, 10, 0, 1.0)  # cfg 1: the conditional prediction, label 3
        direct = model.forward(z, torch.tensor([10, 10]), torch.tensor([3, 3]))
        guided = model.predict(z, 10, 0, 2.0)  # with its null-class branch: 2 * cond - uncond
        uncond = model.forward(z, torch.tensor([10, 10]), torch.tensor([CLASSES, CLASSES]))
    assert eps.shape == z.shape and torch.allclose(eps, direct, atol=1e-5)
    assert torch.allclose(guided, 2 * direct - uncond, atol=1e-4)
    with pytest.raises(UserError, match="knows no class n09999999"):
        model.bind(["n09999999"], ["x"])
    # the wrong class count for this DiT is refused before anything is written
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    assert main(["import-generator", "--dit", str(tmp_path / "DiT-tiny.pt"), "--vae", str(tmp_path / "sd-vae"),
                 "--classes", str(tmp_path / "three.txt"), "--heads", str(HEADS), "--out", str(tmp_path / "g2")]) == 2
    assert not (tmp_path / "g2").exists()


def test_diffusers_dit_folders_load_as_they_are(tmp_path):
    """A diffusers folder (e.g. facebook/DiT-XL-2-256's transformer/) keeps diffusers' timestep
    embedding, so the same weights compute another function than the original's; import-generator
    records that one."""
    sd = original_dit_state_dict()
    model = dit_from_original(sd, heads=HEADS)
    model.save_pretrained(tmp_path / "pipe" / "transformer")
    loaded = load_dit(tmp_path / "pipe")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    x, t, y = torch.randn(2, IN_CH, SIZE, SIZE), torch.tensor([999, 999]), torch.tensor([0, CLASSES])
    with torch.no_grad():
        assert relative_error(loaded(x, timestep=t, class_labels=y).sample, original_forward(sd, x, t, y)) > 0.1
    _tiny_vae(tmp_path / "sd-vae")
    import_generator(tmp_path / "pipe", tmp_path / "sd-vae", [f"c{i}" for i in range(CLASSES)], tmp_path / "g")
    assert load_generator(tmp_path / "g").info["timestep_embedding"] == "diffusers"
    with pytest.raises(UserError, match="not a diffusers DiT folder"):
        load_dit(tmp_path)


def test_vae_folders_load_frozen_or_say_which_file_is_missing(tmp_path):
    _tiny_vae(tmp_path / "pipe")
    vae = load_vae(tmp_path / "pipe")  # a pipeline's vae/ is found inside it
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no vae/config.json or config.json.*sd-vae-ft-ema"):
        load_vae(tmp_path / "empty")
    (tmp_path / "broken" / "vae").mkdir(parents=True)
    (tmp_path / "broken" / "vae" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="could not load the autoencoder"):
        load_vae(tmp_path / "broken")


def test_import_torchvision_teacher_from_a_state_dict(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    ids = [f"c{i}" for i in range(10)]
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    assert main(["import-teacher", "--arch", "tv:resnet18", "--weights", str(tmp_path / "resnet18.pth"),
                 "--classes", str(tmp_path / "ids.txt"), "--image-size", "32", "--out", str(tmp_path / "t")]) == 0
    teacher, info = load_teacher(tmp_path / "t")
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(info["mean"]).view(1, 3, 1, 1), torch.tensor(info["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(teacher(x), net((x - mean) / std), atol=1e-5)
    assert json.loads((tmp_path / "t" / "model.json").read_text())["class_ids"] == ids
    (tmp_path / "ids12.txt").write_text("\n".join(f"c{i}" for i in range(12)))
    assert main(["import-teacher", "--arch", "tv:resnet18", "--weights", str(tmp_path / "resnet18.pth"),
                 "--classes", str(tmp_path / "ids12.txt"), "--out", str(tmp_path / "t12")]) == 2


def test_imagenette_recipe_binds_its_wnids_to_an_imagenet_generator(tmp_path):
    """The subset recipes read wnid folders in the class-list order and sample each class with
    the label the ImageNet DiT has for that wnid."""
    from conftest import ROOT
    from test_data import make_folder

    from otdistill.config import load_config
    from otdistill.data import load_dataset
    from otdistill.models.generator import Generator

    wnids = [line.split()[0] for line in (ROOT / "configs/classes/imagenette.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    make_folder(tmp_path / "train", wnids[::-1], per_class=2)  # folder order on disk does not matter
    make_folder(tmp_path / "val", wnids, per_class=1)
    cfg = load_config(ROOT / "configs/imagenette.yaml", [f"data.root={tmp_path}", "data.image_size=16"])
    data = load_dataset(cfg.data)
    assert data.class_ids == wnids and len(data.train) == 20 and len(data.test) == 10
    imagenet = sorted(wnids + [f"n0{i:07d}" for i in range(30)])  # stands in for the 1000 sorted wnids
    model = Generator(None, None, {"class_names": imagenet, "class_ids": imagenet})  # bind reads info only
    model.bind(data.class_ids, data.class_names)
    assert [imagenet[i] for i in model.labels] == wnids


def test_generators_keep_the_timestep_embedding_diffusers_built():
    """Without a timestep_embedding in generator.json the projections stay as diffusers builds
    them (a UNet's freq_shift 0, a DiT's 1); dit-original divides by half everywhere."""
    from diffusers import UNet2DModel

    from otdistill.models.generator import Generator

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, num_class_embeds=3)
    Generator(None, unet, {"class_names": ["a", "b"], "backend": "unet"})
    assert unet.time_proj.downscale_freq_shift == unet.config.freq_shift == 0
    dit = dit_from_original(original_dit_state_dict(), heads=HEADS)
    projections = [b.norm1.emb.time_proj for b in dit.transformer_blocks]
    assert {p.downscale_freq_shift for p in projections} == {0}
    fresh = DiTTransformer2DModel.from_config(dit.config)
    Generator(None, fresh, {"class_names": ["a"] * CLASSES})
    assert {b.norm1.emb.time_proj.downscale_freq_shift for b in fresh.transformer_blocks} == {1}
    with pytest.raises(UserError, match="unknown timestep embedding 'dit'.*dit-original"):
        Generator(None, fresh, {"class_names": ["a"] * CLASSES, "timestep_embedding": "dit"})
