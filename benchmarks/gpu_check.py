"""GPU check at the paper's scale, with random weights (nothing is downloaded).

A DiT-XL/2-shaped diffusers DiT (28 layers, width 1152, 16 heads, 32x32x4 latents, 1000
classes, learned sigma) and an SD-VAE-shaped AutoencoderKL (128/256/512/512, 256 px) run
otdistill's own sampler for one class: 50 DDIM steps with CFG, plain / ot / igd+ot, at
IPC 10 and 50 (all latents of the class in one forward pass), real pool of 300 latents,
bf16 autocast and TF32; then 8 classes per forward pass (sample.classes_per_pass) at IPC 10,
plain and ot. Reported: images/s, the share of time inside OT, peak memory, and torchvision
ResNet-18 training throughput on random 224 px tensors.

Usage: python benchmarks/gpu_check.py [--out benchmarks/results/gpu-check.json]
       python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/gpu-check.json   (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from otdistill.config import DeviationConfig, InfluenceConfig, OTGuidanceConfig, SampleConfig
from otdistill.guidance import DeviationGuidance, InfluenceGuidance, OTGuidance
from otdistill.guidance.influence import param_grads
from otdistill.models.classifiers import build_classifier
from otdistill.models.generator import Generator
from otdistill.sample import sample_classes

ROOT = Path(__file__).resolve().parents[1]


def build(tiny: bool, device) -> Generator:
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    blocks = (8, 8) if tiny else (128, 256, 512, 512)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                        up_block_types=("UpDecoderBlock2D",) * len(blocks), block_out_channels=blocks,
                        layers_per_block=1 if tiny else 2, latent_channels=4, norm_num_groups=4 if tiny else 32,
                        sample_size=16 if tiny else 256, scaling_factor=0.18215)
    dit = DiTTransformer2DModel(num_attention_heads=2 if tiny else 16, attention_head_dim=16 if tiny else 72,
                                in_channels=4, out_channels=8, num_layers=2 if tiny else 28,
                                sample_size=8 if tiny else 32, patch_size=2, num_embeds_ada_norm=1000)
    size = 16 if tiny else 256
    info = {"class_names": [str(i) for i in range(1000)], "num_train_timesteps": 1000, "image_size": size,
            "channels": 3}
    return Generator(vae.eval().requires_grad_(False), dit.eval().requires_grad_(False), info).to(device)


def terms_for(recipe: str, model: Generator, tiny: bool, device, classes: list[int]) -> list:
    c, s, _ = model.latent_shape
    terms = []
    if "igd" in recipe:
        size = model.info["image_size"]
        nets = [build_classifier("convnet2-w16" if tiny else "tv:resnet18", 1000, 3, size).to(device).eval()
                for _ in range(2)]  # two checkpoints of a surrogate trajectory
        x = torch.rand(8 if tiny else 50, 3, size, size, device=device)
        y = torch.zeros(len(x), dtype=torch.long, device=device)
        with torch.enable_grad():
            grads = [[g.detach() for g in param_grads(n, x, y, False)] for n in nets]
        real = {k: grads for k in classes}
        terms.append(InfluenceGuidance(InfluenceConfig(weight=0.3), nets, real))
        terms.append(DeviationGuidance(DeviationConfig(weight=0.1)))
    if "ot" in recipe:
        pool = torch.randn(300, c, s, s, generator=torch.Generator().manual_seed(0))
        terms.append(OTGuidance(OTGuidanceConfig(weight=0.3, pool_size=300), {k: pool.to(device) for k in classes}))
    return terms


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_sampling(model, recipe: str, ipc: int, tiny: bool, device, autocast, per_pass: int = 1) -> dict:
    classes = list(range(per_pass))
    terms = terms_for(recipe, model, tiny, device, classes)
    cfg = SampleConfig(ipc=ipc, steps=50, scheduler="ddim", cfg_scale=4.0, batch_size=ipc, classes_per_pass=per_pass)
    sync(device)
    start = time.perf_counter()
    with autocast():
        images = sample_classes(model, classes, cfg, terms, (4, 20))
    sync(device)
    seconds = time.perf_counter() - start
    ot_seconds = sum(t.seconds for t in terms if t.name == "ot")
    assert all(x.shape[0] == ipc for x in images.values())
    n = ipc * per_pass
    return {"seconds": round(seconds, 2), "images_per_s": round(n / seconds, 3), "ot_share": round(ot_seconds / seconds, 4)}


def resnet18_throughput(device, tiny: bool, autocast) -> float:
    model = build_classifier("tv:resnet18", 1000, 3, 224).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = 8 if tiny else 256
    x = torch.rand(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    steps, warm = (2, 1) if tiny else (30, 5)
    for i in range(steps + warm):
        if i == warm:
            sync(device)
            start = time.perf_counter()
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return round(steps * batch / (time.perf_counter() - start), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy shapes, for checking the script on a CPU")
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu-check.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    model = build(args.tiny, device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "shapes": "tiny" if args.tiny else "DiT-XL/2 256px + SD-VAE",
              "precision": "bf16 autocast, TF32" if device.type == "cuda" else "fp32",
              "images_per_s": {}, "ot_share": {}, "runs": []}
    with torch.no_grad():  # warm-up: kernels, cuDNN autotuning
        time_sampling(model, "plain", 2, args.tiny, device, autocast)
    for ipc in args.ipc:
        for recipe in ("plain", "ot", "igd+ot"):
            r = time_sampling(model, recipe, ipc, args.tiny, device, autocast)
            result["runs"].append({"recipe": recipe, "ipc": ipc, **r})
            result["images_per_s"].setdefault(recipe, {})[str(ipc)] = r["images_per_s"]
            result["ot_share"].setdefault(recipe, {})[str(ipc)] = r["ot_share"]
            print(json.dumps(result["runs"][-1]), flush=True)
    for recipe in ("plain", "ot"):  # the GPU is far from full at IPC 10: classes share the forward pass
        r = time_sampling(model, recipe, 10, args.tiny, device, autocast, per_pass=8)
        result["runs"].append({"recipe": recipe, "ipc": 10, "classes_per_pass": 8, **r})
        result["images_per_s"].setdefault(f"{recipe}, 8 classes per pass", {})["10"] = r["images_per_s"]
        print(json.dumps(result["runs"][-1]), flush=True)
    result["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
    result["resnet18_train_img_per_s"] = resnet18_throughput(device, args.tiny, autocast)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "images_per_s", "ot_share", "peak_mem_gb",
                                             "resnet18_train_img_per_s")}, indent=2))


if __name__ == "__main__":
    main()
