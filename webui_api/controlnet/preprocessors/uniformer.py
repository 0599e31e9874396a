"""seg_ufade20k: UniFormer-S + UPerNet semantic segmentation (ADE20K, 150 classes), in plain torch.

The extension runs this network through a vendored copy of mmcv/mmseg; we rebuild the same
architecture (UniFormer-S "global": conv blocks in stages 1-2, self-attention in 3-4; a UPerNet
head with a pyramid pooling module) with the attribute names of the original checkpoint
`uniformer/upernet_global_small.pth`, whose `state_dict` then loads without any key mapping
(`auxiliary_head.*`, used only in training, is skipped).

The inference matches the extension's: mean/std normalisation after swapping the channel order
(its pipeline treats the RGB array as BGR), logits resized bilinearly to the input, argmax,
and each class painted with the ADE20K palette.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIMS = (64, 128, 320, 512)
DEPTHS = (3, 4, 8, 3)
HEAD_DIM = 64
HEAD_CHANNELS = 512
POOL_SCALES = (1, 2, 3, 6)
NUM_CLASSES = 150
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)

# The ADE20K palette of mmseg (RGB per class, 150 classes) as hex: a ControlNet seg model reads
# classes by these exact colours, so the map must use them.
_ADE20K_HEX = (
    "787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d78784608ff33ff0652"
    "8fff8cccff04ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdcff095c7009ff08ffd607ffe0"
    "ffb8060aff47ff290a07ffffe0ff086608ffff3d06ffc207ff7a0800ff14ff0829ff05990633ffeb0cffa0961400a3ff"
    "8c8c8cfa0a0f14ff001fff00ff1f00ffe00099ff000000ffff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff"
    "00ff7000ff85ff0000ffa300ff6600c2ff00008fff33ff000052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ff"
    "ff00f5ff0066ffad00ff0014ffb8b8001fff00ff3d0047ffff00cc00ffc200ff52000aff0070ff3300ff00c2ff007aff"
    "00ffa3ff990000ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ffff001f00b8ff00d6ffff0070"
    "5cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ffff007afff500"
    "0abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff4700ff7a00ff00ffb8005cff"
    "b8ff000085ffffd60019c2c266ff005c00ff"
)
ADE20K_PALETTE = np.frombuffer(bytes.fromhex(_ADE20K_HEX), dtype=np.uint8).reshape(NUM_CLASSES, 3)


class ConvMlp(nn.Module):
    """Pointwise two-layer MLP on (B, C, H, W) maps (conv blocks)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TokenMlp(nn.Module):
    """Two-layer MLP on (B, N, C) tokens (attention blocks)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvBlock(nn.Module):
    """UniFormer's local block: depthwise positional conv, then a 5x5 depthwise "attention" and an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (the "global" variant: no windows)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_heads = dim // HEAD_DIM
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class AttentionBlock(nn.Module):
    """UniFormer's global block: depthwise positional conv, then pre-norm attention and MLP on tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = TokenMlp(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class PatchEmbed(nn.Module):
    """Strided conv downsampling followed by a LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=stride, stride=stride)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_norm(self.norm, self.proj(x))


def channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply a LayerNorm to the channels of a (B, C, H, W) map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class UniFormer(nn.Module):
    """The backbone: four stages at strides 4, 8, 16, 32, each feature map LayerNorm-ed on output."""

    def __init__(self) -> None:
        super().__init__()
        in_dims = (3, *EMBED_DIMS[:-1])
        for stage, (dim, depth) in enumerate(zip(EMBED_DIMS, DEPTHS, strict=True), start=1):
            block = ConvBlock if stage <= 2 else AttentionBlock
            setattr(self, f"patch_embed{stage}", PatchEmbed(in_dims[stage - 1], dim, 4 if stage == 1 else 2))
            setattr(self, f"blocks{stage}", nn.ModuleList(block(dim) for _ in range(depth)))
            setattr(self, f"norm{stage}", nn.LayerNorm(dim, eps=1e-6))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in range(1, 5):
            x = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"blocks{stage}"):
                x = block(x)
            features.append(channel_norm(getattr(self, f"norm{stage}"), x))
        return features


class ConvBnRelu(nn.Module):
    """mmcv's ConvModule with BN: bias-free conv, batch norm, ReLU (keys `conv.*`, `bn.*`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _upsample(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UperHead(nn.Module):
    """UPerNet: a pyramid pooling module on the last stage, an FPN over all four, one fused classifier."""

    def __init__(self) -> None:
        super().__init__()
        top = EMBED_DIMS[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBnRelu(top, HEAD_CHANNELS, 1)) for scale in POOL_SCALES
        )
        self.bottleneck = ConvBnRelu(top + len(POOL_SCALES) * HEAD_CHANNELS, HEAD_CHANNELS, 3)
        self.lateral_convs = nn.ModuleList(ConvBnRelu(dim, HEAD_CHANNELS, 1) for dim in EMBED_DIMS[:-1])
        self.fpn_convs = nn.ModuleList(ConvBnRelu(HEAD_CHANNELS, HEAD_CHANNELS, 3) for _ in EMBED_DIMS[:-1])
        self.fpn_bottleneck = ConvBnRelu(len(EMBED_DIMS) * HEAD_CHANNELS, HEAD_CHANNELS, 3)
        self.conv_seg = nn.Conv2d(HEAD_CHANNELS, NUM_CLASSES, 1)

    def _pyramid(self, top: torch.Tensor) -> torch.Tensor:
        pooled = [_upsample(module(top), top.shape[2:]) for module in self.psp_modules]
        return self.bottleneck(torch.cat([top, *pooled], dim=1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1], strict=True)] + [
            self._pyramid(features[-1])
        ]
        for level in range(len(laterals) - 1, 0, -1):
            laterals[level - 1] = laterals[level - 1] + _upsample(laterals[level], laterals[level - 1].shape[2:])
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = torch.cat([outs[0], *(_upsample(o, size) for o in outs[1:])], dim=1)
        return self.conv_seg(self.fpn_bottleneck(fused))


class UperNetUniFormer(nn.Module):
    """The segmentor: `backbone` + `decode_head`, logits at the input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = UniFormer()
        self.decode_head = UperHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample(self.decode_head(self.backbone(x)), x.shape[2:])

    def load_checkpoint(self, checkpoint: dict) -> None:
        """Load an mmseg checkpoint (`{"meta", "state_dict"}` or a bare state dict), strictly,
        ignoring the training-only auxiliary head."""
        state = checkpoint.get("state_dict", checkpoint)
        kept = {k: v for k, v in state.items() if not k.startswith("auxiliary_head.")}
        self.load_state_dict(kept, strict=True)


def segment(network: UperNetUniFormer, pixels: np.ndarray) -> np.ndarray:
    """Class index per pixel (H, W) for an (H, W, 3) uint8 RGB array, as the extension computes it:
    mmseg's test resize (fit in 2048x512), logits resized back to (H, W), argmax."""
    height, width = pixels.shape[:2]
    x = torch.from_numpy(_test_resize(pixels)[:, :, ::-1].copy()).float()  # its pipeline swaps the channels
    x = (x - torch.tensor(MEAN)) / torch.tensor(STD)
    with torch.inference_mode():
        logits = _upsample(network(x.permute(2, 0, 1).unsqueeze(0)), (height, width))
    return logits.argmax(dim=1)[0].numpy()


def _test_resize(pixels: np.ndarray) -> np.ndarray:
    """mmseg's keep-ratio resize to fit a 2048 long / 512 short edge box (bilinear; identity at 512)."""
    import cv2

    height, width = pixels.shape[:2]
    scale = min(2048 / max(height, width), 512 / min(height, width))
    size = (int(width * scale + 0.5), int(height * scale + 0.5))
    if size == (width, height):
        return pixels
    return cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
