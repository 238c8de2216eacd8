"""The benchmark's rows, shared by distill_bench.py and tune_otm.py: how each method's set is
made (which recipe, which overrides) and the student epochs per row; and, for every script
beside it (their folder is on sys.path), merging a run's rows into a result file."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from otdistill import pipeline  # noqa: E402
from otdistill.config import fingerprint, load_config  # noqa: E402
from otdistill.data import ImageSet  # noqa: E402
from otdistill.context import RunContext  # noqa: E402
from otdistill.guidance import off_overrides  # noqa: E402
from otdistill.io import read_json, write_json  # noqa: E402
from otdistill.selection import BASELINES  # noqa: E402

KL_ONLY = ["student.soft_loss.kl=1.0", "student.soft_loss.ce=0.0", "student.soft_loss.mse=0.0",
           "student.soft_loss.sd=0.0"]
NO_GUIDANCE = off_overrides()  # every registered term off
ONE_TEACHER = ["relabel.schedule=[[1,1]]"]
CE_MSE = ["student.soft_loss.sd=0.0"]  # otdistill.yaml's CE + MSE without the Sinkhorn term
# the three shipped LIA teachers that do not label at IPC 1 (guided by ConvNet-2 alone, the IPC 1 gain over
# herding goes; by the three together it mostly stays: docs/feature-ot.md)
GUIDED_BY_OTHERS = ["sample.guidance.feature_ot.classifiers=[" + ",".join(
    f"checkpoints/fashion-mnist/teachers/{t}" for t in ("convnet2-w64", "convnet4-w64-batchnorm-max",
                                                         "resnetap10-w32-batchnorm-e5")) + "]"]
PACKED = ["sample.formation=2"]
REAL = ("random", "herding", "rded")  # the real baselines also labelled by LIA's teachers and packed
# method -> (how the set is made, recipe in configs/, overrides)
ROWS = {
    **{name: ("select", "base/fashion-mnist", []) for name in BASELINES},  # every real-image baseline
    # the same real subsets labelled by LIA's teachers, as fot_lia is, so that labels never decide a comparison
    **{f"{name}_lia": ("select", "lia", []) for name in REAL},
    "plain": ("sample", "plain", []),
    "d4m": ("sample", "plain", ["sample.init=prototypes"]),
    "igd": ("sample", "igd", []),
    "otg": ("sample", "igd+ot", []),
    "otdistill": ("sample", "otdistill", []),
    "no_otg": ("sample", "otdistill", NO_GUIDANCE),
    "no_lia": ("sample", "otdistill", ONE_TEACHER),
    "no_otm": ("sample", "otdistill", KL_ONLY),
    "no_otm_ce_mse": ("sample", "otdistill", CE_MSE),
    # our extension: feature OT guidance (configs/feature-ot.yaml), with the first teacher's labels,
    # with LIA's, and guided by other classifiers than the one that labels
    "fot": ("sample", "feature-ot", []),
    "fot_lia": ("sample", "feature-ot+lia", []),
    "fot_cross": ("sample", "feature-ot", GUIDED_BY_OTHERS),
    # multi-formation (IDC): 2 x 2 half-size images in each stored one, real and generated alike
    **{f"{name}_mf2": ("select", "base/fashion-mnist", PACKED) for name in REAL},
    **{f"{name}_lia_mf2": ("select", "lia", PACKED) for name in REAL},
    # where the recipe aims at herding's picks one per image (IPC 10, 50), packed it aims at formation^2 x as
    # many (row_config; IPC 10's setting on validation at convergence: docs/feature-ot.md); packing takes
    # generated images only, so IPC 50's recipe keeps no real ones here
    "fot_lia_mf2": ("sample", "feature-ot+lia", [*PACKED, "sample.real=0"]),
}
# the LIA/OTM ablation (issue 4) read off the same rows: variant name -> bench method
ABLATION = {"full": "otdistill", "no_lia": "no_lia", "no_otm_kl": "no_otm", "no_otm_ce_mse": "no_otm_ce_mse"}


def epochs_for(spec: list[str], student: str, ipc: int | None) -> int:
    """Student epochs from specs like `80`, `50=16` (IPC 50), `resnet18=20`, `resnet18/50=4`;
    the most specific spec that matches wins."""
    best, best_rank = None, -1
    for item in spec:
        target, _, value = item.rpartition("=")
        if "/" in target:
            arch, at_ipc = target.split("/", 1)
        else:
            arch, at_ipc = ("", target) if target.isdigit() else (target, "")
        if (arch and arch != student) or (at_ipc and int(at_ipc) != ipc):
            continue
        rank = bool(arch) * 2 + bool(at_ipc)
        if rank > best_rank:
            best, best_rank = int(value), rank
    if best is None:
        raise SystemExit(f"--epochs {' '.join(spec)} gives no epochs for {student} at IPC {ipc}; add a plain number")
    return best


def selection_of(method: str) -> str:
    """The selection that makes a select row's images (`herding_lia` and `herding_mf2` are herding's)."""
    return method.split("_")[0]


def made_key(cfg, method: str, train: ImageSet) -> str:
    """What made a row's images: its selection's or its sampler's settings, and the training
    images they read (a validation run holds some out of the OT pool and the selections)."""
    made = (pipeline.select_fingerprint(cfg, selection_of(method)) if ROWS[method][0] == "select"
            else pipeline.sample_fingerprint(cfg))
    return fingerprint(made, train.content_id())


def row_config(method: str, ipc: int, args, work: Path, train: ImageSet, sample_seed: int | None = None):
    """The row's recipe (at `sample_seed` if given), its folder named for what made its images
    (made_key): a row re-made by another teacher (herding's features), sampler, seed or training
    split gets a new folder."""
    _, recipe, extra = ROWS[method]
    overrides = [f"sample.ipc={ipc}", f"student.protocols={json.dumps(args.protocols)}", *extra, *args.overrides]
    if sample_seed is not None:
        overrides.append(f"sample.seed={sample_seed}")
    if args.steps:
        overrides.append(f"sample.steps={args.steps}")
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml", overrides)
    pool, f = cfg.sample.guidance.feature_ot, cfg.sample.formation
    if f > 1 and pool.pool_select == "herding" and pool.pool_size == ipc:  # still one real target per image
        cfg = load_config(ROOT / "configs" / f"{recipe}.yaml",
                          [*overrides, f"sample.guidance.feature_ot.pool_size={ipc * f * f}"])
    return dataclasses.replace(cfg, output=str(work / "rows" / f"{method}-ipc{ipc}-{made_key(cfg, method, train)[:8]}"))


def build_set(method: str, ctx: RunContext, work: Path) -> Path:
    """The row's distilled set: selected, or a copy of the shared sample for its settings."""
    how, cfg = ROWS[method][0], ctx.cfg
    row_set = Path(cfg.output) / "distilled"
    if how == "select":
        return pipeline.select_stage(ctx, selection_of(method), row_set)
    if (row_set / "manifest.json").exists():
        return row_set
    made = pipeline.sample_stage(ctx.replace(output=str(work / "sets" / made_key(cfg, method, ctx.data.train))))
    # the copy is relabelled for its row; relabel_stage redoes labels made by other teachers
    shutil.copytree(made, row_set, ignore=shutil.ignore_patterns(".shards"), dirs_exist_ok=True)
    return row_set


def made_by(manifest: dict) -> dict:
    """What made a set, for its result rows: the generator (None for real images), the real
    images per class a generated set keeps (sample.real), its packing (sample.formation) and the
    label teachers, so that rows of another generator or teachers, hybrid or packed sets, can be
    told apart."""
    return {"generator": manifest["source"].get("generator"), "real_per_class": manifest["source"].get("real_per_class", 0),
            "formation": manifest.get("formation", 1), "teacher_paths": manifest.get("teachers", [])}


def sets_of(row: dict) -> tuple:
    """The sampling seeds of the sets a row spans; () for a row over the recipe's one set."""
    return tuple(row.get("sample_seeds") or ())


def bench_key(row: dict) -> tuple:
    """A row is its method, IPC, student, protocol and the sets it spans: a run over other draws of
    the set adds its row beside a one-set row instead of replacing it."""
    return row["method"], row["ipc"], row["student"], row["labels"], sets_of(row)


def merged(result: Path, rows: list[dict], key=bench_key) -> list[dict]:
    """This run's rows over the result file's: a run of some rows or students keeps the others."""
    fresh = {key(r) for r in rows}
    old = read_json(result) if result.exists() else []
    return [r for r in old if key(r) not in fresh] + rows


def write_merged(result: Path, rows: list[dict], key=bench_key) -> list[dict]:
    """Merge this run's rows into the result file (see `merged`), write it, return all rows."""
    rows = merged(result, rows, key)
    write_json(result, rows)
    return rows


LOSS_TERMS = ("kl", "ce", "mse", "sd")  # the weights of student.soft_loss


def loss_weights(student, labels: str) -> dict | None:
    """The soft-label loss a row's students trained with (None under hard labels)."""
    return {t: getattr(student.soft_loss, t) for t in LOSS_TERMS} if labels == "soft" else None
