"""torchrun: sampling sharded by class over 2 CPU processes (gloo) writes the same bytes as
one process, including the per-class real-latent pools of OT guidance."""

import json
import subprocess
import sys

from conftest import TINY

from otdistill.cli import main


def test_two_ranks_write_the_same_set_as_one_process(trained, tmp_path):
    common = ["--set", f"generator.path={trained.generator.path}", "--set", f"teachers.0.path={trained.teachers[0].path}",
              "--set", "sample.ipc=3", "--set", "sample.guidance.ot.weight=0.3", "--set", "sample.guidance.ot.pool_size=10"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["--quiet", "sample", str(TINY), "--set", f"output={one}", *common]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "otdistill.cli", "--quiet", "sample", str(TINY), "--set", f"output={two}", *common]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a = json.loads((one / "distilled" / "manifest.json").read_text())
    b = json.loads((two / "distilled" / "manifest.json").read_text())
    assert a["files"] == b["files"] and b["source"]["ranks"] == 2 and b["source"]["guidance"] == ["ot"]
    shards = [json.loads((two / "distilled" / ".shards" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert shards[0]["classes"] == [0, 2, 4, 6, 8] and shards[1]["classes"] == [1, 3, 5, 7, 9]
    # each rank encoded (and cached) the real pools of its own classes only
    assert len(list((two / "cache").glob("real-latents-*.safetensors"))) == 10
    # a rerun under torchrun finds everything finished and changes nothing
    assert subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0
    assert json.loads((two / "distilled" / "manifest.json").read_text())["files"] == b["files"]
