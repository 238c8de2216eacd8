"""Real-image selection baselines: which IPC training images of a class to keep.

- random: a seeded random subset;
- herding: greedy herding in the teacher's feature space (each pick keeps the mean of the
  picked features closest to the class mean), as in iCaRL / the DC benchmark;
- kmeans: the real image nearest each of IPC k-means centres of real latents (D4M's
  prototype idea, without Stable Diffusion).
K-means on at most `candidates` images per class (seeded), to stay CPU-sized.
"""

from __future__ import annotations

import torch

from .data import ImageSet
from .errors import UserError
from .io import generator

METHODS = ("random", "herding", "kmeans")


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


def select_class(method: str, images: ImageSet, c: int, ipc: int, seed: int, embed=None,
                 candidates: int = 2000) -> torch.Tensor:
    """Indices into `images` of the ipc picks for class c. `embed(uint8 batch) -> (n, ...)`
    maps images to the space herding (teacher features) or kmeans (latents) works in."""
    if method not in METHODS:
        raise UserError(f"unknown selection '{method}'; use one of {', '.join(METHODS)}")
    idx = images.indices_of(c)
    order = idx[torch.randperm(len(idx), generator=generator(seed, "select", method, c))]
    if method == "random":
        return order[:ipc].sort().values
    pool = order[:candidates].sort().values
    points = torch.cat([embed(images.get(pool[s:s + 500])) for s in range(0, len(pool), 500)])
    if method == "herding":
        picks = herding(points.flatten(1).float(), ipc)
    else:
        picks = nearest_distinct(kmeans_centres(points, ipc, seed), points)
    return pool[torch.tensor(picks)].sort().values
