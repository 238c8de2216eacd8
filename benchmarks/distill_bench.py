"""otdistill against every baseline, side by side, one student recipe, in one resumable run.

Rows (method): real-image baselines (random, herding, kmeans, confident, informative, rded),
generative baselines (plain, d4m, igd), ours (otg = OTG sampling with the baselines' labels;
otdistill = OTG + LIA + OTM) and the paper's ablations (no_otg, no_lia, no_otm = KL only, no_otm_ce_mse), plus full_data (the student on the whole
training split, hard labels). Every row is evaluated with the same students, protocols,
seeds and epochs; soft labels of the baselines come from the first teacher with KL (the
RDED/SRe2L recipe), ours from LIA + OTM as configs/otdistill.yaml says.

Rows that sample with the same settings share one sampled set (copied per row, so each row
keeps its own labels). Every set, label and student cell is cached under --work, so an
interrupted run resumes where it stopped.

Usage: python benchmarks/distill_bench.py [--ipc 1 10 50] [--seeds 0 1 2] [--students convnet3 resnet18]
       python benchmarks/distill_bench.py --quick     (IPC 10, seed 0, ConvNet-3, 10 epochs, 10 sampling
                                                       steps, 2000 test images, no metrics: a smoke run)
Writes benchmarks/results/bench-fashion-mnist.json (rows) and .md (the rendered table), and
the LIA/OTM ablation rows as lia-otm-fashion-mnist.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

# bench_rows (beside this script) also puts src/ on sys.path
import published
from bench_rows import ABLATION, ROOT, ROWS, build_set, epochs_for, loss_weights, made_by, merged, row_config, sets_of

from otdistill import pipeline, protocols
from otdistill.allocator import keep_freed_memory
from otdistill.artifacts import DistilledSet
from otdistill.config import fingerprint, load_config
from otdistill.context import RunContext
from otdistill.data import every_nth, load_dataset
from otdistill.evaluate import train_student
from otdistill.io import atomic_path, read_json, write_json, write_text
from otdistill.report import curves_plot, verdict


def protocol_name(text: str) -> str:
    if protocols.problem(text):
        raise argparse.ArgumentTypeError(protocols.problem(text))
    return text


def full_data_cells(cfg, data, students, seeds, epochs: int, work: Path) -> dict:
    """The reference: each student trained on the whole training split, hard labels."""
    train = data.train
    images = torch.cat([train.get(torch.arange(s, min(s + 5000, len(train)))) for s in range(0, len(train), 5000)])
    ds = DistilledSet.in_memory(images, train.labels, data.num_classes, root=work)
    cells = {}
    for student in students:
        scfg = dataclasses.replace(cfg.student, arch=student, epochs=epochs, batch_size=128, seeds=[])
        for seed in seeds:  # cached per recipe and test split, like pipeline.evaluate_stage's cells
            path = work / "full_data" / f"{student}-hard-seed{seed}-{fingerprint(scfg, data.test.content_id())}.json"
            if not path.exists():  # a killed training resumes from its last finished epoch
                resume = path.with_name(path.stem + ".resume.pt")
                write_json(path, train_student(ds, data.test, scfg, "hard", seed, None, "cpu", quiet=True,
                                               checkpoint=resume))
            cells.setdefault(student, []).append(read_json(path)["final"])
    return cells


def trained_full_data_row(folder: Path) -> dict:
    """The full_data row of a model already trained on the whole training split (one seed, its
    own recipe and length, as its model.json records them)."""
    info = read_json(folder / "model.json")
    return {"method": "full_data", "ipc": None, "student": info["arch"], "labels": "hard",
            "acc_mean": info["test_accuracy"], "acc_std": 0.0, "seeds": [info["seed"]], "gen_seconds": None,
            "acc": [info["test_accuracy"]], "epochs": info["epochs"], "full_data_model": str(folder),
            "full_data_recipe": info.get("recipe")}


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def with_ior_hlr(rows: list[dict]) -> list[dict]:
    """Each row with `ior` (its accuracy minus the random real subset's in the same IPC, student
    and labels, over the same sets where that row exists, else over the most; DD-Ranking's IOR)
    and, for hard labels, `hlr` (the full-data accuracy of its student minus its own; DD-Ranking's
    HLR); None where the reference is absent."""
    random: dict[tuple, float] = {}  # per cell, and per cell and sets: a row's reference spans its sets, else the most
    for r in sorted((r for r in rows if r["method"] == "random"), key=lambda r: len(sets_of(r))):
        cell = r["ipc"], r["student"], r["labels"]
        random[cell] = random[(*cell, sets_of(r))] = r["acc_mean"]
    full = {r["student"]: r["acc_mean"] for r in rows if r["method"] == "full_data"}
    out = []
    for r in rows:
        cell = r["ipc"], r["student"], r["labels"]
        ref = random.get((*cell, sets_of(r)), random.get(cell))
        hard = protocols.labels(r["labels"]) == "hard" and r["method"] != "full_data" and r["student"] in full
        out.append({**r, "ior": r["acc_mean"] - ref if ref is not None and r["method"] != "full_data" else None,
                    "hlr": full[r["student"]] - r["acc_mean"] if hard else None})
    return out


def made_with(rows: list[dict]) -> list[str]:
    """The generators and label teachers the rows were made with (rows written before these
    were recorded name neither), as preamble lines of the table."""
    generators = sorted({r["generator"] for r in rows if r.get("generator")})
    teachers = sorted({", ".join(r["teacher_paths"]) for r in rows if r.get("teacher_paths")})
    lines = [f"Generated sets sampled from: {'; '.join(generators)} (its quality against real images: "
             "docs/generator.md)."] if generators else []
    lines += [f"Soft labels by: {' | '.join(teachers)}."] if teachers else []
    return lines + [""] if lines else []


def sets_note(row: dict) -> str:
    return f" x {len(sets_of(row))} sets" if sets_of(row) else ""


def render(rows: list[dict]) -> str:
    # rows merge across invocations, so each row names its own seeds
    lines = ["# otdistill benchmark: Fashion-MNIST", "",
             "Final-epoch test accuracy (%), mean +- std over the seeds in the seeds column (x N sets: over N "
             "sets made with different sampling seeds, each scored with those student seeds); one student protocol "
             "per column value for every row of an IPC and student: soft / hard = AdamW + cosine, RandomResizedCrop "
             "+ flip, the epochs shown (below 300: quick, short students); dc / dsa = the field's hard-label "
             "protocols (SGD step schedule, 300 / 1000 epochs, docs/protocols.md). "
             "gen s = seconds to make the set on 2 CPU cores; OT dist (lower is closer) and coverage (higher "
             "is better) compare the set with held-out real images in the first teacher's feature space; agree = "
             "share of the images the label teachers assign to the class they were made or picked for. "
             "IOR = the row minus the random real subset of the same cell (points); HLR (hard labels) = the "
             "student's full-data accuracy minus the row (points). A generated row marked (K real/class) keeps "
             "K real images per class that herding or another selection picked (sample.real) beside its generated ones; "
             "a row marked (packed FxF) stores FxF images of 1/F the side in each image (sample.formation), real and "
             "generated alike: F^2 x IPC smaller images per class in the same budget (K real parts/class: K of them "
             "real).", "",
             *made_with(rows),
             "| method | IPC | student | protocol | loss | epochs | seeds | accuracy | IOR | HLR | gen s | OT dist | coverage | agree |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value, fmt, scale=1):
        return "-" if value is None else format(scale * value, fmt)

    for r in sorted(rows, key=lambda r: (r["ipc"] or 0, r["student"], r["labels"], -r["acc_mean"])):
        loss = "+".join(f"{t}{w:g}" for t, w in (r.get("soft_loss") or {}).items() if w) or "ce"
        f = r.get("formation", 1)
        method = r["method"] + (f" ({r['real_per_class']} real{' parts' if f > 1 else ''}/class)"
                                if r.get("real_per_class") else "") + (f" (packed {f}x{f})" if f > 1 else "")
        lines.append(f"| {method} | {r['ipc'] or 'all'} | {r['student']} | {r['labels']} | {loss} | {r['epochs']} | "
                     f"{','.join(map(str, r['seeds']))}{sets_note(r)} | "
                     f"{100 * r['acc_mean']:.2f} +- {100 * r['acc_std']:.2f} | {cell(r.get('ior'), '+.2f', 100)} | "
                     f"{cell(r.get('hlr'), '.2f', 100)} | {cell(r['gen_seconds'], '.0f')} | "
                     f"{cell(r.get('ot_distance'), '.2f')} | {cell(r.get('coverage'), '.3f')} | "
                     f"{cell(r.get('teacher_agreement'), '.2f')} |")
    for r in rows:
        if r.get("full_data_model"):
            recipe = r.get("full_data_recipe") or {}
            lines += ["", f"full_data ({r['student']}): {r['full_data_model']}, trained on the whole training split with "
                      f"its own recipe ({recipe.get('optimizer', '?')}, {r['epochs']} epochs, batch "
                      f"{recipe.get('batch_size', '?')}, seed {r['seeds'][0]}), not a protocol of this table."]
    lines += cell_verdicts(rows)
    if any(protocols.check(r["labels"]) in protocols.FIELD for r in rows):  # the published rows' own protocols
        lines += ["", *published.render(sorted({r["ipc"] for r in rows if r["ipc"]}))]
    curves = sorted({r.get("curve_test_images") for r in rows if r.get("curve")})
    if curves:
        lines.append(f"Learning curves (student.eval_every; points on {', '.join(map(str, curves))} test images, the "
                     "final epoch's accuracy above on all): the PNG beside this file.")
    return "\n".join(lines) + "\n"


def cell_verdicts(rows: list[dict]) -> list[str]:
    """Per IPC, student and protocol: the best generated row against the best real-image row
    (report.verdict: ahead / behind beyond the larger seed std, else level); each names the sets
    it spans, since one set is one draw. A method measured over several draws counts by its row over the most."""
    widest: dict[tuple, dict] = {}
    for r in rows:
        at = r["ipc"], r["student"], r["labels"], r["epochs"], r["method"]
        if r["method"] in ROWS and (at not in widest or len(sets_of(r)) > len(sets_of(widest[at]))):
            widest[at] = r
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for (*cell, method), r in widest.items():
        kind = "real" if ROWS[method][0] == "select" else "generated"
        cells.setdefault(tuple(cell), {}).setdefault(kind, []).append(r)
    lines = []
    for (ipc, student, labels, epochs), kinds in sorted(cells.items()):
        if len(kinds) == 2:
            gen, real = (max(kinds[k], key=lambda r: r["acc_mean"]) for k in ("generated", "real"))
            told = verdict(*({"final_mean": r["acc_mean"], "final_std": r["acc_std"], "seeds": r.get("acc", r["seeds"])}
                             for r in (gen, real)))
            lines.append(f"| {ipc} | {student} | {labels} | {epochs} | {gen['method']} {100 * gen['acc_mean']:.2f}"
                         f"{sets_note(gen)} | {real['method']} {100 * real['acc_mean']:.2f}{sets_note(real)} | {told} |")
    head = ["", "Verdict per cell: the best generated row against the best real-image row of the same IPC, student, "
            "protocol and length (ahead / behind when the difference is beyond the larger seed std, else level; "
            "x N sets: over N draws of the set, else one):", "",
            "| IPC | student | protocol | epochs | best generated | best real | verdict |", "|---|---|---|---|---|---|---|"]
    return head + lines if lines else []


def prepare_set(method: str, ipc: int, sample_seed: int | None, args, work: Path, data, test_data) -> dict:
    """One set of a row (its sampler's or selection's draw `sample_seed`; None: the recipe's seed)
    made, labelled and measured, with what each student's evaluation needs (score_sets runs them):
    its manifest, metrics and, per student, (config, epochs, None until scored)."""
    cfg = row_config(method, ipc, args, work, data.train, sample_seed)
    ctx = RunContext(cfg, quiet=True, data=data)
    root = build_set(method, ctx, work)
    # hard-label students read no teacher, but the teacher-agreement metric comes from the labelling
    # (and labels change no hard-label cell's key: pipeline.cell_key)
    if args.metrics or any(protocols.labels(p) == "soft" for p in args.protocols):
        pipeline.relabel_stage(root, ctx)
    metrics = pipeline.metrics_stage(root, ctx).get("teacher_features", {}) if args.metrics else {}
    students, evaluations = {}, {}
    for student in args.students:
        epochs = epochs_for(args.epochs, student, ipc)
        scfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, arch=student, seeds=args.seeds,
                                                                    epochs=epochs))
        # a cell remembers the images it was scored on; a test subset gets its own file so
        # that its cells do not displace the full test split's
        scored = f"eval-{student}" + (f"-test{args.test_subset}" if args.test_subset else "")
        evaluations[student] = (root, RunContext(scfg, quiet=True, data=test_data), Path(cfg.output) / f"{scored}.json")
        students[student] = (scfg, epochs, None)
    return {"manifest": read_json(root / "manifest.json"), "metrics": metrics, "students": students,
            "evaluations": evaluations}


def cell_folders(work: Path) -> list[Path]:
    """Every row's student cells under --work: a cell another row already trained on the same
    images with the same recipe and labels (e.g. otg's and otdistill's, which differ only in their
    soft-label loss, under hard labels) is taken from there instead of trained again."""
    return sorted(p for p in work.glob("rows/*/eval-*") if p.is_dir())


def score_sets(sets: list[dict], work: Path) -> Iterator[int]:
    """Score every prepared set's students with one pool of cell workers (pipeline.evaluate_sets),
    so that a row's three seeds and the next set's cells keep both workers busy; yields a set's
    index once all its students are scored, their protocols' results in its `students`."""
    items = [(k, student, evaluation) for k, s in enumerate(sets) for student, evaluation in s["evaluations"].items()]
    left = Counter(k for k, _, _ in items)
    for i, result in pipeline.evaluate_sets([evaluation for _, _, evaluation in items], cell_folders(work)):
        k, student, _ = items[i]
        scfg, epochs, _ = sets[k]["students"][student]
        sets[k]["students"][student] = (scfg, epochs, result["protocols"])
        left[k] -= 1
        if not left[k]:
            yield k


def mean_or_none(values) -> float | None:
    values = list(values)
    return None if None in values else statistics.fmean(values)


def set_rows(method: str, ipc: int, sets: list[dict], sample_seeds: list[int] | None, test_images: int) -> list[dict]:
    """A row per student and protocol from a method's scored sets (score_sets): accuracy over
    sets (outer) x student seeds (inner), metrics, agreement and sampling seconds averaged over the sets,
    and with several sets each one's mean (`set_means`)."""
    manifest = sets[0]["manifest"]  # what made the sets: one recipe, so alike but for the seed
    per_set = {"gen_seconds": [s["manifest"]["source"].get("sample_seconds") for s in sets],
               "teacher_agreement": [s["manifest"].get("teacher_agreement", {}).get("overall") for s in sets],
               **{name: [s["metrics"].get(name) for s in sets] for name in ("ot_distance", "coverage")}}
    rows = []
    for student, (scfg, epochs, results) in sets[0]["students"].items():
        for labels in results:
            scored = [s["students"][student][2][labels] for s in sets]
            acc = [a for p in scored for a in p["final"]]
            mean, std = summary(acc)
            rows.append({"method": method, "ipc": ipc, "student": student, "labels": labels,
                         "acc_mean": mean, "acc_std": std, "seeds": scored[0]["seeds"],
                         "epochs": protocols.epochs(labels, epochs), "acc": acc,
                         **{name: mean_or_none(values) for name, values in per_set.items()},
                         "test_images": test_images, "soft_loss": loss_weights(scfg.student, labels),
                         "teachers": len(manifest.get("teachers", [])), **made_by(manifest)})
            if sample_seeds:
                rows[-1].update(sample_seeds=sample_seeds, set_means=[p["final_mean"] for p in scored])
            curves = [p.get("curve") for p in scored]
            if all(curves):  # student.eval_every: test accuracy against epoch, mean over sets and seeds
                rows[-1].update(curve={e: statistics.fmean(c[e] for c in curves) for e in curves[0]},
                                curve_test_images=min(scfg.student.curve_test_images or test_images, test_images))
    return rows


def publish(result: Path, rows: list[dict]) -> list[dict]:
    """Merge this run's rows into the result file and render its table and curves; called after
    every row, so that a run cut short keeps the rows it finished."""
    rows = with_ior_hlr(merged(result, rows))
    write_json(result, rows)
    write_text(result.with_suffix(".md"), render(rows))
    curves = [r for r in rows if r.get("curve")]
    if curves:
        with atomic_path(result.with_name(result.stem + "-curves.png")) as tmp:
            tmp.write_bytes(curves_plot(curves))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sample-seeds", type=int, nargs="+", default=None,
                        help="make each row's set once per seed (sample.seed: the sampler's draw, the selections' "
                             "candidates) and score every set: a row is then over sets x student seeds, with "
                             "set_means per set; default: the recipes' seed, one set")
    parser.add_argument("--students", nargs="+", default=["convnet3", "resnet18"])
    parser.add_argument("--methods", nargs="+", default=[*ROWS, "full_data"])
    parser.add_argument("--epochs", nargs="+", default=["80"],
                        help="student epochs: N, IPC=N, STUDENT=N or STUDENT/IPC=N (most specific wins)")
    parser.add_argument("--protocols", nargs="+", default=["soft", "hard"], type=protocol_name,
                        help="student protocols (src/otdistill/protocols.py): soft, hard (the --epochs recipe), "
                             "dc, dsa (the field's, at their own length)")
    parser.add_argument("--full-epochs", type=int, default=3,
                        help="epochs of the full-data reference (an epoch on 2 CPU cores: ConvNet-3 ~4 min, ResNet-18 ~22 min)")
    parser.add_argument("--full-data-model", default=None, metavar="FOLDER",
                        help="take the full-data reference (full_data row, HLR) from a model trained on the whole "
                             "training split, e.g. checkpoints/fashion-mnist/teachers/convnet3-e20 (its model.json: "
                             "test accuracy, recipe), instead of training it here")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the recipes')")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every row, after the row's own (e.g. data.image_size=28)")
    parser.add_argument("--test-subset", type=int, default=0,
                        help="score students on this many test images (every n-th; 0 = all)")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false", help="skip the distribution metrics")
    parser.add_argument("--quick", action="store_true",
                        help="IPC 10, seed 0, ConvNet-3, 10 epochs, 10 steps, 2000 test images, no metrics")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--result", default=str(ROOT / "benchmarks/results/bench-fashion-mnist.json"))
    args = parser.parse_args()
    keep_freed_memory()
    if args.quick:
        args.ipc, args.seeds, args.students, args.epochs, args.steps = [10], [0], ["convnet3"], ["10"], 10
        args.test_subset, args.metrics = 2000, False
        args.methods = [m for m in args.methods if m != "full_data"]
        args.work = args.work + "-quick"
        args.result = args.result.replace(".json", "-quick.json")
    work = Path(args.work)
    default = load_config(ROOT / "configs" / "base" / "fashion-mnist.yaml", args.overrides)  # every row's base
    data = load_dataset(default.data)
    test_data = data if not args.test_subset else dataclasses.replace(data, test=every_nth(data.test, args.test_subset))
    rows = []
    start = time.time()
    for ipc in args.ipc:
        # every set made first, then all their students in one pool; a row is published as its last cell ends
        made = [(method, prepare_set(method, ipc, seed, args, work, data, test_data))
                for method in args.methods if method in ROWS for seed in args.sample_seeds or [None]]
        left = Counter(method for method, _ in made)
        for done in score_sets([s for _, s in made], work):
            method = made[done][0]
            left[method] -= 1
            if left[method]:
                continue
            for row in set_rows(method, ipc, [s for m, s in made if m == method], args.sample_seeds, len(test_data.test)):
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("method", "ipc", "student", "labels", "acc_mean")}), flush=True)
            publish(Path(args.result), rows)
    if "full_data" in args.methods:
        for student, accs in full_data_cells(default, data, args.students, args.seeds, args.full_epochs, work).items():
            mean, std = summary(accs)
            rows.append({"method": "full_data", "ipc": None, "student": student, "labels": "hard", "acc_mean": mean,
                         "acc_std": std, "seeds": args.seeds, "gen_seconds": None, "acc": accs,
                         "epochs": args.full_epochs})
    if args.full_data_model:
        rows.append(trained_full_data_row(Path(args.full_data_model)))
    rows = publish(Path(args.result), rows)
    # the ablation file is rewritten only by a run of all its variants, so that its rows
    # always share one recipe (a rerun of `otdistill` alone after a recipe change would not)
    ablation = [{"variant": v, "ipc": r["ipc"], "student": r["student"], "acc_mean": r["acc_mean"], "acc_std": r["acc_std"],
                 "seeds": r["seeds"], "epochs": r["epochs"], "soft_loss": r.get("soft_loss"),
                 "teacher_paths": r.get("teacher_paths")}
                for v, m in ABLATION.items() for r in rows if r["method"] == m and r["labels"] == "soft"]
    if ablation and set(ABLATION.values()) <= set(args.methods):
        Path(args.result.replace("bench-", "lia-otm-")).write_text(json.dumps(ablation, indent=2) + "\n")
    print(f"{len(rows)} rows in {time.time() - start:.0f} s -> {args.result}")


if __name__ == "__main__":
    main()
