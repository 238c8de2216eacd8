"""How close a distilled set is to held-out real data, class by class.

- OT distance: entropic W2 (sqrt of <P, squared euclidean cost>) between the distilled
  images of a class and held-out real images of that class.
- density / coverage (Naeem et al., 2020): with k-NN balls around the real points,
  coverage = share of real points whose ball holds a distilled point (modes reached),
  density = mean number of balls a distilled point falls in, over k (realism).
- precision / recall (Kynkaanniemi et al., 2019): share of generated points inside some real
  point's k-NN ball, and share of real points inside some generated point's ball.
- Frechet distance: between Gaussians fitted to two feature sets; in a teacher's penultimate
  features it is the FID analogue (Inception weights cannot be fetched here). It depends on
  the sample count, so compare values made with the same counts.
Set metrics are computed in two spaces: the teacher's penultimate features and the
generator's latent space.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable

import torch

from .config import MetricsConfig
from .data import ImageSet, class_subset, to_unit
from .ot import entropic_ot

log = logging.getLogger(__name__)


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    real, fake = real.flatten(1).double(), fake.flatten(1).double()
    k = min(k, len(real) - 1)
    radii = torch.cdist(real, real).kthvalue(k + 1, dim=1).values  # +1: the point itself is at 0
    inside = torch.cdist(fake, real) <= radii[None, :]  # (fake, real)
    coverage = inside.any(dim=0).double().mean().item()
    density = inside.sum().item() / (k * len(fake))
    return density, coverage


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    real, fake = real.flatten(1).double(), fake.flatten(1).double()
    real_radii = torch.cdist(real, real).kthvalue(min(k, len(real) - 1) + 1, dim=1).values
    fake_radii = torch.cdist(fake, fake).kthvalue(min(k, len(fake) - 1) + 1, dim=1).values
    d = torch.cdist(fake, real)  # (fake, real)
    precision = (d <= real_radii[None, :]).any(dim=1).double().mean().item()
    recall = (d <= fake_radii[:, None]).any(dim=0).double().mean().item()
    return precision, recall


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r^1/2 S_f S_r^1/2)^1/2). With S = A A^T
    for centred features A / sqrt(n - 1), the last trace is the sum of the singular values of
    A_r^T A_f: exact, symmetric (no sqrtm of a non-symmetric product) and sized by the sample
    counts rather than the feature dimension."""
    real, fake = real.flatten(1).double(), fake.flatten(1).double()
    a_r = (real - real.mean(0)) / (len(real) - 1) ** 0.5
    a_f = (fake - fake.mean(0)) / (len(fake) - 1) ** 0.5
    cross = torch.linalg.svdvals(a_r @ a_f.T).sum()
    mean_term = (real.mean(0) - fake.mean(0)).pow(2).sum()
    return (mean_term + a_r.pow(2).sum() + a_f.pow(2).sum() - 2 * cross).item()


def ot_distance(real: torch.Tensor, fake: torch.Tensor, reg: float = 0.05) -> float:
    value, _ = entropic_ot(fake.flatten(1).double(), real.flatten(1).double(), reg, "sqeuclidean")
    return value.clamp_min(0).sqrt().item()


def set_metrics(real: torch.Tensor, fake: torch.Tensor, real_labels: torch.Tensor, fake_labels: torch.Tensor,
                num_classes: int, k: int = 5) -> dict:
    """Per-class OT distance, density and coverage, and their means over classes."""
    per_class = []
    for c in range(num_classes):
        r, f = real[real_labels == c], fake[fake_labels == c]
        density, coverage = density_coverage(r, f, k)
        per_class.append({"ot_distance": ot_distance(r, f), "density": density, "coverage": coverage})
    keys = ("ot_distance", "density", "coverage")
    return {**{key: statistics.fmean(p[key] for p in per_class) for key in keys}, "per_class": per_class}


def set_report(settings, test: ImageSet, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
               spaces: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> dict:
    """A set's metrics against `settings.per_class` held-out test images per class, in each
    feature space (name -> uint8 images to features); what a set's manifest stores."""
    idx = held_out(test, num_classes, settings.per_class, settings.seed)
    real, real_labels = test.get(idx), test.labels[idx]
    result = {"settings": dataclasses.asdict(settings), "held_out": "test split"}
    for space, embed in spaces.items():
        result[space] = set_metrics(embed(real), embed(images), real_labels, labels, num_classes, settings.k)
        log.info("metrics (%s): OT distance %.3f, coverage %.3f, density %.3f", space,
                 result[space]["ot_distance"], result[space]["coverage"], result[space]["density"])
    return result


def held_out(images: ImageSet, num_classes: int, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of up to `per_class` held-out images of each class (seeded)."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        picks.append(class_subset(images, c, per_class, g))
    return torch.cat(picks).sort().values


@torch.no_grad()
def teacher_agreement(model: torch.nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, device,
                      batch_size: int = 500) -> float:
    """Share of images a Classifier assigns to the class they were made for."""
    predicted = torch.cat([model(to_unit(images_uint8[s:s + batch_size], device)).argmax(1).cpu()
                           for s in range(0, len(images_uint8), batch_size)])
    return (predicted == labels).double().mean().item()


@torch.no_grad()
def features(model: torch.nn.Module, images_uint8: torch.Tensor, device, batch_size: int = 500) -> torch.Tensor:
    """A Classifier's penultimate features for uint8 images."""
    return torch.cat([model.embed(to_unit(images_uint8[s:s + batch_size], device)).float().cpu()
                      for s in range(0, len(images_uint8), batch_size)])


# A generated set this close to chance, or reaching no real mode at all, is noise to the teacher.
FIX_GENERATOR = ("the generator is not trained enough: raise generator.diffusion.steps (and, for a latent "
                 "generator trained here, generator.autoencoder.steps) and rerun `otdistill train-generator CONFIG` "
                 "(docs/own-dataset.md: how to tell a generator is ready)")


def near_chance(agreement: float, num_classes: int) -> bool:
    """Teacher agreement with the intended classes within 2x of chance (or half-way to 1 for few classes)."""
    return agreement < min(2 / num_classes, (1 + 1 / num_classes) / 2)


def junk_warning(manifest: dict) -> str | None:
    """What says a generated set is junk (agreement near chance, zero coverage), with the fix; None if nothing does."""
    if manifest.get("source", {}).get("kind") != "generated":
        return None
    k, found = manifest["num_classes"], []
    agreement = manifest.get("teacher_agreement", {}).get("overall")
    if agreement is not None and near_chance(agreement, k):
        found.append(f"the teacher agrees with the generated class on {100 * agreement:.0f}% of images "
                     f"(chance: {100 / k:.0f}%)")
    coverage = manifest.get("metrics", {}).get("teacher_features", {}).get("coverage")
    if coverage is not None:
        # each image on the data falls in about k of the n held-out points' k-NN balls, so IPC real
        # images cover about IPC * k / n of them (0.025 at IPC 1 by default); noise reaches almost none
        settings = manifest["metrics"].get("settings") or dataclasses.asdict(MetricsConfig())  # older sets: defaults
        expected = min(1.0, manifest["ipc"] * settings["k"] / settings["per_class"])
        if coverage < expected / 10:
            found.append(f"coverage of held-out real images is {coverage:.3f} (as many real images reach about "
                         f"{expected:.3f})")
    if not found:
        return None
    return f"the distilled images look like noise: {'; '.join(found)}. Its accuracies mean little: {FIX_GENERATOR}"
