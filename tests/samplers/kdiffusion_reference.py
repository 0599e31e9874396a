"""Load k-diffusion's ``sampling.py`` as a reference without running its package ``__init__``.

The k-diffusion package (installed by the ``test`` extra) imports training and evaluation
dependencies (clean-fid, CLIP, torchvision, wandb) from its ``__init__`` and ``utils``. The
samplers need none of them: ``sampling.py`` imports scipy, torchsde, torchdiffeq, tqdm and one
helper from ``utils`` (``append_dims``). So the file is loaded under a private package name
whose ``utils`` submodule provides just that helper, written out here.
(k-diffusion 0.1.1.post1's sampling.py is byte-identical to the commit A1111 v1.10.1 pins.)
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

PACKAGE = "_kdiffusion_reference"


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """k_diffusion.utils.append_dims: add trailing singleton dimensions up to target_dims."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


def sampling_path() -> Path | None:
    """Where the installed k_diffusion/sampling.py is, without importing the package."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    return path if path.is_file() else None


def load_sampling() -> types.ModuleType:
    """k-diffusion's sampling module, loaded once per process under a private package name."""
    name = f"{PACKAGE}.sampling"
    if name in sys.modules:
        return sys.modules[name]
    path = sampling_path()
    if path is None:
        raise ModuleNotFoundError("k-diffusion is not installed (pip install '.[test]')")
    package = types.ModuleType(PACKAGE)
    package.__path__ = []
    utils = types.ModuleType(f"{PACKAGE}.utils")
    utils.append_dims = append_dims
    package.utils = utils
    sys.modules[PACKAGE], sys.modules[utils.__name__] = package, utils
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
