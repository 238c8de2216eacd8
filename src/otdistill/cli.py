"""The `otdistill` command: one sub-command per stage, and `run` for all of them."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import UserError

log = logging.getLogger("otdistill")


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML recipe, e.g. configs/fashion-mnist.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set sample.ipc=50 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otdistill", description=__doc__)
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole pipeline: generator, teachers, sample, relabel, evaluate")
    _config_args(p)

    p = sub.add_parser("train-generator", help="train the autoencoder then the DiT; saves diffusers folders")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if generator.path exists")

    p = sub.add_parser("train-teacher", help="train the configured teacher classifiers on the real data")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if the teacher folder exists")

    p = sub.add_parser("train-surrogate", help="train the surrogate whose trajectory influence guidance reads")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if the surrogate folder exists")

    p = sub.add_parser("sample", help="draw sample.ipc images per class into OUTPUT/distilled")
    _config_args(p)

    p = sub.add_parser("select", help="a real-image baseline set (random subset) in the distilled-set format")
    _config_args(p)
    p.add_argument("--method", default="random", choices=["random"], help="how the real images are chosen")
    p.add_argument("--out", required=True, help="folder to write the set to")

    p = sub.add_parser("relabel", help="store the teachers' soft logits for every distilled image")
    p.add_argument("distilled", help="a distilled-set folder")
    _config_args(p, required=False)

    p = sub.add_parser("evaluate", help="train students on a distilled set, report real test accuracy")
    p.add_argument("distilled", help="a distilled-set folder")
    _config_args(p, required=False)
    p.add_argument("--out", help="result JSON (default: DISTILLED/../eval.json)")

    p = sub.add_parser("export", help="write a distilled set in another tool's format")
    p.add_argument("distilled", help="a distilled-set folder")
    p.add_argument("--format", required=True, choices=["ddranking"])
    p.add_argument("--out", required=True, help="folder to write to")

    p = sub.add_parser("inspect", help="summarise a distilled set in the terminal")
    p.add_argument("distilled", help="a distilled-set folder")
    return parser


def _load(args):
    from .config import load_config

    return load_config(args.config, args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return _dispatch(args) or 0
    except UserError as exc:
        print(f"otdistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otdistill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _dispatch(args) -> int | None:
    from . import pipeline

    quiet = args.quiet
    if args.command == "run":
        pipeline.run(_load(args), quiet=quiet)
    elif args.command == "train-generator":
        pipeline.ensure_generator(_load(args), force=args.force, quiet=quiet)
    elif args.command == "train-teacher":
        pipeline.ensure_teachers(_load(args), force=args.force, quiet=quiet)
    elif args.command == "train-surrogate":
        pipeline.ensure_surrogate(_load(args), force=args.force, quiet=quiet)
    elif args.command == "sample":
        pipeline.sample_stage(_load(args), quiet=quiet)
    elif args.command == "select":
        pipeline.select_stage(_load(args), args.method, args.out, quiet=quiet)
    elif args.command == "relabel":
        pipeline.relabel_stage(args.distilled, _load(args) if args.config else None, quiet=quiet)
    elif args.command == "evaluate":
        pipeline.evaluate_stage(args.distilled, _load(args) if args.config else None, out=args.out, quiet=quiet)
    elif args.command == "export":
        from .artifacts import export_ddranking, read_distilled

        export_ddranking(read_distilled(args.distilled), args.out)
        print(f"wrote {args.out}")
    elif args.command == "inspect":
        print(pipeline.inspect_text(args.distilled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
