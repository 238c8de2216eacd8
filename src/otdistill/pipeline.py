"""The stages of a run, each reading the previous stage's saved artifact.

OUTPUT/
    config.yaml        the effective config of the run
    distilled/         the distilled set (artifacts.py); sample writes images, relabel labels
        eval/          one JSON per (student, protocol, seed), reused on rerun
        eval.json      the summary over seeds
    baselines/METHOD/  each real-image set scored beside it (`baseline`: random, herding, ...),
                       with its own eval/
    summary.md         what `run` printed

An evaluation belongs to the set it scores and lives inside that set's folder, so scoring
one set never touches another's results. Every stage takes the run's RunContext (config,
device, the dataset loaded once on first use, rank, quiet); the stages that read a set folder
fall back to the config recorded in its manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from . import artifacts, distributed, protocols, report
from .config import Config, StudentConfig, dump_config, fingerprint, to_dict
from .context import RunContext
from .data import TensorImages
from .errors import UserError
from .evaluate import CellGroup, CellJob, summarise, train_cells
from .formation import pack
from .guidance import build_terms, models_read
from .io import read_json, remove_stale_temporaries, write_json, write_text
from .metrics import features, junk_warning, set_report
from .models.generator import Generator, load_generator
from .progress import progress
from .readiness import check_generator, checked, require_ready
from .records import Evaluation, read_cached_cell, write_evaluation
from .relabel import choose_teachers, load_ensemble, soft_logits
from .sample import sample_classes
from .selection import SELECTIONS, baseline_images, candidate_keeper, class_starts, embedding, model_read, select_class
from .teachers import full_data_reference, load_teacher, train_teacher
from .train import channel_stats
from .train_generator import encode_all, needs_more_steps, train_generator, training_dir

log = logging.getLogger(__name__)


def distilled_dir(cfg: Config) -> Path:
    return Path(cfg.output) / "distilled"


def check_model_paths(cfg: Config, teachers: bool = True) -> None:
    """`run` and `sample` train absent models, but only inside their output folder: a path in
    a config never makes them write elsewhere. Explicit train-* commands write where told."""
    out = Path(cfg.output).resolve()
    wanted = [("generator.path", cfg.generator.path, "train-generator")]
    wanted += [(f"teachers.{i}.path", t.path, "train-teacher") for i, t in enumerate(cfg.teachers) if teachers]
    if cfg.sample.guidance.influence.weight > 0:
        wanted.append(("sample.guidance.influence.surrogate", cfg.sample.guidance.influence.surrogate, "train-surrogate"))
    for key, path, command in wanted:
        if not Path(path).exists() and not Path(path).resolve().is_relative_to(out):
            raise UserError(f"{key}={path} does not exist and lies outside the run folder {cfg.output}; a run only "
                            f"writes inside its folder: make it with `otdistill {command} CONFIG` or point {key} "
                            f"inside {cfg.output}")


def ensure_generator(ctx: RunContext, force: bool = False, extend: bool = False) -> Generator:
    """Load the generator at generator.path, training it first when absent (or forced); with
    `extend` (the train-generator command) a generator this project trained with fewer steps
    than the config asks is trained on from its saved state. A generator trained here, and one
    that train-generator finds without a graded check, gets its check (readiness.py)."""
    cfg = ctx.cfg
    exists = Path(cfg.generator.path).exists()
    if exists and not force and not (extend and needs_more_steps(cfg.generator)):
        model = load_generator(cfg.generator.path, ctx.device)
        if extend and not checked(cfg):  # train-generator on a finished generator still leaves its check
            check_generator(cfg, model, ctx.data, ctx.device)
        return model
    if exists and not force and not training_dir(cfg.generator).is_dir():
        raise UserError(f"{cfg.generator.path} was trained with fewer steps than the config asks, but its training "
                        f"state ({training_dir(cfg.generator)}) is not here to continue from (shipped checkpoints "
                        "come without it); add --force to train it again from the start, or write it elsewhere "
                        "with --set generator.path=...")
    log.info("training the generator into %s", cfg.generator.path)
    model = train_generator(cfg.generator, ctx.data, ctx.device, quiet=ctx.quiet, force=force)
    check_generator(cfg, model, ctx.data, ctx.device)
    return model


def ensure_teachers(ctx: RunContext, force: bool = False) -> None:
    """Train every configured teacher whose folder is absent (or all, when forced)."""
    for tcfg in ctx.cfg.teachers:
        if Path(tcfg.path).exists() and not force:
            continue
        log.info("training teacher %s into %s", tcfg.arch, tcfg.path)
        train_teacher(tcfg, ctx.data, ctx.device, quiet=ctx.quiet)


def ensure_surrogate(ctx: RunContext, force: bool = False) -> None:
    """Train the influence-guidance surrogate when it is absent (or forced)."""
    from .surrogate import train_surrogate

    path = ctx.cfg.sample.guidance.influence.surrogate
    if Path(path).exists() and not force:
        return
    log.info("training the surrogate trajectory into %s", path)
    train_surrogate(ctx.cfg.sample.guidance.surrogate, path, ctx.data, ctx.device, ctx.quiet)


def sample_fingerprint(cfg: Config) -> str:
    """What a sampled set depends on: two configs with the same one draw the same bytes."""
    used = [model_read(cfg.sample.keep, cfg)] if cfg.sample.oversample > 1 else []  # the model keep reads
    if cfg.sample.init in SELECTIONS:  # the model the starting selection reads
        used.append(model_read(cfg.sample.init, cfg))
    if cfg.sample.real:  # and the one that picks the real images kept
        used.append(model_read(cfg.sample.real_select, cfg))
    used.append(models_read(cfg.sample.guidance, [t.path for t in cfg.teachers]))  # and those guidance reads
    return fingerprint(cfg.data, cfg.generator.path, cfg.sample, *[u for u in used if u])


def sample_stage(ctx: RunContext) -> Path:
    """Generate sample.ipc images per class into OUTPUT/distilled; finished classes are kept."""
    cfg = ctx.cfg
    root = distilled_dir(cfg)
    artifacts.claim_stage(root, {"what": "sample", "fingerprint": sample_fingerprint(cfg)})
    if artifacts.verify_or_reset(root):
        return root
    remove_stale_temporaries(root)
    check_model_paths(cfg, teachers=False)  # sampling trains no teacher
    keep = candidate_keeper(cfg, ctx.device)  # before the generator, which may train: a missing teacher stops it now
    init_embed = embedding(cfg.sample.init, cfg, ctx.device) if cfg.sample.init in SELECTIONS else None
    real_embed = embedding(cfg.sample.real_select, cfg, ctx.device) if cfg.sample.real else None
    data, quiet = ctx.data, ctx.quiet
    model = ensure_generator(ctx)
    require_ready(cfg, model, data, ctx.device)  # before any sampling: a "not ready" generator stops here
    model.bind(data.class_ids, data.class_names)
    if cfg.sample.guidance.influence.weight > 0:
        ensure_surrogate(ctx)
    k, per_pass = data.num_classes, cfg.sample.classes_per_pass
    groups = [list(range(s, min(s + per_pass, k))) for s in range(0, k, per_pass)]
    rank = ctx.rank
    groups = [groups[g] for g in rank.mine(range(len(groups)))]  # all of them in a single process
    classes = [c for group in groups for c in group]
    terms = build_terms(cfg.sample.guidance, model, data, cache_dir=Path(cfg.output) / "cache", quiet=quiet,
                        classes=classes, teachers=[t.path for t in cfg.teachers])
    window = tuple(cfg.sample.guidance.window)
    f = packing(cfg, data)
    drawn = dataclasses.replace(cfg.sample, ipc=(cfg.sample.ipc * f * f - cfg.sample.real) * cfg.sample.oversample)
    start = time.time()
    bar = progress(total=len(classes), desc="sample classes", unit="class", disable=quiet or not rank.main)
    for group in groups:
        folders = {c: artifacts.class_folder(c, data.class_ids[c], k) for c in group}
        todo = [c for c in group if not artifacts.class_done(root, folders[c], cfg.sample.ipc)]
        if todo:  # the whole group again: its classes' bytes depend on the batch they shared
            t = time.time()
            starts = ({c: class_starts(model, data.train, c, drawn, init_embed) for c in group}
                      if cfg.sample.init != "noise" else None)
            real = {c: data.train.get(select_class(cfg.sample.real_select, data.train, c, cfg.sample.real,
                                                   cfg.sample.seed, real_embed))
                    for c in group} if cfg.sample.real else {}  # read once: encoded as memory, then stored
            memory = {c: encode_all(model, TensorImages(real[c], torch.full((len(real[c]),), c)), ctx.device)
                      for c in real}
            images = sample_classes(model, group, drawn, terms, window, starts, memory)
            for c in todo:
                made = keep(images[c], c) if keep else images[c]
                artifacts.write_class_images(root, folders[c], pack(torch.cat([real[c], made]) if real else made, f))
                log.info("sample: class %d/%d '%s' done, %d images (%d class(es) per pass, %.1f s)", c + 1, k,
                         data.class_names[c], cfg.sample.ipc, len(group), time.time() - t)
        bar.update(len(group))
    bar.close()
    # each rank records its share; the first merges them once every class is on disk
    write_json(root / ".shards" / f"rank{rank.rank}.json", {
        "world": rank.world, "classes": classes, "seconds": round(time.time() - start, 1),
        "guidance_seconds": {t.name: round(t.seconds, 3) for t in terms}})
    distributed.barrier()
    if not rank.main:
        distributed.barrier()  # until the main rank has written the manifest
        return root
    shards = [read_json(root / ".shards" / f"rank{r}.json") for r in range(rank.world)]
    guidance_seconds = {t.name: sum(s["guidance_seconds"].get(t.name, 0.0) for s in shards) for t in terms}
    source = {"kind": "generated", "generator": cfg.generator.path, "guidance": [t.name for t in terms],
              "real_per_class": cfg.sample.real,
              "sample_seconds": max(s["seconds"] for s in shards), "guidance_seconds": guidance_seconds,
              "ot_seconds": guidance_seconds.get("ot", 0.0),  # kept for readers of older manifests' key
              "ranks": rank.world}
    artifacts.write_manifest(
        root, ipc=cfg.sample.ipc, class_names=data.class_names, class_ids=data.class_ids, channels=data.channels,
        image_size=data.image_size, source=source, config=to_dict(cfg), seeds={"sample": cfg.sample.seed},
        extra={"formation": f})
    log.info("sample: %s finished in %.1f s (OT %.1f s), guidance %s", root, source["sample_seconds"],
             source["ot_seconds"], source["guidance"] or "none")
    distributed.barrier()
    return root


def packing(cfg: Config, data) -> int:
    """sample.formation, checked against the data's image size (a native size is known only now)."""
    f = cfg.sample.formation
    if data.image_size % f:
        raise UserError(f"sample.formation={f} does not divide the images' side of {data.image_size} pixels; "
                        "choose a formation that does, or set data.image_size")
    return f


def select_fingerprint(cfg: Config, method: str) -> str:
    """What a real-image selection depends on: the data, IPC, seed and the model it reads, if any."""
    used = model_read(method, cfg)
    packed = [cfg.sample.formation] if cfg.sample.formation > 1 else []  # unpacked sets keep their fingerprints
    return fingerprint(cfg.data, cfg.sample.ipc, cfg.sample.seed, *([used] if used else []), *packed)


def select_stage(ctx: RunContext, method: str, out: str | Path) -> Path:
    """A real-image baseline in the distilled-set format: sample.ipc images per class, training
    images chosen at random, by herding in the first teacher's feature space, nearest k-means
    centres of the generator's latents, ..., or RDED's crops of them (see selection.py)."""
    cfg = ctx.cfg
    root = Path(out)
    artifacts.claim_stage(root, {"what": f"select {method}", "fingerprint": select_fingerprint(cfg, method)})
    if artifacts.verify_or_reset(root):
        return root
    remove_stale_temporaries(root)
    data = ctx.data
    f = packing(cfg, data)
    count = cfg.sample.ipc * f * f  # images picked per class, formation^2 to each stored one
    embed = embedding(method, cfg, ctx.device)
    k = data.num_classes
    start = time.time()
    for c in progress(range(k), desc=f"select {method}", disable=ctx.quiet):
        if len(data.train.indices_of(c)) < count:
            wanted = (f"sample.ipc={cfg.sample.ipc}; lower the IPC" if f == 1 else
                      f"the {count} that sample.ipc={cfg.sample.ipc} x sample.formation^2 pick; lower the IPC or the formation")
            raise UserError(f"class '{data.class_names[c]}' has {len(data.train.indices_of(c))} training images, "
                            f"fewer than {wanted}")
        folder = artifacts.class_folder(c, data.class_ids[c], k)
        if not artifacts.class_done(root, folder, cfg.sample.ipc):
            made = baseline_images(method, data.train, c, count, cfg.sample.seed, embed, f)
            artifacts.write_class_images(root, folder, pack(made, f))
    artifacts.write_manifest(
        root, ipc=cfg.sample.ipc, class_names=data.class_names, class_ids=data.class_ids, channels=data.channels,
        image_size=data.image_size, source={"kind": f"real-{method}", "sample_seconds": round(time.time() - start, 1)},
        config=to_dict(cfg), seeds={"select": cfg.sample.seed}, extra={"formation": f})
    return root


def relabel_stage(distilled: str | Path, ctx: RunContext | None = None) -> dict:
    """Store the teacher ensemble's logits for every image; also measures how often the
    teachers agree with the class each image was generated for. Without a context, the
    config recorded in the set's manifest."""
    ctx = ctx or RunContext.of_set(distilled)
    device = ctx.device
    try:  # one read (hashes, images) serves both the check and the relabelling
        ds = artifacts.read_distilled(distilled)
    except UserError as exc:
        ds = artifacts.read_distilled(distilled, labels=False)  # still fails for damaged images
        log.warning("relabelling %s: its labels are damaged (%s)", distilled, exc)
    rank = ctx.rank  # under torchrun the ranks share the labelling; the main one writes
    ds = ds.training()  # with multi-formation the teachers label each part, as the students see it
    paths, rule = choose_teachers(ctx, ds.images, ds.ipc)
    current = ds.soft_logits is not None and ds.manifest.get("teachers") == paths and ds.manifest.get("relabel") == rule
    if distributed.agree(current):
        return ds.manifest
    ensemble = load_ensemble(paths, device)
    logits = soft_logits(ensemble, ds.images, device)
    if not rank.main:
        distributed.barrier()
        return read_json(ds.root / "manifest.json")
    agree = (logits.argmax(1) == ds.hard).float()
    per_class = [agree[ds.hard == c].mean().item() for c in range(ds.num_classes)]
    artifacts.write_labels(ds.root, ds.hard, logits, paths)
    log.info("relabel: %d images labelled by %d teacher(s) %s; teacher agrees with the class on %.1f%%",
             len(ds.images), len(paths), paths, 100 * agree.mean().item())
    manifest = artifacts.update_manifest(ds.root, teachers=paths, relabel=rule, teacher_agreement={
        "overall": agree.mean().item(), "per_class": dict(zip(ds.class_names, per_class))})
    distributed.barrier()
    return manifest


def metrics_stage(distilled: str | Path, ctx: RunContext | None = None) -> dict:
    """Distribution metrics of the set against held-out real images (the test split), in the
    first teacher's feature space and in the generator's latent space; stored in the manifest."""
    ctx = ctx or RunContext.of_set(distilled)
    cfg, device = ctx.cfg, ctx.device
    ds = artifacts.read_distilled(distilled).training()  # what the students train on
    # a stored report stands only for the same settings, feature space and held-out images
    measured = {"settings": dataclasses.asdict(cfg.metrics), "teacher": cfg.teachers[0].path,
                "scored_on": ctx.data.test.content_id()}
    stored = ds.manifest.get("metrics", {})
    if {k: stored.get(k) for k in measured} == measured:
        return stored
    teacher, _ = load_teacher(cfg.teachers[0].path, device)
    spaces = {"teacher_features": lambda x: features(teacher, x, device)}
    if Path(cfg.generator.path).exists():
        model = load_generator(cfg.generator.path, device)
        if model.info["image_size"] == ds.images.shape[-1]:
            spaces["latent"] = lambda x: encode_all(model, TensorImages(x, torch.zeros(len(x))), device)
    result = {**set_report(cfg.metrics, ctx.data.test, ds.images, ds.hard, ds.num_classes, spaces), **measured}
    artifacts.update_manifest(ds.root, metrics=result)
    return result


def cell_key(student: StudentConfig, manifest: dict, protocol: str) -> str:
    """What one student cell depends on: the recipe (not which other seeds or protocols are
    listed beside it) and the set's images; the soft-label loss, the teachers and their stored
    logits only under soft labels, so that new teachers or OTM weights retrain no hard-label
    student (hard labels are the images' class folders); under dc / dsa none of the recipe their
    source fixes (protocols.FIELD_FIXES), so that a new soft recipe retrains no 1000-epoch cell."""
    recipe = dataclasses.replace(student, seeds=[], protocols=[], workers=None)  # nor how many train at once
    if protocol == "soft":
        return fingerprint(recipe, manifest["files"], manifest.get("teachers"))
    unused = StudentConfig()
    ignored = ["soft_loss", "soft_labels", *(protocols.FIELD_FIXES if protocols.check(protocol) in protocols.FIELD else ())]
    images = {path: digest for path, digest in manifest["files"].items() if path.startswith("images/")}
    return fingerprint(dataclasses.replace(recipe, **{name: getattr(unused, name) for name in ignored}), images)


def cell_name(student: StudentConfig, protocol: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{student.arch}-{protocol}-seed{seed}")


@dataclasses.dataclass
class _Evaluating:
    """One set's evaluation under way: its cached cells, and the group of cells still to train."""

    distilled: Path
    ctx: RunContext
    out: Path
    cells_dir: Path
    keys: dict[str, str]
    scored_on: str
    cells: dict
    group: CellGroup


def _plan_evaluation(distilled: str | Path, ctx: RunContext | None, out: str | Path | None,
                     elsewhere: Sequence[Path] = ()) -> _Evaluating:
    ctx = ctx or RunContext.of_set(distilled)
    cfg = ctx.cfg
    ds = artifacts.read_distilled(distilled)
    data = ctx.data
    if data.class_names != ds.class_names:
        raise UserError(f"{distilled} has classes {ds.class_names[:3]}... but data '{cfg.data.name}' has "
                        f"{data.class_names[:3]}...; evaluate with the config of the dataset the set came from")
    out = Path(out) if out else Path(distilled) / "eval.json"
    cells_dir = out.with_suffix("") if out.suffix else out / "cells"
    remove_stale_temporaries(cells_dir)
    scored_on = data.test.content_id()  # a cached score counts only on the images it was computed on
    keys = {protocol: cell_key(cfg.student, ds.manifest, protocol) for protocol in cfg.student.protocols}  # every seed's
    stats = None
    cells, jobs = {}, []
    for protocol, key in keys.items():
        for seed in cfg.student.seeds:
            name = cell_name(cfg.student, protocol, seed)
            found, cached = _cached_cell(name, key, scored_on, [cells_dir, *(f for f in elsewhere if f != cells_dir)])
            if cached is not None:
                cells[protocol, seed] = cached
                if ctx.rank.main and found != cells_dir:  # adopted: the set keeps its own copy
                    write_json(cells_dir / f"{name}.json", cached)
                continue
            jobs.append(CellJob(protocol, seed, cells_dir / f".{name}-{key}-{scored_on}.resume.pt"))
            if stats is None and protocols.check(protocol) in protocols.FIELD:
                stats = channel_stats(data.train)  # the field's protocols normalise by the training split
    group = CellGroup(ds, data.test, cfg.student, jobs, ds.manifest.get("teachers"), stats, data.mirror_safe)
    return _Evaluating(Path(distilled), ctx, out, cells_dir, keys, scored_on, cells, group)


def _cached_cell(name: str, key: str, scored_on: str, folders: Sequence[Path]) -> tuple[Path | None, dict | None]:
    """(folder, cell): the first finished cell of this name, recipe and set (`key`) scored on these
    test images in any of `folders`; (None, None) when none has it."""
    for folder in folders:
        cached = distributed.agree(read_cached_cell(folder / f"{name}.json"))
        if (cached.get("key"), cached.get("scored_on")) == (key, scored_on):
            return folder, cached
    return None, None


def _identity(ev: _Evaluating, job: CellJob) -> tuple[str, str, str]:
    """What a cell's score depends on, whichever set folder holds it."""
    return cell_name(ev.ctx.cfg.student, job.protocol, job.seed), ev.keys[job.protocol], ev.scored_on


def _store_cell(ev: _Evaluating, job: CellJob, cell: dict) -> None:
    student = ev.ctx.cfg.student
    cell.update(key=ev.keys[job.protocol], scored_on=ev.scored_on)
    if ev.ctx.rank.main:  # under torchrun each student trains data-parallel; the main rank writes
        write_json(ev.cells_dir / f"{cell_name(student, job.protocol, job.seed)}.json", cell)
    log.info("evaluate: %s %s seed %d final-epoch accuracy %.4f (%.0f s)", student.arch, job.protocol, job.seed,
             cell["final"], cell["seconds"])
    ev.cells[job.protocol, job.seed] = cell


def _finish_evaluation(ev: _Evaluating) -> Evaluation:
    cfg, ds = ev.ctx.cfg, ev.group.ds
    cells = [ev.cells[protocol, seed] for protocol in cfg.student.protocols for seed in cfg.student.seeds]
    result = Evaluation(distilled=str(ev.distilled), student=cfg.student.arch, epochs=cfg.student.epochs, ipc=ds.ipc,
                        num_images=len(ds.images), protocols=summarise(cells), cells=cells,
                        student_config=dataclasses.asdict(cfg.student),
                        full_data=full_data_reference(cfg.teachers, cfg.student.arch))
    if ev.ctx.rank.main:
        write_evaluation(ev.out, result)
        warning = junk_warning(ds.manifest)
        if warning:  # beside the accuracies it makes meaningless
            log.warning("%s: %s", ev.distilled, warning)
    distributed.barrier()
    return result


def evaluate_sets(sets: list[tuple[str | Path, RunContext | None, str | Path | None]],
                  elsewhere: Sequence[Path] = ()) -> Iterator[tuple[int, Evaluation]]:
    """evaluate_stage for several (distilled, ctx, out) at once: the cells none of them has cached
    train in one pool (evaluate.train_cells), so that the workers stay busy across sets, and each
    set's Evaluation is yielded with its index as its last cell ends. The device and verbosity
    are the first set's. A cell is trained once for all sets that would train the same one (same
    student recipe, seed, test images and images, and under soft labels the same labels: e.g. two
    rows that differ only in their teachers, under hard labels), and a finished one is also taken
    from the cell folders `elsewhere` (other sets' evaluations, `OUT` without its suffix)."""
    plans = [_plan_evaluation(*item, elsewhere=elsewhere) for item in sets]
    if not plans:
        return
    left = [len(ev.group.jobs) for ev in plans]
    first: dict[tuple[str, str, str], tuple[int, CellJob]] = {}
    twins: dict[tuple[int, CellJob], list[tuple[int, CellJob]]] = {}
    for i, ev in enumerate(plans):
        jobs = []
        for job in ev.group.jobs:
            same = first.setdefault(_identity(ev, job), (i, job))
            if same == (i, job):
                jobs.append(job)
            else:
                twins.setdefault(same, []).append((i, job))
        ev.group = dataclasses.replace(ev.group, jobs=jobs)
    for i, ev in enumerate(plans):
        if not left[i]:
            yield i, _finish_evaluation(ev)
    for i, job, cell in train_cells([ev.group for ev in plans], plans[0].ctx.device, plans[0].ctx.quiet):
        for j, same in [(i, job), *twins.get((i, job), [])]:
            _store_cell(plans[j], same, dict(cell))
            left[j] -= 1
            if not left[j]:
                yield j, _finish_evaluation(plans[j])


def evaluate_stage(distilled: str | Path, ctx: RunContext | None = None, out: str | Path | None = None) -> Evaluation:
    """Train cfg.student on the set for each protocol and seed; each cell is saved as it ends
    and reused on rerun, so an interrupted evaluation resumes."""
    return dict(evaluate_sets([(distilled, ctx, out)]))[0]


def baseline_stage(ctx: RunContext) -> list[Evaluation]:
    """The real-image sets of the same IPC that `run` scores beside the distilled one, one per
    cfg.baseline method in order: each made once into OUTPUT/baselines/METHOD, labelled by the
    same teachers and evaluated with the same students; [] when none is asked for."""
    results = []
    for method in ctx.cfg.baseline:
        root = Path(ctx.cfg.output) / "baselines" / method
        if ctx.rank.main:
            select_stage(ctx, method, root)
        distributed.barrier()
        relabel_stage(root, ctx)
        if ctx.rank.main:  # the same distribution metrics as the distilled set, for the summary and report
            metrics_stage(root, ctx)
        distributed.barrier()
        results.append(evaluate_stage(root, ctx))
    return results


@contextlib.contextmanager
def _timed(seconds: dict, stage: str):
    t = time.time()
    yield
    seconds[stage] = time.time() - t


def run(ctx: RunContext) -> Evaluation:
    """data -> teachers -> generator -> sample -> relabel -> metrics -> evaluate -> baseline -> summary."""
    cfg = ctx.cfg
    out = Path(cfg.output)
    check_model_paths(cfg)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    write_text(out / "config.yaml", dump_config(cfg))
    seconds = {}
    with _timed(seconds, "data"):
        data = ctx.data
    with _timed(seconds, "models"):
        ensure_teachers(ctx)  # first: a newly trained generator is checked with the teacher
        ensure_generator(ctx)
    with _timed(seconds, "sample"):
        root = sample_stage(ctx)
    with _timed(seconds, "relabel"):
        relabel_stage(root, ctx)
    with _timed(seconds, "metrics"):
        if ctx.rank.main:  # under torchrun the other ranks wait: the metrics are cheap
            metrics_stage(root, ctx)
        distributed.barrier()
        manifest = read_json(root / "manifest.json")
    with _timed(seconds, "evaluate"):
        result = evaluate_stage(root, ctx)
    with _timed(seconds, "baseline"):
        baselines = baseline_stage(ctx)
    if not baselines:
        del seconds["baseline"]
    if not ctx.rank.main:
        return result
    write_json(out / "timings.json", {k: round(v, 1) for k, v in seconds.items()})
    text = report.summary_text(cfg.output, cfg.data.name, manifest, result, baselines, seconds)
    write_text(out / "summary.md", text)
    page = report.build(out, data=data)
    print(text + f"report: {page}")  # the result, on stdout even with --quiet; summary.md keeps it
    return result
