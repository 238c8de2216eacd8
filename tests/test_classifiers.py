import pytest
import torch

from otdistill.errors import UserError
from otdistill.models.classifiers import ConvNet, build_classifier


@pytest.mark.parametrize("arch", ["convnet3", "convnet6", "resnetap10", "resnet18", "tv:mobilenet_v3_small"])
@pytest.mark.parametrize("channels", [1, 3])
def test_registry_builds_working_classifiers(arch, channels):
    model = build_classifier(arch, num_classes=7, in_channels=channels, image_size=32).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, 32, 32))
    assert out.shape == (2, 7)


def test_convnet_depth_width_and_norm_options():
    net = ConvNet(10, 3, 32, depth=4, width=16, norm="batchnorm", pooling="max")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 4
    assert net.classifier.in_features == 16 * 2 * 2
    with pytest.raises(UserError, match="unknown norm"):
        ConvNet(10, 3, 32, norm="weird")


def test_unknown_arch_lists_what_exists():
    with pytest.raises(UserError, match="unknown classifier 'vgg-ish'.*convnet"):
        build_classifier("vgg-ish", 10, 3, 32)
    with pytest.raises(UserError, match="torchvision has no model"):
        build_classifier("tv:not_a_model", 10, 3, 32)


def test_options_ride_in_the_name():
    model = build_classifier("convnet4-w16-batchnorm-max", 10, 3, 32)
    assert model.net.classifier.in_features == 16 * 2 * 2
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert build_classifier("resnetap10-w8", 10, 1, 16).net.fc.in_features == 64
    with pytest.raises(UserError, match="unknown option 'w'"):
        build_classifier("convnet3-w", 10, 3, 32)


def test_dc_first_padding_turns_28_px_into_32_px_maps():
    """DC's ConvNet on grey 28 x 28 images: the first convolution pads 3, so the maps are
    32 -> 16 -> 8 -> 4 and the linear layer reads 128 x 4 x 4 features, as on 32 px images."""
    model = build_classifier("convnet3-pad3", 10, 1, 28)
    assert model.net.features[0].padding == (3, 3) and model.net.features[4].padding == (1, 1)
    assert model.net.classifier.in_features == 128 * 4 * 4
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(UserError, match="unknown option 'pad3'"):
        build_classifier("resnetap10-pad3", 10, 1, 28)
