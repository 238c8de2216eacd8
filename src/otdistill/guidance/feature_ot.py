"""Feature OT guidance (our extension, not the paper's): pull each new image so that {images
already made for the class} + {new ones} matches a pool of real images of the class in
entropic OT, measured in classifiers' penultimate features rather than in latents.

The paper's OT term (ot.py) works on latents with an l1 cost, which it calls not semantic;
herding, the strongest real-image baseline, matches class means in a teacher's features. Here
the predicted clean latent is decoded and embedded, and the envelope gradient of the OT value
flows back through the classifier and the decoder to the latent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import FeatureOTConfig, fingerprint
from ..data import LabelledData, class_subset
from ..errors import UserError
from ..io import generator, sha256_file
from ..metrics import features
from ..ot import entropic_ot
from ..selection import HERDING_CANDIDATES, SELECTIONS, TEACHER_PROBABILITIES, probabilities, select_class
from .common import WarmStarts, guidance_step
from .pool import cached_pool
from .registry import GuidanceTerm, TermInputs, register_term


def feature_classifiers(cfg: FeatureOTConfig, teachers: list[str]) -> list[str]:
    """The folders of the classifiers the term reads: the configured ones, else the first teacher."""
    if cfg.classifiers:
        return list(cfg.classifiers)
    if not teachers:
        raise UserError("sample.guidance.feature_ot needs a classifier: list folders under "
                        "sample.guidance.feature_ot.classifiers or configure a teacher")
    return [teachers[0]]


def load_classifier(path: str | Path, device) -> tuple[torch.nn.Module, Path]:
    """A frozen classifier from a teacher folder, or a surrogate folder's last epoch; with the
    weights file it was read from (its hash keys the cached real features)."""
    from ..surrogate import load_trajectory
    from ..teachers import load_teacher

    path = Path(path)
    if (path / "surrogate.json").is_file():
        nets, info = load_trajectory(path, device)
        return nets[-1].requires_grad_(False), path / f"epoch_{info['epochs'][-1]}.safetensors"
    if (path / "model.json").is_file():
        return load_teacher(path, device)[0], path / "model.safetensors"
    raise UserError(f"sample.guidance.feature_ot.classifiers: {path} is neither a teacher folder (model.json) nor a "
                    "surrogate folder (surrogate.json); train one with `otdistill train-teacher CONFIG`, or import "
                    "one with `otdistill import-teacher`")


# sample.guidance.feature_ot.pool_select: the selections of these names, made with the classifier itself
POOL_SELECTIONS = ("random", "herding", "kmeans", "confident", "informative")


def real_feature_pools(net: torch.nn.Module, weights: Path, data: LabelledData, size: int, seed: int,
                       classes: list[int], cache_dir: str | Path | None, select: str = "random") -> dict[int, torch.Tensor]:
    """{class: (size, d) penultimate features of `size` real training images}, cached per class
    under a name that covers the weights, the training images (a validation split holds some
    out), the selection and its seed. select: random (seeded) | herding (the herding baseline's
    greedy class-mean matching, in these features, among as many candidates as that baseline
    sees: the class's most typical images, spread so that their mean stays on the class mean) |
    kmeans (the image nearest each of `size` k-means centres of those candidates' features: the
    class's modes, covered evenly, a diverse target where herding's is a typical one) |
    confident / informative (ranked by this classifier's softmax: the images it is surest of, or,
    of those it assigns to the class, the ones whose labels carry the most information)."""
    digest, device = sha256_file(weights), next(net.parameters()).device
    embed = lambda x: features(net, x, device)  # noqa: E731
    space = probabilities(net, device) if SELECTIONS[select].space is TEACHER_PROBABILITIES else embed

    def chosen(c: int) -> torch.Tensor:
        if select != "random":  # the selection of that name, in this classifier's space
            return select_class(select, data.train, c, size, seed, space, max(HERDING_CANDIDATES, size))
        return class_subset(data.train, c, size, generator(seed, "feature-pool", c)).sort().values

    pools = {}
    for c in classes:
        count = len(data.train.indices_of(c))
        if count < size:
            raise UserError(f"class '{data.class_names[c]}' has {count} training images, fewer than the feature "
                            f"pool size {size}; lower sample.guidance.feature_ot.pool_size")
        key = fingerprint(digest, data.train.content_id(), select, size, seed)
        cached = Path(cache_dir) / f"real-features-{key}-{c}.safetensors" if cache_dir else None
        pools[c] = cached_pool(cached, "features", lambda: embed(data.train.get(chosen(c))),
                               f"real feature pool of class {c}")
    return pools


class FeatureOTGuidance(GuidanceTerm):
    name = "feature_ot"

    def __init__(self, cfg: FeatureOTConfig, nets: list[torch.nn.Module], pools: list[dict[int, torch.Tensor]]):
        super().__init__(cfg)
        self.nets = nets
        self.pools = pools  # one {class: real features} per classifier
        self._warm = WarmStarts()
        self._memory: dict = {}  # (classifier, class) -> (memory latents, their features): new per chunk only

    def objective(self, x0: torch.Tensor, state) -> tuple[torch.Tensor, list]:
        """The sum over classifiers of log <P, C> between the class's features (memory + the
        images decoded from x0) and its real pool; the log makes each space count alike."""
        images = state.model.decode(x0)
        total, plans = x0.new_zeros(()), []
        for k, (net, pools) in enumerate(zip(self.nets, self.pools)):
            real = pools[state.class_index].to(x0)
            made = torch.cat([self._memory_features(k, net, state).to(x0), net.embed(images).flatten(1)])
            value, plan = entropic_ot(made, real, self.cfg.reg, self.cfg.cost,
                                      warmstart=self._warm.get((k, state.class_index), state),
                                      max_iter=self.cfg.max_iter, tol=self.cfg.tol)
            total = total + value.clamp_min(1e-12).log()
            plans.append(plan)
        return total, plans

    def delta(self, state) -> torch.Tensor:
        x0 = state.x0.detach().requires_grad_(True)
        with torch.enable_grad():
            value, plans = self.objective(x0, state)
            grad, = torch.autograd.grad(value, x0)
        for k, plan in enumerate(plans):
            self._warm.put((k, state.class_index), state, plan.potentials)
        return guidance_step(grad, self.cfg.weight, "feature OT", state)

    def _memory_features(self, k: int, net: torch.nn.Module, state) -> torch.Tensor:
        memory, kept = self._memory.get((k, state.class_index), (None, None))
        if memory is None or memory.shape != state.memory.shape or not torch.equal(memory, state.memory):
            with torch.no_grad():
                kept = (net.embed(state.model.decode(state.memory)).flatten(1) if len(state.memory)
                        else state.memory.new_zeros((0, self.pools[k][state.class_index].shape[1])))
            self._memory[(k, state.class_index)] = (state.memory, kept)
        return kept


def build(cfg: FeatureOTConfig, inputs: TermInputs) -> FeatureOTGuidance:
    device = inputs.model.device
    classes = inputs.classes if inputs.classes is not None else list(range(inputs.data.num_classes))
    nets, pools = [], []
    for path in feature_classifiers(cfg, inputs.teachers):
        net, weights = load_classifier(path, device)
        nets.append(net)
        pools.append(real_feature_pools(net, weights, inputs.data, cfg.pool_size, cfg.pool_seed, classes,
                                        inputs.cache_dir, cfg.pool_select))
    return FeatureOTGuidance(cfg, nets, pools)


register_term("feature_ot", build, reads=feature_classifiers)
