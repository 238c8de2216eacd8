"""The report (`otdistill report`, written by `run`), the run's log file, and the HTML in a real browser."""

import os
import re
import shutil
import subprocess

import pytest
from PIL import Image

from otdistill.cli import main
from otdistill.context import RunContext
from otdistill.errors import UserError
from otdistill.pipeline import select_stage
from otdistill.report import build, method_label


def test_run_writes_report_and_log(finished_run):
    out, _ = finished_run
    report = out / "report"
    page = (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    pngs = sorted(p.name for p in report.glob("*.png"))
    # one IPC: bars of the sets, not a line against IPC; eval_every: learning curves
    assert {"accuracy.png", "learning-curves.png", "label-entropy.png", "grid-00.png"} <= set(pngs)
    assert "accuracy-vs-ipc.png" not in pngs
    # the HTML embeds every figure; the Markdown twin links the PNG files beside it
    assert page.count("data:image/png;base64,") == len(pngs)
    assert sorted(re.findall(r"\]\(([^)]+\.png)\)", md)) == pngs
    assert "<table>" in page and "| plain | 2 | convnet2 |" in md
    # each protocol says how it trained, a short student that it is quick
    assert "- dsa-e3: hard labels, SGD 0.01 step schedule" in md and "quick: short students" in page
    for stage in ("sample", "relabel", "evaluate"):
        assert f"| . | {stage} |" in md  # time per stage, from the run's timings.json
    log = (out / "otdistill.log").read_text()
    assert "$ otdistill --quiet run" in log and "evaluate: convnet2 soft seed 0" in log and "sample: class 10/10" in log


def test_report_compares_every_set_in_a_folder(finished_run, trained, tmp_path):
    out, _ = finished_run
    shutil.copytree(out, tmp_path / "plain")
    select_stage(RunContext(trained, quiet=True), "random", tmp_path / "real")
    assert main(["--quiet", "report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| real | real-random | 2 | 20 |" in md and "| plain/distilled | plain | 2 | 20 |" in md
    assert "plain/distilled: plain, IPC 2" in md and "real: real-random, IPC 2" in md
    assert (tmp_path / "otdistill.log").is_file()


def test_method_labels():
    assert method_label({"kind": "generated", "guidance": []}) == "plain"
    assert method_label({"kind": "generated", "guidance": ["influence", "deviation", "ot"]}) == "igd+ot"
    assert method_label({"kind": "generated", "guidance": ["ot"]}) == "ot"
    assert method_label({"kind": "generated", "guidance": ["feature_ot"], "real_per_class": 25}) == \
        "feature_ot + 25 real/class"
    assert method_label({"kind": "real-random"}) == "real-random"
    assert method_label({"kind": "real-herding"}, formation=2) == "real-herding (packed 2x2)"
    assert method_label({"kind": "generated", "guidance": ["feature_ot"]}, formation=2) == "feature_ot (packed 2x2)"
    assert method_label({"kind": "generated", "guidance": ["feature_ot"], "real_per_class": 20}, formation=2) == \
        "feature_ot + 20 real parts/class (packed 2x2)"


def test_report_of_a_folder_without_sets_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="otdistill run CONFIG"):
        build(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("OTDISTILL_REQUIRE_CHROMIUM"):
        pytest.fail("chromium is required here (OTDISTILL_REQUIRE_CHROMIUM is set) but not installed")
    return found


def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (.ci/run installs it)")
    out, _ = finished_run
    url = (out / "report" / "report.html").resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    n = len(list((out / "report").glob("*.png")))
    # set by the page's own script once every <img> has decoded (naturalWidth > 0)
    assert f'data-images-loaded="{n}/{n}"' in dom
    assert "<table>" in dom and "Accuracy (final epoch" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as im:
        # not a blank page: more than 2 grey levels (getcolors: Pillow 13 deprecates getdata)
        assert im.size == (1200, 1600) and len(im.convert("L").getcolors(256)) > 2


def test_report_skips_unreadable_json(finished_run, tmp_path):
    out, _ = finished_run
    shutil.copytree(out, tmp_path / "run")
    (tmp_path / "run" / "timings.json").write_bytes(b"\xe0\x80 not json")
    (tmp_path / "run" / "stray.json").write_bytes(b"\xff\xfe")
    page = build(tmp_path / "run")
    assert page.is_file() and "| distilled | plain | 2 | 20 |" in (page.parent / "report.md").read_text()
