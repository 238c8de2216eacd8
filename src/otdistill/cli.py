"""The `otdistill` command: one sub-command per stage, and `run` for all of them."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import UserError

log = logging.getLogger("otdistill")


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML recipe, e.g. configs/fashion-mnist.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set sample.ipc=50 (repeatable)")


def _global_options(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--quiet", action="store_true", default=default, help="no progress bars, warnings only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otdistill", description=__doc__)
    _global_options(parser, default=False)
    # the same options after the sub-command; SUPPRESS keeps a sub-parser from resetting one given before it
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    p = command("run", help="the whole pipeline: generator, teachers, sample, relabel, evaluate")
    _config_args(p)

    p = command("train-generator", help="train (or continue) the autoencoder then the denoiser; saves diffusers folders")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if generator.path exists")

    p = command("train-teacher", help="train the configured teacher classifiers on the real data")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if the teacher folder exists")

    p = command("train-surrogate", help="train the surrogate whose trajectory influence guidance reads")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if the surrogate folder exists")

    p = command("sample", help="draw sample.ipc images per class into OUTPUT/distilled")
    _config_args(p)

    from .selection import BASELINES

    p = command("select", help="a real-image baseline set (random, herding, k-means, ..., RDED) in the distilled-set format")
    _config_args(p)
    p.add_argument("--method", default="random", choices=list(BASELINES),
                   help="random subset; herding in the first teacher's features; nearest k-means centres of latents; "
                        "confident / informative by the teacher's softmax; rded: RDED's teacher-scored crops")
    p.add_argument("--out", required=True, help="folder to write the set to")

    p = command("relabel", help="store the teachers' soft logits for every distilled image")
    p.add_argument("distilled", help="a distilled-set folder")
    _config_args(p, required=False)

    p = command("evaluate", help="train students on a distilled set, report real test accuracy")
    p.add_argument("distilled", help="a distilled-set folder")
    _config_args(p, required=False)
    p.add_argument("--out", help="result JSON (default: DISTILLED/../eval.json)")

    p = command("export", help="write a distilled set in another tool's format")
    p.add_argument("distilled", help="a distilled-set folder")
    p.add_argument("--format", required=True, choices=["ddranking"])
    p.add_argument("--out", required=True, help="folder to write to")

    p = command("import-generator", help="convert a local DiT (original .pt or diffusers) + VAE to a generator folder")
    p.add_argument("--dit", required=True, help="DiT-XL-2-256x256.pt (facebookresearch format) or a diffusers folder")
    p.add_argument("--vae", required=True, help="diffusers AutoencoderKL folder, e.g. a local sd-vae-ft-ema")
    p.add_argument("--classes", required=True,
                   help="text file of class ids in the DiT's label order, or a folder whose sorted sub-folders are them")
    p.add_argument("--heads", type=int, help="attention heads, for a DiT width that is not a published size")
    p.add_argument("--out", required=True, help="generator folder to write (use it as generator.path)")

    p = command("import-teacher", help="a torchvision classifier with local weights -> a teacher folder")
    p.add_argument("--arch", required=True, help="tv:<torchvision name>, e.g. tv:resnet18")
    p.add_argument("--weights", required=True, help="its state-dict file, e.g. resnet18-f37072fd.pth")
    p.add_argument("--classes", required=True, help="class ids in the model's output order (file or folder)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", required=True, help="teacher folder to write (use it as teachers.N.path)")

    p = command("config", help="print the effective config of a recipe + overrides, or the key reference")
    _config_args(p, required=False)
    p.add_argument("--reference", action="store_true", help="every key with type, default and meaning (Markdown)")

    p = command("report", help="HTML + Markdown report of a run folder (or a folder of runs)")
    p.add_argument("run_dir", help="a run's output folder; every distilled set and evaluation under it is shown")

    p = command("inspect", help="summarise a distilled set in the terminal")
    p.add_argument("distilled", help="a distilled-set folder")
    return parser


def _load(args):
    from .config import load_config

    return load_config(args.config, args.overrides)


def _log_to(folder: str | Path, argv: list[str]) -> logging.Handler:
    """Append this command's log to FOLDER/otdistill.log (INFO and up, even with --quiet)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / "otdistill.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    # the command line goes to the file only; the terminal already shows it
    handler.handle(logging.makeLogRecord({"name": log.name, "levelno": logging.INFO, "levelname": "INFO",
                                          "msg": "$ otdistill %s", "args": (" ".join(argv),)}))
    return handler


def _class_ids(source: str) -> list[str]:
    """Class ids from a text file (first word per line, # comments) or a folder's sorted sub-folders."""
    from .data.imagefolder import read_class_list

    p = Path(source)
    if p.is_dir():
        return sorted(d.name for d in p.iterdir() if d.is_dir())
    return read_class_list(source)


def _log_folder(args) -> Path | None:
    """The run folder a command writes into, where its log file belongs."""
    if getattr(args, "config", None) and args.command in ("run", "sample", "train-generator", "train-teacher",
                                                          "train-surrogate"):
        return Path(_load(args).output)
    if args.command in ("relabel", "evaluate") and Path(args.distilled).is_dir():
        return Path(args.distilled).parent
    if args.command == "report" and Path(args.run_dir).is_dir():
        return Path(args.run_dir)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from .allocator import keep_freed_memory
    from .distributed import current

    keep_freed_memory()

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    rank = current()
    # under torchrun the other ranks would repeat rank 0's every line: they print warnings only,
    # marked with their rank, and the run folder's log file is rank 0's
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING if args.quiet or not rank.main else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s" if rank.main else f"[rank {rank.rank}] %(message)s"))
    root.addHandler(console)
    handlers = [console]
    try:
        folder = _log_folder(args) if rank.main else None
        if folder is not None:
            handlers.append(_log_to(folder, argv))
        return _dispatch(args) or 0
    except UserError as exc:
        log.error("otdistill: error: %s", exc)  # the console handler prints it to stderr
        return 2
    except KeyboardInterrupt:
        log.error("otdistill: interrupted; run the same command again to resume")
        return 130
    finally:
        for h in handlers:  # main() may run several times in one process (tests)
            root.removeHandler(h)
            h.close()


def _dispatch(args) -> int | None:
    from . import pipeline
    from .context import RunContext

    def context() -> RunContext:
        return RunContext(_load(args), quiet=args.quiet)

    def set_context() -> RunContext:  # relabel / evaluate: the set's recorded config unless one is given
        return context() if args.config else RunContext.of_set(args.distilled, quiet=args.quiet)

    if args.command == "run":
        pipeline.run(context())
    elif args.command == "train-generator":
        pipeline.ensure_generator(context(), force=args.force, extend=True)
    elif args.command == "train-teacher":
        pipeline.ensure_teachers(context(), force=args.force)
    elif args.command == "train-surrogate":
        pipeline.ensure_surrogate(context(), force=args.force)
    elif args.command == "sample":
        pipeline.sample_stage(context())
    elif args.command == "select":
        pipeline.select_stage(context(), args.method, args.out)
    elif args.command == "relabel":
        pipeline.relabel_stage(args.distilled, set_context())
    elif args.command == "evaluate":
        pipeline.evaluate_stage(args.distilled, set_context(), out=args.out)
    elif args.command == "export":
        from .artifacts import export_ddranking, read_distilled

        export_ddranking(read_distilled(args.distilled), args.out)
        print(f"wrote {args.out}")
    elif args.command in ("import-generator", "import-teacher"):
        from .models import pretrained

        ids = _class_ids(args.classes)
        if args.command == "import-generator":
            out = pretrained.import_generator(args.dit, args.vae, ids, args.out, heads=args.heads)
        else:
            out = pretrained.import_classifier(args.arch, args.weights, ids, args.image_size, args.out)
        print(f"wrote {out}")
    elif args.command == "config":
        if args.reference:
            from .config_reference import reference

            print(reference())
        else:
            from .config import dump_config

            print(dump_config(_load(args)), end="")
    elif args.command == "report":
        from .report import build

        print(f"wrote {build(args.run_dir)}")
    elif args.command == "inspect":
        from .report import inspect_text

        print(inspect_text(args.distilled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
