"""Classifier registry: a config names an architecture as a string (timm-style).

The field's small nets are written here (ConvNet-D of DC/DSA/DM, ResNetAP-10 of IDC,
ResNet-18 with a small-input stem); any torchvision classification model is reachable
as `tv:<name>` (e.g. `tv:resnet50`). Every classifier takes images in [0, 1] and
normalises them itself, so a saved checkpoint is self-describing.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable

import torch
import torch.nn as nn

from ..errors import UserError


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm":  # DC's "instancenorm" is a GroupNorm with one channel per group
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":
        return nn.GroupNorm(1, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise UserError(f"unknown norm '{kind}'; use instancenorm, batchnorm, layernorm or none")


class ConvNet(nn.Module):
    """ConvNet-D: D blocks of conv3x3 -> norm -> ReLU -> 2x2 pooling, then a linear layer.
    `first_padding` 3 is DC's 28-px rule: grey 28 x 28 images padded to 32 x 32 maps."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, depth: int = 3, width: int = 128,
                 norm: str = "instancenorm", pooling: str = "avg", first_padding: int = 1):
        super().__init__()
        pool = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}.get(pooling)
        if pool is None:
            raise UserError(f"unknown pooling '{pooling}'; use avg or max")
        layers, channels, size = [], in_channels, image_size + 2 * (first_padding - 1)
        for d in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=first_padding if d == 0 else 1), make_norm(norm, width),
                       nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(pool(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class _APBlock(nn.Module):
    """ResNet basic block whose downsampling is average pooling (IDC's ResNetAP)."""

    def __init__(self, cin: int, cout: int, downsample: bool, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, cout)
        self.pool = nn.AvgPool2d(2) if downsample else nn.Identity()
        self.shortcut = nn.Identity()
        if downsample or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), make_norm(norm, cout), self.pool)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.pool(out)
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetAP(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, blocks=(1, 1, 1, 1), width: int = 64,
                 norm: str = "instancenorm"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), make_norm(norm, width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for stage, n in enumerate(blocks):
            cout = width * 2 ** stage
            for b in range(n):
                layers.append(_APBlock(cin, cout, downsample=(stage > 0 and b == 0), norm=norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def embed(self, x):
        return self.layers(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.embed(x))


def _torchvision(name: str, num_classes: int, in_channels: int, image_size: int, small_stem: bool = False, **kwargs):
    import torchvision

    try:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except ValueError:
        raise UserError(f"torchvision has no model '{name}'; see torchvision.models.list_models()") from None
    if small_stem:
        if not hasattr(net, "conv1"):
            raise UserError(f"small_stem is only defined for ResNet-style models, not '{name}'")
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    return net


class Classifier(nn.Module):
    """Normalises [0, 1] images, repeats grey channels for RGB-only nets, then runs the net."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], repeat_channels: int = 1):
        super().__init__()
        self.net = net
        self.repeat_channels = repeat_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.repeat(1, self.repeat_channels, 1, 1) if self.repeat_channels > 1 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._prepare(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features where the net exposes them, else its logits."""
        x = self._prepare(x)
        return self.net.embed(x) if hasattr(self.net, "embed") else self.net(x)


# name -> (constructor, fixed kwargs, needs RGB input)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict, bool]] = {
    "resnetap10": (ResNetAP, {"blocks": (1, 1, 1, 1)}, False),
    "resnet18": (_torchvision, {"name": "resnet18", "small_stem": True}, True),
}


def available() -> list[str]:
    return ["convnet<D>[-w<width>][-<norm>][-avg|max][-pad<P>] (e.g. convnet3, convnet6-w64-batchnorm, "
            "convnet3-pad3: DC's net for 28 px)",
            "resnetap10[-w<width>][-<norm>]", "resnet18", "tv:<torchvision name>"]


NORMS = ("instancenorm", "batchnorm", "layernorm", "none")


def _parse_options(arch: str, kwargs: dict) -> tuple[str, dict]:
    """`convnet3-w64-batchnorm-max` -> ("convnet3", width=64, norm="batchnorm", pooling="max"):
    options ride in the name so a config (and a saved checkpoint) names the whole net."""
    base, *options = arch.split("-")
    if not (re.fullmatch(r"convnet\d+", base) or base == "resnetap10"):
        return arch, kwargs
    kwargs = dict(kwargs)
    for opt in options:
        if re.fullmatch(r"w\d+", opt):
            kwargs["width"] = int(opt[1:])
        elif opt in NORMS:
            kwargs["norm"] = opt
        elif opt in ("avg", "max"):
            kwargs["pooling"] = opt
        elif re.fullmatch(r"pad\d", opt) and base.startswith("convnet"):
            kwargs["first_padding"] = int(opt[3:])
        else:
            raise UserError(f"unknown option '{opt}' in classifier name '{arch}'; options are w<width>, "
                            f"{', '.join(NORMS)}, avg, max, pad<P> (ConvNet's first padding) "
                            "(e.g. convnet3-w64-batchnorm)")
    return base, kwargs


def arch_problem(arch: str) -> str | None:
    """Why `arch` names no classifier, or None; checked without building it (configs do this
    when they load)."""
    try:
        base, _ = _parse_options(arch, {})
    except UserError as exc:
        return str(exc)
    if re.fullmatch(r"convnet\d+", base) or base in _REGISTRY:
        return None
    if base.startswith("tv:"):
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        if base[3:] in names:
            return None
        close = difflib.get_close_matches(base[3:], names, n=1)
        return (f"torchvision has no classification model '{base[3:]}'"
                + (f"; did you mean 'tv:{close[0]}'?" if close else "; see torchvision.models.list_models()"))
    close = difflib.get_close_matches(arch, ["convnet3", *_REGISTRY], n=1)
    return (f"unknown classifier '{arch}'; available: {', '.join(available())}"
            + (f"; did you mean '{close[0]}'?" if close else ""))


def build_classifier(arch: str, num_classes: int, in_channels: int, image_size: int,
                     mean: list[float] | None = None, std: list[float] | None = None, **kwargs) -> Classifier:
    """Build `arch` for images of the given shape; kwargs reach the constructor (width, norm, ...)."""
    repeat = 1
    arch, kwargs = _parse_options(arch, kwargs)
    match = re.fullmatch(r"convnet(\d+)", arch)
    if match:
        net = ConvNet(num_classes, in_channels, image_size, depth=int(match.group(1)), **kwargs)
    elif arch in _REGISTRY or arch.startswith("tv:"):
        ctor, fixed, rgb = _REGISTRY.get(arch, (_torchvision, {"name": arch[3:]}, True))
        if rgb and in_channels == 1:
            repeat = 3
        net = ctor(num_classes=num_classes, in_channels=3 if rgb else in_channels, image_size=image_size, **fixed, **kwargs)
    else:
        raise UserError(f"unknown classifier '{arch}'; available: {', '.join(available())}")
    mean = mean if mean is not None else [0.5] * in_channels
    std = std if std is not None else [0.5] * in_channels
    return Classifier(net, mean, std, repeat)
