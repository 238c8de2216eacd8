"""The GPU check script must work when a GPU session finally runs it: its code path, at toy
shapes on the CPU."""

import importlib.util

import torch
from conftest import ROOT


def test_gpu_check_runs_every_recipe_at_toy_shapes():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    cpu = torch.device("cpu")
    model = gpu_check.build(True, cpu)
    assert model.dit.config.out_channels == 8 and model.info["image_size"] == 16

    def autocast():
        return torch.autocast("cpu", enabled=False)

    r = gpu_check.time_sampling(model, "igd+ot", 1, True, cpu, autocast)
    assert r["images_per_s"] > 0 and 0 < r["ot_share"] < 1
