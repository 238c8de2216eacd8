"""torchrun over 2 CPU processes (gloo): sampling sharded by class writes the same bytes as
one process with as many threads, including the per-class real-latent pools of OT guidance; relabelling sharded by
batch writes the same labels (up to float summation order); data-parallel student training ends at the same weights."""

import json
import os
import subprocess
import sys

import torch
from conftest import TINY

from otdistill.artifacts import read_distilled


def test_two_ranks_write_the_same_set_as_one_process(trained, tmp_path):
    common = ["--set", f"generator.path={trained.generator.path}", "--set", f"teachers.0.path={trained.teachers[0].path}",
              "--set", "sample.ipc=3", "--set", "sample.guidance.ot.weight=0.3", "--set", "sample.guidance.ot.pool_size=10",
              "--set", "sample.classes_per_pass=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    # one thread per process in both runs, as torchrun gives its workers: on some CPUs the
    # kernels round differently at another thread count, and that is not what is tested here
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "otdistill.cli", "--quiet", "sample", str(TINY)]
    assert subprocess.run([*cli, "--set", f"output={one}", *common], env=env, timeout=600).returncode == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cli[1:],
           "--set", f"output={two}", *common]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    a = json.loads((one / "distilled" / "manifest.json").read_text())
    b = json.loads((two / "distilled" / "manifest.json").read_text())
    assert a["files"] == b["files"] and b["source"]["ranks"] == 2 and b["source"]["guidance"] == ["ot"]
    shards = [json.loads((two / "distilled" / ".shards" / f"rank{r}.json").read_text()) for r in (0, 1)]
    # two classes per forward pass: pairs (0, 1), (2, 3), ... go to the ranks in turn
    assert shards[0]["classes"] == [0, 1, 4, 5, 8, 9] and shards[1]["classes"] == [2, 3, 6, 7]
    # each rank encoded (and cached) the real pools of its own classes only
    assert len(list((two / "cache").glob("real-latents-*.safetensors"))) == 10
    # a rerun under torchrun finds everything finished and changes nothing
    assert subprocess.run(cmd, capture_output=True, timeout=600, env=env).returncode == 0
    assert json.loads((two / "distilled" / "manifest.json").read_text())["files"] == b["files"]


FIT_SCRIPT = '''
import sys, torch
from otdistill import distributed
from otdistill.data import TensorImages
from otdistill.losses import Targets, hard_loss
from otdistill.models.classifiers import build_classifier
from otdistill.train import TrainRecipe, fit
distributed.init()
g = torch.Generator().manual_seed(0)
# 33 images in batches of 8: the last batch has one row, so rank 1 runs a weight-0 row
images = TensorImages(torch.randint(0, 256, (33, 1, 16, 16), generator=g, dtype=torch.uint8),
                      torch.randint(0, 4, (33,), generator=g))
torch.manual_seed(0)
model = build_classifier("convnet2", 4, 1, 16, [0.5], [0.25])
# SGD: Adam would blow float noise in near-zero gradients (biases before a norm) up to lr-sized steps
fit(model, images, TrainRecipe(2, 8, "sgd", lr=0.05, cutmix=0.5), hard_loss, lambda x, idx: Targets(images.labels[idx]),
    torch.Generator().manual_seed(1), "cpu", quiet=True)
if distributed.current().main:
    torch.save(model.state_dict(), sys.argv[1])
'''


def test_data_parallel_training_matches_one_process(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    assert subprocess.run([sys.executable, str(script), str(one)], timeout=300).returncode == 0
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(two)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = torch.load(one), torch.load(two)
    # the same global batches, views and CutMix boxes; only the order of float sums differs
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_two_ranks_run_relabel_and_students_like_one_process(finished_run, tmp_path):
    out, args = finished_run
    two = tmp_path / "two"
    args = [a if not a.startswith("output=") else f"output={two}" for a in args]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "otdistill.cli", "--quiet", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # relabelled in shards of the same batches: the same logits up to float summation order, which
    # changes with the threads per process (byte-equal on some CPUs, not on others)
    ours, theirs = (read_distilled(root / "distilled") for root in (two, out))
    assert torch.equal(ours.hard, theirs.hard) and torch.allclose(ours.soft_logits, theirs.soft_logits, atol=1e-5)
    a, b = json.loads((out / "distilled" / "eval.json").read_text()), json.loads(
        (two / "distilled" / "eval.json").read_text())
    for protocol in ("soft", "hard"):
        assert abs(a["protocols"][protocol]["final_mean"] - b["protocols"][protocol]["final_mean"]) < 0.01
    assert (two / "summary.md").exists() and (two / "report" / "report.html").exists()
