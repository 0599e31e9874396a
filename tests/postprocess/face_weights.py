"""Random-weight face detector files laid out like facexlib's released RetinaFace weights.

The key names and shapes are written down here independently of the server's network (the
ResNet-50 body from torchvision, which facexlib wraps; FPN, SSH and heads from facexlib's
layout), so loading them proves the server's module matches the real files' layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _conv_bn(prefix: str, cin: int, cout: int, kernel: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}.0.weight": (cout, cin, kernel, kernel)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.1.{name}"] = (cout,)
    shapes[f"{prefix}.1.num_batches_tracked"] = ()
    return shapes


def resnet50_retinaface_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of detection_Resnet50_Final.pth (without its "module." prefix)."""
    import torchvision

    body = torchvision.models.resnet50(weights=None).state_dict()
    shapes = {f"body.{k}": tuple(v.shape) for k, v in body.items() if not k.startswith("fc.")}
    for i, cin in enumerate((512, 1024, 2048), start=1):
        shapes.update(_conv_bn(f"fpn.output{i}", cin, 256, 1))
    shapes.update(_conv_bn("fpn.merge1", 256, 256, 3))
    shapes.update(_conv_bn("fpn.merge2", 256, 256, 3))
    for level in (1, 2, 3):
        shapes.update(_conv_bn(f"ssh{level}.conv3X3", 256, 128, 3))
        shapes.update(_conv_bn(f"ssh{level}.conv5X5_1", 256, 64, 3))
        for name in ("conv5X5_2", "conv7X7_2", "conv7x7_3"):
            shapes.update(_conv_bn(f"ssh{level}.{name}", 64, 64, 3))
    for head, outputs in (("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)):
        for i in range(3):
            shapes[f"{head}.{i}.conv1x1.weight"] = (2 * outputs, 256, 1, 1)
            shapes[f"{head}.{i}.conv1x1.bias"] = (2 * outputs,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, prefix: str = "module.") -> dict[str, Any]:
    """Random tensors of those shapes (positive variances, integer counters)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(0, dtype=torch.long)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=gen) + 0.5
        else:
            value = torch.randn(shape, generator=gen) * 0.05
        state[prefix + key] = value
    return state


def write_detector(path: Path, seed: int = 0) -> Path:
    """A random RetinaFace-ResNet50 file (.pth with "module." keys, or .safetensors)."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = random_state(resnet50_retinaface_shapes(), seed)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def write_gfpgan(path: Path, seed: int = 0) -> Path:
    """A random-weight GFPGAN v1.4 (clean architecture) file, fp16 to halve its size."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(seed)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    state = {k: v.half().contiguous() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"params_ema": state}, path)
    return path


def write_faceless_detector(path: Path, seed: int = 0) -> Path:
    """A small random RetinaFace (MobileNet-0.25 layout) whose class heads always answer
    "background", so it finds no face anywhere: the restore path then leaves images as they were."""
    import torch

    from webui_api.postprocess.face_restore.retinaface import MOBILENET, RetinaFace

    torch.manual_seed(seed)
    state = RetinaFace(MOBILENET).state_dict()
    for i in range(3):
        state[f"ClassHead.{i}.conv1x1.weight"] = torch.zeros_like(state[f"ClassHead.{i}.conv1x1.weight"])
        state[f"ClassHead.{i}.conv1x1.bias"] = torch.tensor([20.0, -20.0, 20.0, -20.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_codeformer(path: Path, seed: int = 0) -> Path:
    """A random-weight CodeFormer file (needs the optional spandrel_extra_arches), fp16."""
    import torch
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(seed)
    state = {k: v.half().contiguous() if v.is_floating_point() else v for k, v in CodeFormer().state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state}, path)
    return path
