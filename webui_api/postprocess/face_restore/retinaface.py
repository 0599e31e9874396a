"""RetinaFace, the face detector A1111 runs before face restoration (through facexlib).

The network is written here so that facexlib's released weights (detection_Resnet50_Final.pth,
detection_mobilenet0.25_Final.pth) load with `strict=True`: every module keeps the attribute
names and layer order of those files (body.layer1.0.conv1, fpn.output1.0, ssh1.conv3X3.0,
ClassHead.0.conv1x1, ...). facexlib itself is not used: it needs OpenCV and downloads weights.

Layout: a backbone (ResNet-50 or MobileNet-0.25) gives three feature maps at strides 8/16/32,
an FPN merges them top-down, one SSH context module per level widens the receptive field, and
1x1 heads predict, per anchor, a box offset (4), a face/background score (2) and five
landmarks (10). Two anchors per cell. Only torch is imported; no torchvision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class RetinaConfig:
    """The two published variants: backbone name, channel widths, anchor sizes per level."""

    backbone: str  # "resnet50" | "mobilenet0.25"
    in_channel: int  # channels of the first returned backbone stage divided by 2
    out_channel: int  # FPN / SSH width
    min_sizes: tuple[tuple[int, int], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variance: tuple[float, float] = (0.1, 0.2)

    @property
    def anchors_per_cell(self) -> int:
        return len(self.min_sizes[0])


RESNET50 = RetinaConfig("resnet50", in_channel=256, out_channel=256)
MOBILENET = RetinaConfig("mobilenet0.25", in_channel=32, out_channel=64)
CONFIGS = {config.backbone: config for config in (RESNET50, MOBILENET)}


# --------------------------------------------------------------------------- building blocks


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0, kernel: int = 3) -> nn.Sequential:
    """conv (no bias) -> batch norm -> leaky ReLU: keys "0.weight", "1.*"."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_plain(inp: int, oup: int) -> nn.Sequential:
    """3x3 conv + batch norm without activation (SSH branches end with one)."""
    return nn.Sequential(nn.Conv2d(inp, oup, 3, 1, 1, bias=False), nn.BatchNorm2d(oup))


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """MobileNet's depthwise-separable pair: depthwise 3x3 then pointwise 1x1, each BN + leaky."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class SSH(nn.Module):
    """Single Stage Headless context module: 3x3, 5x5 and 7x7 receptive fields (the larger ones
    as stacked 3x3s), concatenated to `out_channel` (1/2 + 1/4 + 1/4)."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        if out_channel % 4:
            raise ValueError(f"SSH width must be a multiple of 4, got {out_channel}")
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = conv_bn_plain(in_channel, out_channel // 2)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_plain(out_channel // 4, out_channel // 4)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_plain(out_channel // 4, out_channel // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv5X5_1(x)
        branches = [self.conv3X3(x), self.conv5X5_2(first), self.conv7x7_3(self.conv7X7_2(first))]
        return F.relu(torch.cat(branches, dim=1))


class FPN(nn.Module):
    """Feature pyramid: 1x1 lateral convs, nearest upsampling from coarse to fine, 3x3 merges."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = conv_bn(in_channels[0], out_channels, leaky=leaky, kernel=1)
        self.output2 = conv_bn(in_channels[1], out_channels, leaky=leaky, kernel=1)
        self.output3 = conv_bn(in_channels[2], out_channels, leaky=leaky, kernel=1)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out1, out2, out3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[-2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[-2:], mode="nearest"))
        return [out1, out2, out3]


class Bottleneck(nn.Module):
    """ResNet-50's block (v1.5: the stride sits on the 3x3 conv), torchvision's key names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def resnet_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage; the first block projects the shortcut when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet50Body(nn.Module):
    """ResNet-50 up to layer4 (no pooling / fc: facexlib's IntermediateLayerGetter drops them);
    returns layer2, layer3 and layer4 (strides 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = resnet_layer(64, 64, 3, 1)
        self.layer2 = resnet_layer(256, 128, 4, 2)
        self.layer3 = resnet_layer(512, 256, 6, 2)
        self.layer4 = resnet_layer(1024, 512, 3, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class MobileNetBody(nn.Module):
    """MobileNet-0.25 in three stages (strides 8, 16, 32), facexlib's MobileNetV1 layout."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1), conv_dw(8, 16, 1), conv_dw(16, 32, 2),
            conv_dw(32, 32, 1), conv_dw(32, 64, 2), conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        return [s1, s2, self.stage3(s2)]


def heads(count: int, channels: int, anchors: int, outputs: int) -> nn.ModuleList:
    """One 1x1 conv head per pyramid level, wrapped as facexlib's `<Head>.<i>.conv1x1`."""
    modules = nn.ModuleList()
    for _ in range(count):
        head = nn.Module()
        head.conv1x1 = nn.Conv2d(channels, anchors * outputs, 1)
        modules.append(head)
    return modules


def run_heads(modules: nn.ModuleList, features: list[torch.Tensor], outputs: int) -> torch.Tensor:
    """Apply each level's head; (N, A*k, H, W) -> (N, H*W*A, k), levels concatenated fine first."""
    flat = [
        m.get_submodule("conv1x1")(f).permute(0, 2, 3, 1).reshape(f.shape[0], -1, outputs)
        for m, f in zip(modules, features, strict=True)
    ]
    return torch.cat(flat, dim=1)


class RetinaFace(nn.Module):
    """The detector network; `forward` returns (box offsets, face probabilities, landmark
    offsets) per anchor, decoded by webui_api.postprocess.face_restore.detector."""

    def __init__(self, config: RetinaConfig = RESNET50) -> None:
        super().__init__()
        self.config = config
        self.body = ResNet50Body() if config.backbone == "resnet50" else MobileNetBody()
        widths = (config.in_channel * 2, config.in_channel * 4, config.in_channel * 8)
        self.fpn = FPN(widths, config.out_channel)
        self.ssh1 = SSH(config.out_channel, config.out_channel)
        self.ssh2 = SSH(config.out_channel, config.out_channel)
        self.ssh3 = SSH(config.out_channel, config.out_channel)
        anchors = config.anchors_per_cell
        self.ClassHead = heads(3, config.out_channel, anchors, 2)
        self.BboxHead = heads(3, config.out_channel, anchors, 4)
        self.LandmarkHead = heads(3, config.out_channel, anchors, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = self.fpn(self.body(x))
        features = [self.ssh1(pyramid[0]), self.ssh2(pyramid[1]), self.ssh3(pyramid[2])]
        boxes = run_heads(self.BboxHead, features, 4)
        scores = F.softmax(run_heads(self.ClassHead, features, 2), dim=-1)
        return boxes, scores, run_heads(self.LandmarkHead, features, 10)


# --------------------------------------------------------------------------- weights


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released files were saved from DataParallel ("module." on every key)."""
    return {key[7:] if key.startswith("module.") else key: value for key, value in state.items()}


def config_for(state: Mapping[str, torch.Tensor]) -> RetinaConfig:
    """Which backbone a state dict holds, from its key names."""
    if "body.layer1.0.conv1.weight" in state:
        return RESNET50
    if "body.stage1.0.0.weight" in state:
        return MOBILENET
    sample = sorted(state)[:5]
    raise ValueError(f"not a RetinaFace state dict (no ResNet-50 or MobileNet body keys); first keys: {sample}")


def build_from_state_dict(state: Mapping[str, torch.Tensor]) -> RetinaFace:
    """A RetinaFace with exactly these weights (strict: a missing or extra key is an error)."""
    clean = strip_module_prefix(state)
    net = RetinaFace(config_for(clean))
    net.load_state_dict(clean, strict=True)
    return net.eval()
