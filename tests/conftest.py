"""Shared fixtures: the digits-tiny recipe pointed at a temporary folder, and one tiny
generator and teacher trained once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from otdistill.config import Config, load_config
from otdistill.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "digits-tiny.yaml"
# the benchmark scripts' shared modules (checkpoint_files, bench_rows), importable as when they run
sys.path.append(str(ROOT / "benchmarks"))

torch.set_num_threads(2)


def generate(model, cfg, c, terms):
    """cfg.ipc latents of class c, sample.batch_size at a time, each chunk seeing the earlier
    ones as the class memory (as sample.sample_classes does, but keeping the latents)."""
    from otdistill.sample import sample_latents

    done = []
    for chunk in range(cfg.ipc // cfg.batch_size):
        memory = torch.cat(done) if done else None
        done.append(sample_latents(model, c, cfg.batch_size, cfg, terms, None, memory, chunk))
    return torch.cat(done)


def tiny_config(tmp: Path, *overrides: str) -> Config:
    return load_config(TINY, [f"output={tmp / 'run'}", *overrides])


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Config:
    """digits-tiny with its generator and teacher trained into a session folder."""
    from otdistill.context import RunContext
    from otdistill.pipeline import ensure_generator, ensure_teachers

    base = tmp_path_factory.mktemp("trained")
    cfg = load_config(TINY, [f"output={base / 'run'}", f"generator.path={base / 'generator'}",
                             f"teachers.0.path={base / 'teacher'}"])
    ctx = RunContext(cfg, quiet=True)
    ensure_generator(ctx)
    ensure_teachers(ctx)
    return cfg


@pytest.fixture(scope="session")
def digits():
    return load_dataset(load_config(TINY).data)


@pytest.fixture(scope="session")
def finished_run(trained, tmp_path_factory):
    """`otdistill run` on digits-tiny, once per session: (output folder, the run's arguments)."""
    from otdistill.cli import main

    out = tmp_path_factory.mktemp("e2e") / "run"
    args = ["run", str(TINY), "--set", f"output={out}", "--set", f"generator.path={trained.generator.path}",
            "--set", f"teachers.0.path={trained.teachers[0].path}", "--set", "baseline=[random,herding]",
            # the field's DSA protocol at a smoke length beside ours, and learning curves
            "--set", "student.protocols=[soft,hard,dsa-e3]", "--set", "student.eval_every=1"]
    assert main(["--quiet", *args]) == 0
    return out, args
