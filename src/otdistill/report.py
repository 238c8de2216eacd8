"""`otdistill report RUN_DIR`: what a run (or a folder of runs) made, to look at.

Everything is read from saved artifacts: every distilled set (a folder with manifest.json)
under RUN_DIR, every evaluation JSON that names one of them, and each run's timings.json.
Writes RUN_DIR/report/report.html (self-contained, images embedded) and its twin
RUN_DIR/report/report.md beside the PNGs it shows.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from . import artifacts, guidance  # noqa: E402
from . import protocols as student_protocols  # noqa: E402  (summary_text has its own `protocols`)
from .config import from_dict  # noqa: E402
from .data import LabelledData, class_subset, load_dataset  # noqa: E402
from .errors import UserError  # noqa: E402
from .io import atomic_path, write_text  # noqa: E402
from .metrics import junk_warning  # noqa: E402
from .records import Evaluation, Manifest, ProtocolResult, is_evaluation  # noqa: E402
from .relabel import label_entropy  # noqa: E402

MAX_GRID_CLASSES = 20  # ImageNet has 1000; a page shows the first ones
MAX_GRID_IMAGES = 10


@dataclass
class SetEntry:
    """One distilled set and the evaluations of it found under the report's folder."""

    name: str  # path relative to the report's folder
    method: str
    ds: artifacts.DistilledSet
    evals: list[Evaluation] = field(default_factory=list)

    @property
    def guided(self) -> bool:
        return bool(self.ds.manifest["source"].get("guidance"))


def method_label(source: dict, formation: int = 1) -> str:
    """plain | igd | ot | igd+ot | real-<selection> from a manifest's `source`; a generated set
    that keeps real images (sample.real) says how many per class (parts, when packed), a packed one
    (sample.formation) its layout."""
    packed = f" (packed {formation}x{formation})" if formation > 1 else ""
    if source.get("kind") != "generated":
        return source.get("kind", "unknown") + packed
    label = guidance.method_label(list(source.get("guidance") or []))
    parts = " parts" if formation > 1 else ""
    real = f" + {source['real_per_class']} real{parts}/class" if source.get("real_per_class") else ""
    return label + real + packed


def _json_or_none(path: Path):
    """A JSON file's content, or None when it is unreadable: a report shows what it can."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError covers bad JSON and non-UTF-8 bytes
        return None


def collect(run_dir: Path) -> list[SetEntry]:
    entries: dict[Path, SetEntry] = {}
    for manifest in sorted(run_dir.rglob("manifest.json")):
        root = manifest.parent
        if "report" in root.relative_to(run_dir).parts:
            continue
        try:
            ds = artifacts.read_distilled(root, verify_hashes=False)
        except UserError:
            continue  # an unfinished set: nothing to show yet
        name = str(root.relative_to(run_dir)) if root != run_dir else "."
        entries[root.resolve()] = SetEntry(name, method_label(ds.manifest["source"], ds.manifest.get("formation", 1)), ds)
    for path in sorted(run_dir.rglob("*.json")):
        obj = _json_or_none(path)
        if is_evaluation(obj):
            entry = entries.get(Path(obj["distilled"]).resolve())
            if entry is not None:
                entry.evals.append(obj)
    return sorted(entries.values(), key=lambda e: (e.ds.ipc, e.method, e.name))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grid(images: torch.Tensor, ncol: int):
    """uint8 (N, C, H, W) -> (H', W', C) numpy grid, padded to ncol columns (numpy: matplotlib
    copies a torch tensor through an __array__ call that NumPy 2 deprecates)."""
    if len(images) < ncol:
        pad = torch.full((ncol - len(images), *images.shape[1:]), 255, dtype=torch.uint8)
        images = torch.cat([images, pad])
    g = make_grid(images, nrow=ncol, padding=1, pad_value=255)
    return g.permute(1, 2, 0).numpy()


def class_grids(entry: SetEntry, real: LabelledData | None) -> bytes:
    """Rows = classes; left the distilled images, right real training images of the class."""
    ds = entry.ds
    n = min(ds.ipc, MAX_GRID_IMAGES)
    classes = list(range(min(ds.num_classes, MAX_GRID_CLASSES)))
    cols = 2 if real is not None else 1
    fig, axes = plt.subplots(len(classes), cols, figsize=(0.45 * n * cols + 1.6, 0.5 * len(classes) + 0.6),
                             squeeze=False)
    g = torch.Generator().manual_seed(0)
    for row, c in enumerate(classes):
        panels = [ds.images[ds.hard == c][:n]]
        if real is not None:
            panels.append(real.train.get(class_subset(real.train, c, n, g)))
        for col, imgs in enumerate(panels):
            ax = axes[row][col]
            grid = _grid(imgs, n)
            ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(ds.class_names[c][:14], rotation=0, ha="right", va="center", fontsize=8)
            if row == 0:
                ax.set_title("distilled" if col == 0 else "real (training split)", fontsize=9)
    fig.suptitle(f"{entry.name}: {entry.method}, IPC {ds.ipc}", fontsize=10)
    return _png(fig)


BASELINE = "real-random"  # the row every other is compared with (DD-Ranking's improvement over random)


def accuracy_rows(entries: list[SetEntry]) -> list[dict]:
    """One row per set, student and protocol; `ior`: the row's accuracy minus the random real
    subset's in the same cell (when one was scored), `hlr`: for hard labels, the full-data
    accuracy minus the row's (when known)."""
    rows = []
    for e in entries:
        for ev in e.evals:
            full = (ev.get("full_data") or {}).get("accuracy")
            for protocol, r in ev["protocols"].items():
                rows.append({"set": e.name, "method": e.method, "ipc": e.ds.ipc, "student": ev["student"],
                             "epochs": r.get("epochs") or ev.get("epochs"), "labels": protocol, "mean": r["final_mean"],
                             "curve": r.get("curve"),
                             "std": r["final_std"], "seeds": len(r["seeds"]),
                             "hlr": (full - r["final_mean"] if full is not None
                                     and student_protocols.labels(protocol) == "hard" else None)})
    cell = lambda r: (r["ipc"], r["student"], r["epochs"], r["labels"])  # noqa: E731
    random_real = {cell(r): r["mean"] for r in rows if r["method"] == BASELINE}
    for r in rows:
        r["ior"] = r["mean"] - random_real[cell(r)] if cell(r) in random_real else None
    return rows


def inspect_text(distilled: str | Path) -> str:
    """What `otdistill inspect` prints: a set's size, labels, metrics and per-class state."""
    ds = artifacts.read_distilled(distilled, verify_hashes=False)
    m = ds.manifest
    lines = [f"{distilled}: {m['num_classes']} classes x IPC {m['ipc']} = {len(ds.images)} images, "
             f"{m['channels']}x{m['image_size']}x{m['image_size']}, source {m['source'].get('kind')}"]
    if ds.formation > 1:
        f = ds.formation
        lines.append(f"multi-formation: each image packs {f} x {f} parts of {m['image_size'] // f} px; students train "
                     f"on the {len(ds.images) * f * f} parts enlarged back")
    if ds.soft_logits is not None:
        ent = label_entropy(ds.soft_logits)
        rule = m.get("relabel", {})
        how = (f", chosen by the entropy rule (image/real entropy ratio {rule['ratio']:.2f})"
               if rule.get("rule") == "entropy" else "")
        lines.append(f"soft labels from {len(m['teachers'])} teacher(s){how}; normalised label entropy "
                     f"mean {ent.mean():.3f}")
    metrics = {space: r for space, r in m.get("metrics", {}).items() if isinstance(r, dict) and "ot_distance" in r}
    for space, r in metrics.items():
        lines.append(f"{space}: OT distance to held-out real {r['ot_distance']:.3f}, coverage {r['coverage']:.3f}, "
                     f"density {r['density']:.3f} (mean over classes)")
    agree = m.get("teacher_agreement", {}).get("per_class", {})
    for i, c in enumerate(m["classes"]):
        a = f"  teacher agrees {agree[c['name']]:.0%}" if c["name"] in agree else ""
        per = "".join(f"  {space} OT {r['per_class'][i]['ot_distance']:.2f} cov {r['per_class'][i]['coverage']:.2f}"
                      for space, r in metrics.items())
        lines.append(f"  {c['folder']:<20} {c['count']:>4} images  {c['status']}{a}{per}")
    return "\n".join(lines)


def summary_text(output: str, dataset: str, manifest: Manifest, result: Evaluation, baselines: list[Evaluation],
                 seconds: dict) -> str:
    """What `run` prints: one row for the distilled set and one per real-image baseline, the
    set's difference to each (improvement over random, over herding, ...), the hard-label gap
    to full data, and any warning."""
    full = result.get("full_data")
    protocols = list(result["protocols"])
    lines = [f"# otdistill run: {output}", "",
             f"dataset {dataset}, IPC {manifest['ipc']}, {result['num_images']} images, "
             f"student {result['student']}, final-epoch top-1 (mean +- std over seeds (n))", "",
             *[f"- {student_protocols.describe(p, result['student_config'])}" for p in protocols], "",
             "| set | " + " | ".join(protocols) + " |", "|" + "---|" * (len(protocols) + 1)]

    def row(name: str, cells: list[str]) -> None:
        lines.append("| " + " | ".join([name, *cells]) + " |")

    def accuracy(evaluation: Evaluation, protocol: str) -> str:
        r = evaluation["protocols"].get(protocol)
        return "-" if r is None else f"{100 * r['final_mean']:.2f} +- {100 * r['final_std']:.2f} ({len(r['seeds'])})"

    row("distilled", [accuracy(result, p) for p in protocols])
    for b in baselines:
        row(f"{baseline_name(b)} (baseline)", [accuracy(b, p) for p in protocols])
    verdicts = []
    for b in baselines:
        diffs = {p: 100 * (result["protocols"][p]["final_mean"] - b["protocols"][p]["final_mean"])
                 for p in protocols if p in b["protocols"]}
        row(f"distilled - {baseline_name(b)}", [f"{diffs[p]:+.2f}" if p in diffs else "-" for p in protocols])
        if diffs:
            verdicts.append(f"over {baseline_name(b)}: " + ", ".join(
                f"{p} {verdict(result['protocols'][p], b['protocols'][p])}" for p in diffs))
    if full is not None:
        row(f"full data ({100 * full['accuracy']:.2f}) - distilled",
            [f"{100 * (full['accuracy'] - result['protocols'][p]['final_mean']):.2f}"
             if student_protocols.labels(p) == "hard" else "-"
             for p in protocols])
    if verdicts:
        lines += ["", "better than picking real images (same students, per protocol)? " + "; ".join(verdicts)]
    if full is not None:
        lines.append(f"full data: teacher {full['teacher']} ({result['student']} on the whole training split)")
    if "teacher_agreement" in manifest:
        lines += ["", f"teacher agrees with the generated class on {100 * manifest['teacher_agreement']['overall']:.1f}% "
                      "of images"]
    lines += metric_lines("distilled", manifest)
    for b in baselines:
        lines += metric_lines(baseline_name(b), _json_or_none(Path(b["distilled"]) / "manifest.json") or {})
    warning = junk_warning(manifest)
    if warning:
        lines += ["", f"**WARNING**: {warning}"]
    lines += ["", "time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())]
    return "\n".join(lines) + "\n"


def metric_lines(name: str, manifest: Manifest) -> list[str]:
    return [f"{name}, {space}: OT distance to held-out real {r['ot_distance']:.3f}, coverage {r['coverage']:.3f}, "
            f"density {r['density']:.3f}" for space, r in manifest.get("metrics", {}).items()
            if isinstance(r, dict) and "ot_distance" in r]


def verdict(ours: ProtocolResult, theirs: ProtocolResult) -> str:
    """ahead / behind / level by the difference of means against the larger seed std: a
    difference inside it is level, and more seeds are what would tell."""
    diff, noise = 100 * (ours["final_mean"] - theirs["final_mean"]), 100 * max(ours["final_std"], theirs["final_std"])
    if min(len(ours["seeds"]), len(theirs["seeds"])) < 2:
        return f"untold ({diff:+.2f} points on one seed; run 3 or more seeds for a verdict)"
    if abs(diff) <= noise:
        return f"level ({diff:+.2f} points, inside the larger seed std {noise:.2f}; more seeds would tell)"
    return f"{'ahead' if diff > 0 else 'behind'} ({diff:+.2f} points, beyond the larger seed std {noise:.2f})"


def baseline_name(result: Evaluation) -> str:
    """`random real` for the evaluation of OUTPUT/baselines/random, `herding real` for herding's."""
    return f"{Path(result['distilled']).name} real"


def _legend(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot, never over it


def _ipc_axes(ax, ylabel: str):
    """The shared look of the plots against IPC; returns the figure."""
    ax.set_xscale("log")
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _legend(ax)
    return ax.figure


def accuracy_bars(rows: list[dict]) -> bytes:
    """One IPC: a bar per set, student and protocol (a line against IPC would have one point)."""
    rows = sorted(rows, key=lambda r: (r["student"], r["labels"], -r["mean"]))
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(rows) + 2), 4))
    ax.bar(range(len(rows)), [100 * r["mean"] for r in rows], yerr=[100 * r["std"] for r in rows], capsize=3,
           color=["#4c72b0" if r["method"].startswith("real-") else "#dd8452" for r in rows])
    ax.set_xticks(range(len(rows)), [f"{r['method']}\n{r['student']} / {r['labels']}" for r in rows], rotation=45,
                  ha="right", fontsize=7)
    low = min(100 * (r["mean"] - r["std"]) for r in rows)
    ax.set_ylim(max(0, low - 5), min(100, max(100 * (r["mean"] + r["std"]) for r in rows) + 2))
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.set_title(f"IPC {rows[0]['ipc']} (blue: real images, orange: distilled)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def curves_plot(rows: list[dict]) -> bytes:
    """Test accuracy against student epoch (mean over seeds), a panel per IPC, student and
    protocol: where the sets' curves cross. A curve, never a way to pick the reported epoch."""
    panels: dict[tuple, list[dict]] = {}
    for r in rows:
        panels.setdefault((r["ipc"], r["student"], r["labels"]), []).append(r)
    # one look per method in every panel: ten colours, then the same colours dashed
    methods = sorted({r["method"] for r in rows})
    look = {m: (plt.cm.tab10(i % 10), "-" if i < 10 else "--") for i, m in enumerate(methods)}
    cols = min(len(panels), 3)
    lines = -(-len(panels) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5.6 * cols, 3.2 * lines), squeeze=False)
    for ax, ((ipc, student, labels), group) in zip(axes.flat, sorted(panels.items())):
        for r in sorted(group, key=lambda r: r["method"]):
            pts = sorted((int(e), a) for e, a in r["curve"].items())
            sets = f" ({len(r['sample_seeds'])} sets)" if r.get("sample_seeds") else ""
            color, style = look[r["method"]]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker=".", markersize=3, color=color,
                    linestyle=style, label=r["method"] + sets)
        ax.set_title(f"IPC {ipc}, {student}, {labels}", fontsize=9)
        ax.set_xlabel("student epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        _legend(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def accuracy_plot(rows: list[dict]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[tuple, list] = {}
    for r in rows:
        lines.setdefault((r["method"], r["student"], r["labels"]), []).append((r["ipc"], r["mean"], r["std"]))
    for (method, student, labels), pts in sorted(lines.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts],
                    marker="o", capsize=3, label=f"{method} / {student} / {labels}")
    return _png(_ipc_axes(ax, "final-epoch test accuracy (%)"))


def ot_plot(entries: list[SetEntry], space: str) -> bytes | None:
    """Per-class OT distance to held-out real images: unguided sets beside guided ones."""
    have = [e for e in entries if space in e.ds.manifest.get("metrics", {})]
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * min(have[0].ds.num_classes, MAX_GRID_CLASSES) + 2), 4))
    width = 0.8 / len(have)
    for i, e in enumerate(have):
        per = e.ds.manifest["metrics"][space]["per_class"][:MAX_GRID_CLASSES]
        tag = "after guidance" if e.guided else ("before guidance" if e.ds.manifest["source"]["kind"] == "generated"
                                                  else "real selection")
        ax.bar([c + i * width for c in range(len(per))], [p["ot_distance"] for p in per], width,
               label=f"{e.method} IPC {e.ds.ipc} ({tag})")
    names = have[0].ds.class_names[:MAX_GRID_CLASSES]
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(names))], [n[:10] for n in names], rotation=45, ha="right",
                  fontsize=8)
    ax.set_ylabel(f"OT distance to held-out real ({space})")
    _legend(ax)
    return _png(fig)


def set_entropy(ds: artifacts.DistilledSet) -> float | None:
    """Mean entropy of the stored teacher labels, normalised by log K (0 = one-hot, 1 = uniform)."""
    return None if ds.soft_logits is None else label_entropy(ds.soft_logits).mean().item()


def entropy_plot(entries: list[SetEntry]) -> bytes | None:
    pts: dict[str, list] = {}
    for e in entries:
        h = set_entropy(e.ds)
        if h is not None:
            pts.setdefault(e.method, []).append((e.ds.ipc, h, len(e.ds.manifest.get("teachers", []))))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, p in sorted(pts.items()):
        p.sort()
        ax.plot([x[0] for x in p], [x[1] for x in p], marker="o", label=method)
        for ipc, h, k in p:
            ax.annotate(f"{k} teacher{'s' if k != 1 else ''}", (ipc, h), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    return _png(_ipc_axes(ax, "teacher-label entropy / log K"))


def timing_rows(run_dir: Path, entries: list[SetEntry]) -> list[tuple[str, str, float]]:
    rows = []
    for path in sorted(run_dir.rglob("timings.json")):
        name = str(path.parent.relative_to(run_dir)) if path.parent != run_dir else "."
        timings = _json_or_none(path)
        rows += [(name, stage, s) for stage, s in timings.items()] if isinstance(timings, dict) else []
    if not rows:  # no `run` here; the sampling time is in each manifest
        rows = [(e.name, "sample", e.ds.manifest["source"]["sample_seconds"]) for e in entries
                if "sample_seconds" in e.ds.manifest["source"]]
    return rows


def _real_data(ds: artifacts.DistilledSet, cache: dict) -> LabelledData | None:
    """The set's dataset, from the config in its manifest; None if it is not on this machine."""
    data_cfg = from_dict(ds.manifest["config"], check=False).data  # as recorded, whatever rules came later
    key = json.dumps(ds.manifest["config"]["data"], sort_keys=True)
    if key not in cache:
        try:
            cache[key] = load_dataset(data_cfg)
        except (UserError, OSError):
            cache[key] = None
    return cache[key]


def build(run_dir: str | Path, data: LabelledData | None = None) -> Path:
    """Write the report of everything under run_dir; returns the HTML file's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder; give the output folder of `otdistill run` (its `output`)")
    entries = collect(run_dir)
    if not entries:
        raise UserError(f"no finished distilled set under {run_dir}; run `otdistill run CONFIG` or "
                        f"`otdistill sample CONFIG` first")
    cache: dict = {}
    if data is not None:
        cache[json.dumps(entries[0].ds.manifest["config"]["data"], sort_keys=True)] = data
    figures: list[tuple[str, str, bytes]] = []  # (file name, caption, png)
    rows = accuracy_rows(entries)
    if len({r["ipc"] for r in rows}) > 1:
        figures.append(("accuracy-vs-ipc.png", "Final-epoch test accuracy against IPC (mean +- std over seeds)",
                        accuracy_plot(rows)))
    elif rows:
        figures.append(("accuracy.png", "Final-epoch test accuracy per set (mean +- std over seeds)", accuracy_bars(rows)))
    curves = [r for r in rows if r.get("curve")]
    if curves:
        figures.append(("learning-curves.png", "Test accuracy against student epoch (student.eval_every; mean over "
                        "seeds; on student.curve_test_images of the test split where set; the reported figure "
                        "stays the final epoch's on all of it)", curves_plot(curves)))
    for space in ("teacher_features", "latent"):
        png = ot_plot(entries, space)
        if png:
            figures.append((f"ot-per-class-{space}.png",
                            f"Per-class OT distance to held-out real images, {space.replace('_', ' ')}", png))
    png = entropy_plot(entries)
    if png:
        figures.append(("label-entropy.png", "Teacher-label entropy by IPC (number of teachers annotated)", png))
    for i, e in enumerate(entries):
        real = _real_data(e.ds, cache)
        caption = f"{e.name}: {e.method}, IPC {e.ds.ipc}" + ("" if real else " (real images not on this machine)")
        figures.append((f"grid-{i:02d}.png", caption, class_grids(e, real)))
    timings = timing_rows(run_dir, entries)
    sets = [(e.name, e.method, e.ds.ipc, len(e.ds.images), set_entropy(e.ds),
             e.ds.manifest.get("metrics", {}).get("teacher_features", {})) for e in entries]

    warnings = [f"{e.name}: {w}" for e in entries if (w := junk_warning(e.ds.manifest))]
    # how each number was made, next to the numbers (a quick student says so)
    notes = sorted({student_protocols.describe(p, ev["student_config"]) for e in entries for ev in e.evals
                    for p in ev["protocols"] if "student_config" in ev})
    md = _markdown(run_dir, rows, sets, timings, figures, warnings, notes)
    page = _html(run_dir, rows, sets, timings, figures, warnings, notes)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    for name, _, png in figures:
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(png)
    write_text(out / "report.md", md)
    write_text(out / "report.html", page)
    return out / "report.html"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _tables(rows, sets, timings) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, cells) of each table; the HTML and Markdown render the same ones."""
    points = lambda x: "-" if x is None else f"{100 * x:+.2f}"  # noqa: E731
    acc = [[r["method"], str(r["ipc"]), r["student"], str(r["epochs"]), r["labels"],
            f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f}", points(r["ior"]),
            "-" if r["hlr"] is None else f"{100 * r['hlr']:.2f}", str(r["seeds"]), r["set"]] for r in rows]
    st = [[name, method, str(ipc), str(n), _fmt(h), _fmt(m.get("ot_distance")), _fmt(m.get("coverage")),
           _fmt(m.get("density"))] for name, method, ipc, n, h, m in sets]
    tm = [[name, stage, f"{s:.1f}"] for name, stage, s in timings]
    return [
        ("Accuracy (final epoch, mean +- std over seeds)",
         ["method", "IPC", "student", "epochs", "labels", "top-1 %", "vs random real (IOR)",
          "full data - row (hard, HLR)", "seeds", "set"], acc),
        ("Distilled sets (teacher-feature metrics against held-out real images)",
         ["set", "method", "IPC", "images", "label entropy", "OT distance", "coverage", "density"], st),
        ("Time per stage", ["run", "stage", "seconds"], tm),
    ]


def _markdown(run_dir, rows, sets, timings, figures, warnings, notes) -> str:
    lines = [f"# otdistill report: {run_dir}", ""] + [f"**WARNING** {w}\n" for w in warnings]
    if notes:
        lines += ["Student protocols:", "", *[f"- {n}" for n in notes], ""]
    for title, header, cells in _tables(rows, sets, timings):
        lines += [f"## {title}", ""]
        if not cells:
            lines += ["(none found)", ""]
            continue
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c) + " |" for c in cells] + [""]
    lines += ["## Figures", ""]
    for name, caption, _ in figures:
        lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def _html(run_dir, rows, sets, timings, figures, warnings, notes) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>otdistill report: {esc(str(run_dir))}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:right}th{background:#eee}figure{margin:1.5em 0}img{max-width:100%}</style></head><body>",
             f"<h1>otdistill report</h1><p>{esc(str(run_dir))}</p>"]
    parts += [f"<p style='color:#a00'><b>WARNING</b> {esc(w)}</p>" for w in warnings]
    if notes:
        parts.append("<p>Student protocols:</p><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    for title, header, cells in _tables(rows, sets, timings):
        parts.append(f"<h2>{esc(title)}</h2>")
        if not cells:
            parts.append("<p>(none found)</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells]
        parts.append("</table>")
    parts.append("<h2>Figures</h2>")
    for name, caption, png in figures:
        data = base64.b64encode(png).decode()
        parts.append(f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    # lets a headless browser (and the test) tell that every embedded image decoded
    parts.append("<script>window.addEventListener('load',()=>{const im=[...document.images];"
                 "document.body.dataset.imagesLoaded=im.filter(i=>i.complete&&i.naturalWidth>0).length+'/'+im.length;"
                 "});</script></body></html>")
    return "\n".join(parts)
