"""DSA's operations against their formulas (DSA, Zhao & Bilen 2021: ParamDiffAug's ranges), each
expected value computed here by hand or by an independent loop, never by the module under test."""

import math

import pytest
import torch

from otdistill import dsa


def images(n=3, c=1, h=8, w=8, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_brightness_adds_u_minus_half():
    x = images()
    u = torch.tensor([0.0, 0.5, 1.0])
    out = dsa.brightness(x, u)
    assert torch.allclose(out - x, torch.tensor([-0.5, 0.0, 0.5]).view(3, 1, 1, 1).expand_as(x))


def test_saturation_scales_around_the_channel_mean():
    x = images(c=3)
    u = torch.tensor([0.0, 0.25, 1.0])
    out = dsa.saturation(x, u)
    for i, factor in enumerate([0.0, 0.5, 2.0]):  # u * 2
        mean = x[i].mean(dim=0)
        assert torch.allclose(out[i], (x[i] - mean) * factor + mean, atol=1e-6)
    grey = images(c=1)
    assert torch.allclose(dsa.saturation(grey, u), grey)  # one channel: nothing to saturate


def test_contrast_scales_around_the_image_mean():
    x = images()
    u = torch.tensor([0.0, 0.5, 1.0])
    out = dsa.contrast(x, u)
    for i, factor in enumerate([0.5, 1.0, 1.5]):  # u + 0.5
        assert torch.allclose(out[i], (x[i] - x[i].mean()) * factor + x[i].mean(), atol=1e-6)


def test_translate_shifts_with_zero_fill():
    x = images()
    dy, dx = torch.tensor([2, -1, 0]), torch.tensor([-3, 0, 1])
    out = dsa.translate(x, dy, dx)
    for i in range(3):
        for r in range(8):
            for c in range(8):
                rr, cc = r + int(dy[i]), c + int(dx[i])
                expected = x[i, :, rr, cc] if 0 <= rr < 8 and 0 <= cc < 8 else torch.zeros(1)
                assert torch.equal(out[i, :, r, c], expected)


def test_cutout_zeroes_a_half_side_square_around_the_centre():
    x = images() + 10  # no zero pixel before the cut
    out = dsa.cutout(x, torch.tensor([4, 0, 8]), torch.tensor([4, 7, 1]))
    # side round(0.5 * 8) = 4; rows [cy - 2, cy + 2) clipped to the image
    expected = [((2, 6), (2, 6)), ((0, 2), (5, 8)), ((6, 8), (0, 3))]
    for i, ((r0, r1), (c0, c1)) in enumerate(expected):
        zero = out[i, 0] == 0
        box = torch.zeros(8, 8, dtype=torch.bool)
        box[r0:r1, c0:c1] = True
        assert torch.equal(zero, box)
        assert torch.equal(out[i, 0][~box], x[i, 0][~box])


def test_flip_mirrors_below_the_probability():
    x = images()
    out = dsa.flip(x, torch.tensor([0.1, 0.9, 0.49]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(-1))


def _ramp(n=2, size=8):
    # pixel value = its column's normalised x coordinate (align_corners=False centres)
    coords = (2 * torch.arange(size, dtype=torch.float) + 1) / size - 1
    return coords.view(1, 1, 1, size).expand(n, 1, size, size).clone(), coords


def test_scale_samples_the_input_at_scaled_coordinates():
    x, coords = _ramp()
    out = dsa.scale(x, torch.tensor([1.0, 0.5]), torch.tensor([1.0, 1.0]))
    assert torch.allclose(out[0], x[0], atol=1e-6)  # factor 1: the identity
    # factor 0.5 zooms in: output column j samples the input at 0.5 * x_j; a ramp interpolates exactly
    assert torch.allclose(out[1, 0, 4], 0.5 * coords, atol=1e-6)


def test_rotate_quarter_turn_is_rot90_and_zero_angle_identity():
    x = images(n=2)
    out = dsa.rotate(x, torch.tensor([0.0, math.pi / 2]))
    assert torch.allclose(out[0], x[0], atol=1e-5)
    # theta = [[cos, -sin], [sin, cos]]: output (x, y) samples input (-y, x), so out[r, c] = in[c, n - 1 - r]
    assert torch.allclose(out[1], torch.rot90(x[1], k=1, dims=(-2, -1)), atol=1e-5)


def test_augment_draws_ranges_and_respects_the_operation_list():
    x = torch.rand(64, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    # only flips allowed: every output is the image or its mirror, both seen
    out = dsa.DSAugment([0.3], [0.4], ("flip",))(x, g)
    mirrored = torch.tensor([torch.allclose(o, xi.flip(-1), atol=1e-6) for o, xi in zip(out, x)])
    same = torch.tensor([torch.allclose(o, xi, atol=1e-6) for o, xi in zip(out, x)])
    assert bool((mirrored | same).all()) and 0 < int(mirrored.sum()) < 64
    # brightness moves by normalised units: up to +-0.5 * std in [0, 1] pixel space
    shift = dsa.DSAugment([0.3], [0.4], ("color",))(torch.full((256, 1, 4, 4), 0.5), g) - 0.5
    assert float(shift.abs().max()) <= 0.5 * 0.4 + 1e-6 and float(shift.abs().max()) > 0.15
    with pytest.raises(ValueError, match="unknown DSA operation"):
        dsa.apply(x, "blur", g)


def test_augment_is_reproducible_from_the_generator():
    x = torch.rand(8, 1, 16, 16)
    a = dsa.DSAugment([0.5], [0.5])(x, torch.Generator().manual_seed(3))
    b = dsa.DSAugment([0.5], [0.5])(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
