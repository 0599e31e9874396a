"""Random-weight upscaler files that spandrel recognises, written for tests."""

from __future__ import annotations

from pathlib import Path


def write_esrgan(path: Path, scale: int = 4, filters: int = 4) -> Path:
    """A one-block ESRGAN (RRDBNet, old-arch keys) with random weights, as .pth or .safetensors."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(scale)
    state = {k: v.contiguous() for k, v in ESRGAN(num_filters=filters, num_blocks=1, scale=scale).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
