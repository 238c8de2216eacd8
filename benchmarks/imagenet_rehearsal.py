"""Rehearsal of the ImageNet-1K path on the CPU, at full size, before any GPU sees it (issue 34).

It writes random-weight stand-ins for every file docs/imagenet.md asks for, in their real formats:
an original-format DiT-XL/2 .pt (28 blocks, width 1152, patch 2, learned sigma, 1000 classes + the
null row), an SD-VAE-shaped AutoencoderKL folder, a torchvision ResNet-18 state dict and a 2-class
256 px ImageFolder (train/ and val/ of wnid folders) of procedurally drawn images. Then it runs the
README's import-generator and import-teacher and configs/imagenet-1k.yaml's stages on those 2
classes through the real CLI (otdistill.cli.main): train-surrogate, sample (IGD influence +
deviation + OT guidance, IGD's scaling through the denoiser), relabel, evaluate (one student epoch).
Every override of the recipe is listed in OVERRIDES with the reason it is needed at this scale.

Per stage: wall seconds and peak resident memory. The stages run in this one process; before
each, VmHWM (the kernel's peak-RSS mark) is reset to the current RSS by writing "5" to
/proc/self/clear_refs, so a stage's peak is the process's highest RSS during that stage (it
includes what the process held when the stage began: `rss_at_start_mb`).

FLOPs (torch.utils.flop_counter, attention through SDPA's math path so that it is counted): one
plain sampling step (the DiT forward with CFG: two rows for one image) and one guided step (the
same plus the recipe's guidance terms: influence through the DiT and the VAE decoder and the
surrogates' double backward, deviation, OT) for one image of one class; the final decode; the
per-class set-up (a real pool latent, a real image's surrogate gradients); a student training step
and the recipe's teachers' forward passes. From them, H200 hours for ImageNet-1K at IPC 10 and 50
are PROJECTED at a stated utilisation of the bf16 dense peak; a projection until a GPU measures it.

Usage: python benchmarks/imagenet_rehearsal.py [--size full|tiny] [--work runs/imagenet-rehearsal]
           [--out benchmarks/results/imagenet-rehearsal.json]
--size tiny is the same code path at toy shapes (a 2-block width-64 DiT, a 4-level 8-channel VAE,
64 px), seconds long; the test suite runs it.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import checkpoint_files  # noqa: E402

RECIPE = ROOT / "configs" / "imagenet-1k.yaml"
WNIDS = ["n01440764", "n02102040"]  # ImageNette's first two classes (tench, English springer)
TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 2
SIZES = {
    # DiT-XL/2 256 px: 32x32x4 latents, 16 heads of 72; the SD VAE; ImageNet's 256 px images, 224 px crops
    "full": {"hidden": 1152, "depth": 28, "heads": 16, "latent": 32, "vae": checkpoint_files.SD_VAE,
             "image": 256, "crop": 224},
    "tiny": {"hidden": 64, "depth": 2, "heads": 2, "latent": 8,
             "vae": {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4,
                     "sample_size": 64}, "image": 64, "crop": 56},
}
H200_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's H200 SXM datasheet (dense, no sparsity)
IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 train/, what the recipe's surrogate trains on (train_subset 0)


# ---------------------------------------------------------------- the input files


def write_inputs(work: Path, size: str) -> dict:
    """The stand-in files, and the paths the commands read them from."""
    s = SIZES[size]
    paths = {"dit": work / ("DiT-XL-2-256x256.pt" if size == "full" else "DiT-tiny.pt"),
             "vae": work / "sd-vae-ft-ema", "resnet18": work / "resnet18.pth", "data": work / "imagenet",
             "classes": work / "imagenet-classes.txt", "label_classes": work / "rehearsal-classes.txt"}
    # the DiT's 1000 labels as sorted wnids, the two real folders among made-up ones
    labels = sorted(WNIDS + [f"n9{i:08d}" for i in range(1000 - len(WNIDS))])
    paths["classes"].write_text("\n".join(labels) + "\n")
    paths["label_classes"].write_text("\n".join(WNIDS) + "\n")
    sd = checkpoint_files.original_dit_state_dict(0, s["hidden"], s["depth"], 1000, s["latent"], std=None)
    torch.save(sd, paths["dit"])  # a plain state dict, as the importer reads it (weights_only=True)
    del sd
    checkpoint_files.autoencoder_kl(**s["vae"]).save_pretrained(paths["vae"])
    import torchvision

    torch.manual_seed(0)
    # a 2-way head: a teacher labels the classes of the set it labels, and nothing maps a 1000-way
    # ImageNet teacher's outputs onto a class subset (the subset recipes train their own teacher)
    torch.save(torchvision.models.resnet18(num_classes=len(WNIDS)).state_dict(), paths["resnet18"])
    write_image_folder(paths["data"], s["image"])
    return paths


def write_image_folder(root: Path, side: int) -> None:
    """train/ and val/ of the two wnid folders of PNGs: colour stripes whose frequency depends on the
    class and whose angle, phase and tint are random, so the classes differ and no two images match."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c, wnid in enumerate(WNIDS):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                phase, tint = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.3, 1.0, 3)
                stripes = np.sin(2 * np.pi * (3 + 5 * c) * (xx + yy * rng.uniform(-1, 1))[..., None] + phase)
                pixels = (0.5 + 0.5 * stripes * tint) * 255
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / wnid / f"{wnid}_{i}.png")


# ---------------------------------------------------------------- the recipe at this scale


def overrides(work: Path, size: str, paths: dict) -> list[str]:
    """configs/imagenet-1k.yaml's --set overrides for the rehearsal; everything else is the recipe's
    (DDPM with the learned variance, DiT spacing, CFG 4 on three channels, one latent at a time, 16
    classes a pass, IGD's k = 5 and gamma = 120 in its own scaling, influence through the denoiser,
    flat distance, a ConvNet-6 surrogate with 4 checkpoints, OT weight 0.3 / reg 0.05, CutMix, AdamW)."""
    s, run = SIZES[size], work / "run"
    return [
        f"output={run}", "device=cpu",
        f"data.root={paths['data']}", f"data.image_size={s['image']}",
        f"generator.path={work / 'generator'}",
        "sample.ipc=2",  # 2 images per class: the second sees the first in the deviation memory and the OT set
        # 3 steps, the middle one guided: the recipe's 50 with 16 guided would take hours on 2 cores (at full
        # size one image's plain step took 7-15 s on a busy 2-core machine, a guided one 50-70 s)
        "sample.steps=3", "sample.guidance.window=[1,2]",
        # the pool and the influence target cannot be larger than a class's 4 training images (recipe: 300, 200)
        "sample.guidance.ot.pool_size=2", f"sample.guidance.influence.real_per_class={TRAIN_PER_CLASS}",
        f"sample.guidance.influence.surrogate={run / 'surrogate'}",
        # the recipe's train-surrogate, 3 epochs instead of 50, keeping its 4 checkpoints (the guided step's cost)
        "sample.guidance.surrogate.epochs=3", "sample.guidance.surrogate.checkpoints=[0,1,2,3]",
        # the imported ResNet-18 alone: the other three LIA teachers would be imported the same way
        f"teachers=[{{path: {work / 'teachers' / 'resnet18'}, arch: 'tv:resnet18'}}]", "relabel.schedule=[[1,1]]",
        # one student epoch, one seed, batches the 4 images fill; the recipe's 300 epochs x 3 seeds is the GPU's job
        "student.epochs=1", "student.seeds=[0]", "student.batch_size=4", "student.test_batch_size=4",
        f"student.image_size={s['crop']}",
        "baseline=none",  # `run` only; the stage commands never make it
    ] + ([] if size == "full" else [
        # toy shapes only: a width-16 ConvNet-6, so that the recipe's width-128 one (its double backward is
        # most of a tiny guided step) does not make the suite's run slow
        "sample.guidance.surrogate.arch=convnet6-w16"])


# ---------------------------------------------------------------- measuring


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measured(stages: dict, name: str, fn):
    """Run fn() as stage `name`; record its wall seconds and the process's peak RSS during it."""
    gc.collect()
    try:  # hand freed heap pages back, so that a stage does not start on the previous stage's garbage
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    start_kb = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
    start = time.perf_counter()
    result = fn()
    stages[name] = {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(_rss_kb("VmHWM") / 1024, 1),
                    "rss_at_start_mb": round(start_kb / 1024, 1)}
    print(f"{name}: {stages[name]}", flush=True)
    return result


def otdistill(*argv) -> None:
    from otdistill.cli import main

    code = main(["--quiet", *map(str, argv)])
    if code:
        raise SystemExit(f"otdistill {argv[0]} failed with exit code {code}")


def flops(fn) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # the CPU's fused attention kernel is not in the counter's table; the math path is, at equal FLOPs
    with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]):
        fn()
    return counter.get_total_flops()


def count_flops(sets: list[str]) -> dict:
    """FLOPs per image of each part of the pipeline, measured on the imported models and the
    recipe's own guidance terms (built as the sample stage builds them)."""
    from otdistill.config import load_config
    from otdistill.context import RunContext
    from otdistill.data import to_unit
    from otdistill.guidance import build_terms
    from otdistill.guidance.influence import param_grads
    from otdistill.models.classifiers import build_classifier
    from otdistill.models.generator import load_generator
    from otdistill.sample import sample_latents

    cfg = load_config(RECIPE, sets)
    ctx = RunContext(cfg, quiet=True)
    model = load_generator(cfg.generator.path)
    model.bind(ctx.data.class_ids, ctx.data.class_names)
    terms = build_terms(cfg.sample.guidance, model, ctx.data, cache_dir=Path(cfg.output) / "cache", classes=[0],
                        teachers=[t.path for t in cfg.teachers])
    # a one-step sampling of one image, plain and guided; a step costs the same at every t, so where
    # the recipe's window lies does not change it
    one = dataclasses.replace(cfg.sample, ipc=1, batch_size=1, steps=1)
    plain = flops(lambda: sample_latents(model, 0, 1, one))
    guided = flops(lambda: sample_latents(model, 0, 1, one, terms, (0, 1)))
    z = torch.randn(1, *model.latent_shape)
    image = to_unit(ctx.data.train.get(torch.tensor([0])), "cpu")
    with torch.no_grad():
        decode, encode = flops(lambda: model.decode(z)), flops(lambda: model.encode(image))
    surrogates = next(t for t in terms if t.name == "influence").surrogates

    def real_gradient(nets):  # the influence target's cost per real image; one net: a surrogate training step
        with torch.enable_grad():
            for net in nets:
                param_grads(net, image, torch.zeros(1, dtype=torch.long), False)

    crop = cfg.student.image_size
    student = build_classifier(cfg.student.arch, 1000, 3, crop)
    view = torch.rand(1, 3, crop, crop)

    def train_step():
        torch.nn.functional.cross_entropy(student(view), torch.zeros(1, dtype=torch.long)).backward()

    teachers = {}
    for arch in dict.fromkeys(t.arch for t in load_config(RECIPE).teachers):  # the recipe's LIA teachers
        net = build_classifier(arch, 1000, 3, crop).eval()
        with torch.no_grad():
            teachers[arch] = flops(lambda: net(view))
    return {"plain_step": plain, "guided_step": guided, "decode": decode, "encode": encode,
            "real_gradient": flops(lambda: real_gradient(surrogates)),
            "surrogate_train_step": flops(lambda: real_gradient(surrogates[-1:])),
            "student_train_step": flops(train_step),
            "teacher_forward": teachers, "per": "one image (the plain step's DiT forward has 2 rows with CFG)",
            "guidance_terms": [t.name for t in terms]}


def _sig(x: float) -> float:
    return float(f"{x:.3g}")  # three significant digits: a projection claims no more


def projection(counted: dict, utilisation: float) -> dict:
    """ImageNet-1K at the recipe's own settings (steps, window, pool, surrogate epochs, student epochs
    and seeds, LIA schedule): FLOPs / (utilisation x the H200's bf16 dense peak). Left out: relabelling
    and metrics (forward passes over 10k-50k images), POT's Sinkhorn iterations, data loading; the
    teachers are torchvision's, trained already."""
    from otdistill.config import load_config
    from otdistill.relabel import select_teachers

    cfg = load_config(RECIPE)
    s, g = cfg.sample, cfg.sample.guidance
    guided_steps = g.window[1] - g.window[0]
    plain_steps = s.steps - guided_steps
    per_image = guided_steps * counted["guided_step"] + plain_steps * counted["plain_step"] + counted["decode"]
    per_class = g.ot.pool_size * counted["encode"] + g.influence.real_per_class * counted["real_gradient"]
    rate = utilisation * H200_BF16_DENSE
    # trained once, for every IPC
    surrogate = g.surrogate.epochs * IMAGENET_TRAIN_IMAGES * counted["surrogate_train_step"]
    rows = {}
    for ipc in (10, 50):
        images = 1000 * ipc
        archs = [t.arch for t in cfg.teachers[:len(select_teachers([t.path for t in cfg.teachers], ipc,
                                                                    cfg.relabel.schedule))]]
        student = cfg.student.epochs * images * (counted["student_train_step"] +
                                                 sum(counted["teacher_forward"][a] for a in archs))
        sampling = images * per_image + 1000 * per_class
        rows[str(ipc)] = {"images": images, "sampling_pflop": _sig(sampling / 1e15),
                          "student_pflop_per_seed": _sig(student / 1e15), "teachers": archs,
                          "sampling_h200_hours": _sig(sampling / rate / 3600),
                          "student_h200_hours_per_seed": _sig(student / rate / 3600),
                          "total_h200_hours": _sig((sampling + len(cfg.student.seeds) * student + surrogate)
                                                   / rate / 3600)}
    return {"status": "PROJECTION from counted FLOPs, not a measurement: replace it with gpu_check.sh's numbers",
            "peak_flops": H200_BF16_DENSE, "peak_is": "H200 SXM bf16 dense (datasheet)", "utilisation": utilisation,
            "steps": s.steps, "guided_steps": guided_steps, "pool_size": g.ot.pool_size,
            "real_per_class": g.influence.real_per_class, "student_epochs": cfg.student.epochs,
            "seeds": len(cfg.student.seeds), "flop_per_image_sampled": per_image, "flop_per_class_setup": per_class,
            "surrogate_pflop": _sig(surrogate / 1e15), "surrogate_h200_hours": _sig(surrogate / rate / 3600),
            "total_is": "sampling + seeds x student + the surrogate's training", "ipc": rows}


# ---------------------------------------------------------------- the rehearsal


def rehearse(size: str, work: Path, out: Path, utilisation: float = 0.35) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise SystemExit(f"{work} is not empty; the rehearsal times every stage from scratch, so give a fresh --work")
    torch.manual_seed(0)
    stages: dict = {}
    started = time.perf_counter()
    paths = measured(stages, "write_inputs", lambda: write_inputs(work, size))
    heads = [] if size == "full" else ["--heads", SIZES[size]["heads"]]  # a width-64 DiT is no published size
    generator, teacher = work / "generator", work / "teachers" / "resnet18"
    commands = {
        "import_generator": ["import-generator", "--dit", paths["dit"], "--vae", paths["vae"], "--classes",
                             paths["classes"], *heads, "--out", generator],
        "import_teacher": ["import-teacher", "--arch", "tv:resnet18", "--weights", paths["resnet18"], "--classes",
                           paths["label_classes"], "--image-size", SIZES[size]["crop"], "--out", teacher],
    }
    sets = overrides(work, size, paths)
    recipe = [RECIPE, *[a for s in sets for a in ("--set", s)]]
    distilled = work / "run" / "distilled"
    commands.update({"train_surrogate": ["train-surrogate", *recipe], "sample": ["sample", *recipe],
                     "relabel": ["relabel", distilled, *recipe], "evaluate": ["evaluate", distilled, *recipe]})
    for name, argv in commands.items():
        measured(stages, name, lambda argv=argv: otdistill(*argv))
    counted = measured(stages, "count_flops", lambda: count_flops(sets))
    evaluation = json.loads((distilled / "eval.json").read_text())
    result = {
        "size": size,
        "what": "DiT-XL/2 256 px + SD VAE + ResNet-18, random weights" if size == "full" else "toy shapes",
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}", "torch": torch.__version__,
        "threads": torch.get_num_threads(), "total_seconds": round(time.perf_counter() - started, 1),
        "stages": stages,
        "peak_rss_is": "highest VmRSS of this process during the stage (VmHWM reset through /proc/self/clear_refs)",
        "flops": counted, "projection": projection(counted, utilisation),
        "images": len(list(distilled.glob("images/*/*.png"))),
        "student_final_accuracy": evaluation["protocols"]["soft"]["final_mean"],
        "commands": {k: "otdistill " + " ".join(map(str, v)) for k, v in commands.items()},
        "overrides": sets,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="full")
    parser.add_argument("--work", default=str(ROOT / "runs" / "imagenet-rehearsal"),
                        help="a fresh folder for the files (about 7 GB at full size)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "imagenet-rehearsal.json"))
    parser.add_argument("--utilisation", type=float, default=0.35,
                        help="assumed share of the H200's bf16 dense peak, for the projection")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = rehearse(args.size, Path(args.work), Path(args.out), args.utilisation)
    print(json.dumps({k: result[k] for k in ("total_seconds", "stages")}, indent=2))
    print(json.dumps(result["projection"]["ipc"], indent=2))


if __name__ == "__main__":
    main()
