"""Real-image selection baselines: random, herding (teacher features), k-means (latents), confident
and informative (teacher probabilities); RDED's teacher-scored crops."""

import json
import math

import torch
from conftest import TINY

from otdistill.cli import main
from otdistill.data import TensorImages
from otdistill.selection import herding, kmeans_centres, nearest_distinct


def model_paths(trained) -> list[str]:
    """Overrides that point the tiny config at the trained tiny generator and teacher."""
    return [f"generator.path={trained.generator.path}", f"teachers.0.path={trained.teachers[0].path}"]


def sampled(trained, digits, out, *overrides):
    """(config, the distilled set) sampled into `out` with the trained tiny generator and teacher."""
    from otdistill import artifacts, pipeline
    from otdistill.config import load_config
    from otdistill.context import RunContext

    cfg = load_config(TINY, [*model_paths(trained), f"output={out}", *overrides])
    return cfg, artifacts.read_distilled(pipeline.sample_stage(RunContext(cfg, quiet=True, data=digits)))


def test_herding_tracks_the_mean_better_than_random():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(500, 8, generator=g) + torch.linspace(0, 3, 500)[:, None]
    picks = herding(feats, 10)
    assert len(set(picks)) == 10
    herd_gap = (feats[picks].mean(0) - feats.mean(0)).norm()
    random_gaps = [(feats[torch.randperm(500, generator=g)[:10]].mean(0) - feats.mean(0)).norm() for _ in range(50)]
    assert herd_gap < min(random_gaps)


def test_kmeans_picks_distinct_real_points_near_the_centres():
    pts = torch.cat([torch.randn(30, 4) * 0.1 + i * 10 for i in range(3)])
    centres = kmeans_centres(pts, 3, seed=0)
    picks = nearest_distinct(centres, pts)
    assert sorted(p // 30 for p in picks) == [0, 1, 2]  # one real point from each blob


def test_confident_keeps_the_images_the_teacher_finds_most_like_their_class(trained, digits):
    """RDED's realism score: per class, the ipc images with the highest teacher probability of
    that class, computed here straight from the teacher's softmax over every image of the class."""
    from otdistill.selection import TEACHER_PROBABILITIES, select_class
    from otdistill.teachers import load_teacher

    teacher, _ = load_teacher(trained.teachers[0].path, "cpu")
    embed = TEACHER_PROBABILITIES.build(trained.teachers[0].path, "cpu")
    for c in range(digits.num_classes):
        members = torch.nonzero(digits.train.labels == c).flatten()  # fewer than the candidates: all of them
        with torch.no_grad():
            p = teacher(digits.train.get(members).float() / 255).softmax(1)[:, c]
        picks = select_class("confident", digits.train, c, 4, seed=0, embed=embed)
        assert sorted(picks.tolist()) == sorted(members[p.argsort(descending=True)[:4]].tolist())
        assert p[torch.isin(members, picks)].min() >= p.median()


def test_informative_keeps_the_images_the_teacher_is_least_sure_of_within_their_class(trained, digits):
    """Per class, the images the teacher assigns to it ranked by the entropy of its softmax (highest
    first), then the ones it assigns elsewhere; computed here straight from the teacher's softmax."""
    from otdistill.selection import TEACHER_PROBABILITIES, select_class
    from otdistill.teachers import load_teacher

    teacher, _ = load_teacher(trained.teachers[0].path, "cpu")
    embed = TEACHER_PROBABILITIES.build(trained.teachers[0].path, "cpu")
    for c in range(digits.num_classes):
        members = torch.nonzero(digits.train.labels == c).flatten()
        with torch.no_grad():
            p = teacher(digits.train.get(members).float() / 255).softmax(1)
        entropy = [-sum(q * math.log(q) for q in row.tolist() if q > 0) for row in p]
        own = [i for i in range(len(members)) if int(p[i].argmax()) == c]
        ranked = sorted(own, key=lambda i: -entropy[i]) + sorted(set(range(len(members))) - set(own),
                                                                  key=lambda i: -entropy[i])
        picks = select_class("informative", digits.train, c, 4, seed=0, embed=embed)
        assert sorted(picks.tolist()) == sorted(members[ranked[:4]].tolist())


def test_select_command_builds_each_baseline(trained, tmp_path):
    paths = ["--set", f"generator.path={trained.generator.path}", "--set", f"teachers.0.path={trained.teachers[0].path}"]
    picked = {}
    for method in ("random", "herding", "kmeans", "confident", "informative", "rded"):
        out = tmp_path / method
        assert main(["--quiet", "select", str(TINY), "--method", method, "--out", str(out), "--set", "sample.ipc=3",
                     *paths]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["source"]["kind"] == f"real-{method}" and all(c["count"] == 3 for c in manifest["classes"])
        picked[method] = sorted(manifest["files"].values())
    assert len({tuple(files) for files in picked.values()}) == 6


def test_a_registered_selection_is_a_baseline_everywhere(trained, tmp_path, monkeypatch):
    """One register_selection call: the select command, the `baseline` key and select_stage take it."""
    from otdistill import selection
    from otdistill.cli import build_parser
    from otdistill.config import load_config

    monkeypatch.setitem(selection.SELECTIONS, "lowest", None)  # removed again after the test
    monkeypatch.setitem(selection.BASELINES, "lowest", None)
    selection.register_selection("lowest", lambda order, images, embed, ipc, seed, candidates: order.sort().values[:ipc])
    assert build_parser().parse_args(["select", str(TINY), "--method", "lowest", "--out", "x"]).method == "lowest"
    assert load_config(TINY, ["baseline=lowest"]).baseline == ["lowest"]
    assert main(["--quiet", "select", str(TINY), "--method", "lowest", "--out", str(tmp_path / "low"),
                 "--set", f"teachers.0.path={trained.teachers[0].path}"]) == 0
    manifest = json.loads((tmp_path / "low" / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "real-lowest"


def test_a_baseline_that_makes_images_is_no_pick_elsewhere():
    """RDED's crops are a baseline, not a selection: sample.keep and sample.real_select refuse them."""
    import pytest

    from otdistill.config import load_config
    from otdistill.errors import UserError

    assert load_config(TINY, ["baseline=[random,rded]"]).baseline == ["random", "rded"]
    for key in ("sample.keep", "sample.real_select"):
        with pytest.raises(UserError, match=f"{key}: must be one of random, herding"):
            load_config(TINY, [f"{key}=rded"])


def test_oversampling_keeps_the_candidates_that_the_selection_picks(trained, digits, tmp_path):
    """sample.oversample draws ipc x oversample images per class (guided as one set); sample.keep
    picks ipc of them with a registered selection, here herding in the teacher's features."""
    from otdistill import pipeline
    from otdistill.config import load_config
    from otdistill.data import TensorImages
    from otdistill.selection import TEACHER, select_class

    paths = model_paths(trained)

    _, drawn = sampled(trained, digits, tmp_path / "drawn", "sample.ipc=6")
    cfg, kept = sampled(trained, digits, tmp_path / "kept", "sample.ipc=2", "sample.oversample=3", "sample.keep=herding")
    embed = TEACHER.build(trained.teachers[0].path, "cpu")
    assert len(kept.images) == 2 * digits.num_classes
    for c in range(digits.num_classes):
        candidates = drawn.images[drawn.hard == c]
        picks = select_class("herding", TensorImages(candidates, torch.full((6,), c)), c, 2, cfg.sample.seed, embed, 6)
        assert torch.equal(kept.images[kept.hard == c], candidates[picks])
    # the kept set depends on the teacher that picked it; a set drawn without oversampling does not
    other = [f"teachers.0.path={trained.teachers[0].path}-other"]
    assert pipeline.sample_fingerprint(load_config(TINY, [*paths, "sample.oversample=3", *other])) != \
        pipeline.sample_fingerprint(load_config(TINY, [*paths, "sample.oversample=3"]))
    assert pipeline.sample_fingerprint(load_config(TINY, [*paths, *other])) == \
        pipeline.sample_fingerprint(load_config(TINY, paths))


def test_sampling_can_start_from_a_selections_real_images(trained, digits, tmp_path):
    """sample.init=herding: each class's latents start from the latents of the images the herding
    baseline picks, noised to init_strength of the schedule; with a small strength the sampled
    images stay near those real images as the autoencoder reconstructs them, far nearer than
    samples drawn from noise."""
    from otdistill import pipeline
    from otdistill.config import load_config
    from otdistill.models.generator import load_generator
    from otdistill.sample import latents_to_uint8
    from otdistill.selection import TEACHER, select_class
    from otdistill.train_generator import encode_all

    paths = model_paths(trained)

    cfg, started = sampled(trained, digits, tmp_path / "herding", "sample.ipc=3", "sample.init=herding",
                           "sample.init_strength=0.1")
    _, free = sampled(trained, digits, tmp_path / "noise", "sample.ipc=3")
    embed, model = TEACHER.build(trained.teachers[0].path, "cpu"), load_generator(trained.generator.path)
    near = far = 0.0
    for c in range(digits.num_classes):
        picks = select_class("herding", digits.train, c, 3, cfg.sample.seed, embed)
        real = latents_to_uint8(model, encode_all(model, digits.train, "cpu", picks)).float()
        near += (started.images[started.hard == c].float() - real).norm().item()
        far += (free.images[free.hard == c].float() - real).norm().item()
    assert near < 0.5 * far
    # the set depends on the teacher whose herding it starts from
    other = [f"teachers.0.path={trained.teachers[0].path}-other"]
    assert pipeline.sample_fingerprint(load_config(TINY, [*paths, "sample.init=herding", *other])) != \
        pipeline.sample_fingerprint(load_config(TINY, [*paths, "sample.init=herding"]))


def test_sampling_keeps_a_selections_real_images_and_draws_the_rest_around_them(trained, digits, tmp_path):
    """sample.real=2 at IPC 4: each class's first two images are the real ones herding picks,
    byte for byte; the other two are drawn as a set of IPC 2 would be, except that the guidance
    sees the real ones as already made: with guidance off they are that set's images, with
    feature OT on they differ from it."""
    from otdistill import pipeline
    from otdistill.config import load_config
    from otdistill.guidance import off_overrides
    from otdistill.selection import TEACHER, select_class

    paths = model_paths(trained)
    off = off_overrides()
    fot = [*off, "sample.guidance.feature_ot.weight=3.0", "sample.guidance.feature_ot.pool_size=20",
           "sample.guidance.window=[0,5]"]

    cfg, mixed = sampled(trained, digits, tmp_path / "mixed", "sample.ipc=4", "sample.real=2", *off)
    _, alone = sampled(trained, digits, tmp_path / "alone", "sample.ipc=2", *off)
    _, mixed_fot = sampled(trained, digits, tmp_path / "mixed-fot", "sample.ipc=4", "sample.real=2", *fot)
    _, alone_fot = sampled(trained, digits, tmp_path / "alone-fot", "sample.ipc=2", *fot)
    assert mixed.manifest["source"]["real_per_class"] == 2 and len(mixed.images) == 4 * digits.num_classes
    embed = TEACHER.build(trained.teachers[0].path, "cpu")
    moved = []
    for c in range(digits.num_classes):
        real = digits.train.get(select_class("herding", digits.train, c, 2, cfg.sample.seed, embed))
        ours, guided = mixed.images[mixed.hard == c], mixed_fot.images[mixed_fot.hard == c]
        assert torch.equal(ours[:2], real) and torch.equal(guided[:2], real)
        # and, without the selection code: they are two distinct training images of the class
        of_class = digits.train.get(digits.train.indices_of(c)).flatten(1)
        assert all((of_class == image.flatten()).all(1).any() for image in ours[:2]) and not torch.equal(*ours[:2])
        assert torch.equal(ours[2:], alone.images[alone.hard == c])
        moved.append(not torch.equal(guided[2:], alone_fot.images[alone_fot.hard == c]))
    assert all(moved)
    # the set depends on the teacher whose herding picks the real images
    other = [f"teachers.0.path={trained.teachers[0].path}-other", *off]
    assert pipeline.sample_fingerprint(load_config(TINY, [*paths, "sample.ipc=4", "sample.real=2", *other])) != \
        pipeline.sample_fingerprint(load_config(TINY, [*paths, "sample.ipc=4", "sample.real=2", *off]))


def test_a_packed_set_keeps_its_real_parts_first_and_draws_the_rest(trained, digits, tmp_path):
    """sample.real=2 with formation 2 at IPC 1: each class's one stored image packs herding's two
    real picks, then the two images an unpacked IPC 2 set draws (guidance off), each as a part."""
    from otdistill.formation import as_part, unpack
    from otdistill.guidance import off_overrides
    from otdistill.selection import TEACHER, select_class

    off = off_overrides()
    cfg, mixed = sampled(trained, digits, tmp_path / "mixed", "sample.ipc=1", "sample.formation=2", "sample.real=2",
                         *off)
    _, alone = sampled(trained, digits, tmp_path / "alone", "sample.ipc=2", *off)
    assert len(mixed.images) == digits.num_classes and mixed.manifest["source"]["real_per_class"] == 2
    embed = TEACHER.build(trained.teachers[0].path, "cpu")
    for c in range(digits.num_classes):
        real = digits.train.get(select_class("herding", digits.train, c, 2, cfg.sample.seed, embed))
        parts = unpack(mixed.images[mixed.hard == c], 2)
        assert torch.equal(parts[:2], as_part(real, 2))
        assert torch.equal(parts[2:], as_part(alone.images[alone.hard == c], 2))


def test_real_images_kept_must_leave_some_to_draw_and_not_share_the_start():
    import pytest

    from otdistill.config import load_config
    from otdistill.errors import UserError

    with pytest.raises(UserError, match=r"sample.real: must satisfy 0 <= value < sample.ipc=2 \("):
        load_config(TINY, ["sample.real=2"])
    # packed, it counts parts: IPC 2 x 2 x 2 = 8 per class, so 7 leave one to draw and 8 none
    assert load_config(TINY, ["sample.formation=2", "sample.real=7"]).sample.real == 7
    with pytest.raises(UserError, match=r"sample.real: must satisfy 0 <= value < sample.ipc=2 x sample.formation"
                                        r"\^2 = 8 \(all real is the herding baseline itself\), got 8"):
        load_config(TINY, ["sample.formation=2", "sample.real=8"])
    with pytest.raises(UserError, match=r"sample.init=herding would start the generated images from the same"):
        load_config(TINY, ["sample.ipc=4", "sample.real=1", "sample.init=herding"])


class Bright(torch.nn.Module):
    """A two-class classifier whose class-0 logit rises with the mean grey, `by` the spread of the
    pixels instead when asked (class 1 is the opposite)."""

    def __init__(self, by: str = "mean"):
        super().__init__()
        self.by = by

    def forward(self, x):
        s = x.flatten(1).std(1) if self.by == "std" else x.mean(dim=(1, 2, 3)) - 0.5
        return torch.stack([s, -s], 1) * 20


def rded(images, count, classifier, formation=1):
    from otdistill.selection import baseline_images, probabilities

    labelled = TensorImages(images, torch.zeros(len(images), dtype=torch.long))
    return baseline_images("rded", labelled, 0, count, seed=0, embed=probabilities(classifier, "cpu"),
                           formation=formation)


def test_rded_draws_its_crops_as_random_resized_crop_does_with_aspect_ratio_1():
    """torchvision's RandomResizedCrop at ratio (1, 1), as RDED crops: the side is the rounded root
    of a uniform share (0.08 to 1) of the area, the box anywhere inside the image."""
    from otdistill.selection import crop_boxes

    boxes = crop_boxes(4000, 1, 32, 32, torch.Generator().manual_seed(0)).view(-1, 3)
    top, left, side = boxes.unbind(1)
    share = side.double() ** 2 / 1024
    assert side.min() >= 9 and side.max() <= 32  # round(sqrt(0.08 * 1024)) = 9
    assert abs(share.mean() - 0.54) < 0.02  # the mean of U(0.08, 1), up to rounding
    assert (top >= 0).all() and (left >= 0).all() and (top + side <= 32).all() and (left + side <= 32).all()
    small = side <= 12  # a small box lands anywhere: every top from 0 to 20, and flush with the bottom edge
    assert set(range(21)) <= set(top[small].tolist()) and (top + side == 32)[small].any()


def test_rded_keeps_each_images_crop_most_like_the_class_and_the_images_whose_best_crops_are(monkeypatch):
    """With the crops fixed by hand: of an image half black, half white, the crop the classifier
    finds most like class 0 (the all-white one); then a flat grey image, whose crops are all the
    same; the darker flat image is left out at count 2."""
    from otdistill import selection

    half = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    half[..., 4:] = 255
    images = torch.cat([torch.full((1, 1, 8, 8), 100, dtype=torch.uint8), half,
                        torch.full((1, 1, 8, 8), 60, dtype=torch.uint8)])
    boxes = torch.tensor([[0, 0, 4], [2, 2, 4], [0, 4, 4], [0, 0, 8], [4, 1, 4]])  # (top, left, side)
    monkeypatch.setattr(selection, "crop_boxes", lambda n, crops, h, w, g: boxes.expand(n, crops, 3))
    made = rded(images, 2, Bright())
    assert torch.equal(made[0], torch.full((1, 8, 8), 255, dtype=torch.uint8))  # box (0, 4, 4), enlarged
    assert torch.equal(made[1], images[0])


def test_rded_scores_crops_as_the_students_see_them_when_packed(monkeypatch):
    """A one-pixel checkerboard has the most spread whole, none shrunk into a 2 x 2 pack; a gentle
    ramp keeps some: the classifier that prefers spread picks the checkerboard unpacked, the ramp packed."""
    from otdistill import selection

    checker = ((torch.arange(8)[:, None] + torch.arange(8)) % 2 * 255).to(torch.uint8).view(1, 1, 8, 8)
    ramp = (torch.arange(8) * 20 + 40).to(torch.uint8).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    images = torch.cat([checker, ramp])
    monkeypatch.setattr(selection, "crop_boxes", lambda n, crops, h, w, g: torch.tensor([0, 0, 8]).expand(n, crops, 3))
    assert torch.equal(rded(images, 1, Bright("std"))[0], checker[0])
    assert torch.equal(rded(images, 1, Bright("std"), formation=2)[0], ramp[0])
