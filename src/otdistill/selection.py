"""Real-image selection baselines: which IPC training images of a class to keep.

- random: a seeded random subset;
- herding: greedy herding in the teacher's feature space (each pick keeps the mean of the
  picked features closest to the class mean), as in iCaRL / the DC benchmark;
- kmeans: the real image nearest each of IPC k-means centres of real latents (D4M's
  prototype idea, without Stable Diffusion);
- confident: the IPC images the teacher gives their class the highest probability (RDED's
  realism score, on whole images rather than its crops); as `sample.keep`, the drawn images
  the teacher finds most like their class.
- informative: of the images the teacher assigns to their class, the IPC whose probabilities it
  is least sure of (highest entropy): the class's border, where a soft label says the most beyond
  the class name (our extension, for soft-label students); images it assigns elsewhere come last.
K-means on at most `candidates` images per class (seeded), to stay CPU-sized.

Baselines that make new images rather than pick them stand beside the selections:
- rded: RDED's crops (Sun et al., CVPR 2024; LINs-lab/RDED `synthesize`): 5 random square crops
  (RandomResizedCrop, scale 0.08-1) of each of 300 seeded images of the class, each image's crop
  the teacher finds most like the class, and the images whose best crops it finds most like it.
  With sample.formation = 2 these crops are packed 2 x 2, as RDED packs them at ImageNet scale.

Methods are registered by name: a selection (SELECTIONS, `register_selection`) is also a baseline
(BASELINES); `register_baseline` adds one that only makes sets. The CLI's choices, the `baseline`
key and the benchmark rows read BASELINES; sample.keep, sample.real_select, sample.init and the
guidance pools take SELECTIONS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .data import ImageSet, TensorImages, class_subset, to_unit
from .formation import as_part
from .io import generator


@dataclass(frozen=True)
class Embedding:
    """A space selection works in: which model it reads, and `build(path, device) -> embed`
    with `embed(uint8 images) -> (n, ...) points`."""

    model_path: Callable  # config -> the folder of the model it reads
    build: Callable


def _teacher_features(path, device):
    from .metrics import features
    from .teachers import load_teacher

    teacher, _ = load_teacher(path, device)
    return lambda x: features(teacher, x, device)


def _latents(path, device):
    from .models.generator import load_generator
    from .train_generator import encode_all

    model = load_generator(path, device)  # a baseline never trains one
    return lambda x: encode_all(model, TensorImages(x, torch.zeros(len(x))), device)


def probabilities(classifier: torch.nn.Module, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """`embed(uint8 images) -> (n, K)` the classifier's softmax: the space of the selections that
    rank by the teacher's confidence (confident, informative)."""
    def embed(x):  # _embedded hands over a class's candidates in batches
        with torch.inference_mode():
            return classifier(to_unit(x, device)).float().softmax(1).cpu()
    return embed


def _teacher_probabilities(path, device):
    from .teachers import load_teacher

    return probabilities(load_teacher(path, device)[0], device)


def _first_teacher(cfg):
    return cfg.teachers[0].path if cfg.teachers else None


TEACHER = Embedding(_first_teacher, _teacher_features)
TEACHER_PROBABILITIES = Embedding(_first_teacher, _teacher_probabilities)
LATENT = Embedding(lambda cfg: cfg.generator.path, _latents)


@dataclass(frozen=True)
class Selection:
    name: str
    # (class indices in seeded random order, images, embed, ipc, seed, candidates) -> the picks
    pick: Callable[..., torch.Tensor]
    space: Embedding | None = None  # None: needs no model


@dataclass(frozen=True)
class Baseline:
    name: str
    # (images, class, count, seed, embed, formation) -> (count, C, H, W) uint8 images of the class
    make: Callable[..., torch.Tensor]
    space: Embedding | None = None


SELECTIONS: dict[str, Selection] = {}
BASELINES: dict[str, Baseline] = {}
HERDING_CANDIDATES = 2000  # images of a class that herding and k-means see (seeded), to stay CPU-sized


def register_selection(name: str, pick: Callable[..., torch.Tensor], space: Embedding | None = None) -> None:
    SELECTIONS[name] = Selection(name, pick, space)
    register_baseline(name, lambda images, c, count, seed, embed, formation:
                      images.get(select_class(name, images, c, count, seed, embed)), space)


def register_baseline(name: str, make: Callable[..., torch.Tensor], space: Embedding | None = None) -> None:
    BASELINES[name] = Baseline(name, make, space)


def model_read(method: str, cfg) -> str | None:
    """The folder of the model a baseline or selection method reads under cfg (None: it reads none)."""
    space = BASELINES[method].space
    return space.model_path(cfg) if space else None


def embedding(method: str, cfg, device) -> Callable | None:
    """The method's `embed(uint8 images) -> points`, built from the model it reads (None if none)."""
    space = BASELINES[method].space
    return space.build(space.model_path(cfg), device) if space else None


def kmeans_centres(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k centres of (n, ...) points, returned with the points' trailing shape."""
    from sklearn.cluster import KMeans

    flat = points.flatten(1).double().numpy()
    centres = KMeans(k, n_init=1, random_state=seed % 2**31).fit(flat).cluster_centers_
    return torch.from_numpy(centres).to(points.dtype).view(k, *points.shape[1:])


def nearest_distinct(centres: torch.Tensor, points: torch.Tensor) -> list[int]:
    """For each centre in turn, the nearest point not already taken."""
    dist = torch.cdist(centres.flatten(1).double(), points.flatten(1).double())
    chosen: list[int] = []
    for row in dist:
        chosen.append(next(i for i in row.argsort().tolist() if i not in chosen))
    return chosen


def herding(features: torch.Tensor, k: int) -> list[int]:
    mu = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    for step in range(1, k + 1):
        gap = ((total + features) / step - mu).norm(dim=1)
        if chosen:
            gap[chosen] = float("inf")
        i = int(gap.argmin())
        chosen.append(i)
        total += features[i]
    return chosen


def _in_batches(embed, n: int, batch: Callable[[slice], torch.Tensor], size: int = 500) -> torch.Tensor:
    """embed(batch(s)) over slices of n items, joined: bounded memory for a class's candidates."""
    return torch.cat([embed(batch(slice(s, s + size))) for s in range(0, n, size)])


def _embedded(order: torch.Tensor, images: ImageSet, embed, candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `candidates` of a class (in index order) and their points."""
    pool = order[:candidates].sort().values
    return pool, _in_batches(embed, len(pool), lambda s: images.get(pool[s]))


def _random(order, images, embed, ipc, seed, candidates):
    return order[:ipc]


def _herding(order, images, embed, ipc, seed, candidates):
    pool, points = _embedded(order, images, embed, candidates)
    return pool[torch.tensor(herding(points.flatten(1).float(), ipc))]


def _kmeans(order, images, embed, ipc, seed, candidates):
    pool, points = _embedded(order, images, embed, candidates)
    return pool[torch.tensor(nearest_distinct(kmeans_centres(points, ipc, seed), points))]


def _confident(order, images, embed, ipc, seed, candidates):
    pool, probabilities = _embedded(order, images, embed, candidates)
    c = int(images.labels[pool[0]])  # every candidate is of the class
    return pool[probabilities[:, c].argsort(descending=True, stable=True)[:ipc]]


def _informative(order, images, embed, ipc, seed, candidates):
    from .relabel import label_entropy

    pool, probabilities = _embedded(order, images, embed, candidates)
    c = int(images.labels[pool[0]])
    entropy = label_entropy(probabilities.clamp_min(1e-12).log())  # softmax(log p) = p; in [0, 1]
    # an image the teacher assigns elsewhere ranks below every one it assigns to c
    score = entropy.where(probabilities.argmax(1) == c, entropy - 2)
    return pool[score.argsort(descending=True, stable=True)[:ipc]]


RDED_CANDIDATES, RDED_CROPS, RDED_SCALE = 300, 5, (0.08, 1.0)  # RDED's mipc and num_crop; RandomResizedCrop's scale


def crop_boxes(n: int, crops: int, h: int, w: int, g: torch.Generator,
               scale: tuple[float, float] = RDED_SCALE) -> torch.Tensor:
    """(n, crops, 3) square boxes (top, left, side), drawn as RandomResizedCrop draws with aspect
    ratio 1 (RDED's crops): the side the rounded root of a uniform share in `scale` of the area,
    the box anywhere inside the image."""
    side = (torch.empty(n, crops).uniform_(*scale, generator=g) * h * w).sqrt().round().clamp(1, min(h, w))
    top = (torch.rand(n, crops, generator=g) * (h - side + 1)).floor()
    left = (torch.rand(n, crops, generator=g) * (w - side + 1)).floor()
    return torch.stack([top, left, side], -1).long()


def resized_crops(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """uint8 (n, C, H, W) and (n, k, 3) boxes -> (n, k, C, H, W): each box enlarged to the image's size."""
    from torch.nn.functional import interpolate

    size = images.shape[-2:]
    out = [interpolate(images[i:i + 1, :, t:t + s, l:l + s].float(), size=size, mode="bilinear",
                       align_corners=False, antialias=True)[0]
           for i, row in enumerate(boxes.tolist()) for t, l, s in row]
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8).view(*boxes.shape[:2], *images.shape[1:])


def _rded(images, c, count, seed, embed, formation):
    """RDED: each seeded candidate's crops scored by the teacher's probability of class c, seen as
    the students will see them (parts of a pack when formation > 1; RDED pads its patches instead);
    the best crop of each candidate, and the `count` candidates whose best crops score highest,
    best first. Ranking by that probability is RDED's ranking by cross-entropy."""
    pool = class_subset(images, c, max(RDED_CANDIDATES, count), generator(seed, "select", "rded", c)).sort().values
    real = images.get(pool)
    crops = resized_crops(real, crop_boxes(len(pool), RDED_CROPS, *real.shape[-2:], generator(seed, "rded-crops", c)))
    flat = crops.flatten(0, 1)
    score = _in_batches(embed, len(flat), lambda s: as_part(flat[s], formation))[:, c]
    best, which = score.view(len(pool), RDED_CROPS).max(1)
    ranked = best.argsort(descending=True, stable=True)[:count]
    return crops[ranked, which[ranked]]


register_selection("random", _random)
register_selection("herding", _herding, TEACHER)
register_selection("kmeans", _kmeans, LATENT)
register_selection("confident", _confident, TEACHER_PROBABILITIES)
register_selection("informative", _informative, TEACHER_PROBABILITIES)
register_baseline("rded", _rded, TEACHER_PROBABILITIES)


def baseline_images(method: str, images: ImageSet, c: int, count: int, seed: int, embed=None,
                    formation: int = 1) -> torch.Tensor:
    """(count, C, H, W) uint8: the baseline's images of class c (picked or made), to be packed by `formation`."""
    return BASELINES[method].make(images, c, count, seed, embed, formation)


def select_class(method: str, images: ImageSet, c: int, ipc: int, seed: int, embed=None,
                 candidates: int = HERDING_CANDIDATES) -> torch.Tensor:
    """Indices into `images` of the ipc picks for class c. `embed(uint8 batch) -> (n, ...)`
    maps images to the method's space (its Embedding), when it has one."""
    order = class_subset(images, c, None, generator(seed, "select", method, c))
    return SELECTIONS[method].pick(order, images, embed, ipc, seed, candidates).sort().values


def candidate_keeper(cfg, device) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """sample.oversample > 1: `keep(images, c)`, the 1/oversample of class c's drawn uint8
    images that sample.keep picks, in drawing order; None when every drawn image is kept."""
    if cfg.sample.oversample == 1:
        return None
    method = cfg.sample.keep
    embed = embedding(method, cfg, device)

    def keep(images: torch.Tensor, c: int) -> torch.Tensor:
        drawn = TensorImages(images, torch.full((len(images),), c))
        count = len(images) // cfg.sample.oversample  # sample.ipc, less the real images kept beside them
        return images[select_class(method, drawn, c, count, cfg.sample.seed, embed, len(images))]

    return keep


def class_starts(model, images: ImageSet, c: int, cfg, embed=None) -> torch.Tensor:
    """Where sampling of class c starts (sample.init, cfg a SampleConfig): D4M's prototypes,
    sample.ipc k-means centres of the latents of up to sample.prototype_candidates of its real
    images; or (our extension) the latents of the sample.ipc real images a selection method
    picks, e.g. herding's, which the sampler re-noises and guides. `embed` is the method's space."""
    from .train_generator import encode_all

    if cfg.init == "prototypes":
        idx = class_subset(images, c, cfg.prototype_candidates, generator(cfg.seed, "prototypes", c))
        return kmeans_centres(encode_all(model, images, model.device, idx.sort().values), cfg.ipc, cfg.seed)
    return encode_all(model, images, model.device, select_class(cfg.init, images, c, cfg.ipc, cfg.seed, embed))
