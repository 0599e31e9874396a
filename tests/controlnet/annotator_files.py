"""Random-weight annotator files with the real architectures and key layouts, for the loader tests.

Each writer builds the network the way the original checkpoint was saved (prefixes, wrapping
dicts) so that the production loader reads it exactly as it would read the downloaded file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _save(state: Any, annotator_dir: Path, folder: str, filename: str) -> Path:
    path = annotator_dir / folder / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _seeded_state(build: Callable[[], torch.nn.Module], seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build().state_dict()


def write_hed(annotator_dir: Path) -> Path:
    from controlnet_aux.hed import ControlNetHED_Apache2

    return _save(_seeded_state(ControlNetHED_Apache2), annotator_dir, "hed", "ControlNetHED.pth")


def write_pidinet(annotator_dir: Path) -> Path:
    from controlnet_aux.pidi.model import pidinet

    state = {"module." + k: v for k, v in _seeded_state(pidinet).items()}
    return _save({"state_dict": state}, annotator_dir, "pidinet", "table5_pidinet.pth")


def write_lineart(annotator_dir: Path, filename: str = "sk_model.pth") -> Path:
    from controlnet_aux.lineart import Generator

    return _save(_seeded_state(lambda: Generator(3, 1, 3)), annotator_dir, "lineart", filename)


def write_lineart_anime(annotator_dir: Path) -> Path:
    import functools

    from controlnet_aux.lineart_anime import UnetGenerator

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    state = _seeded_state(lambda: UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False))
    return _save({"module." + k: v for k, v in state.items()}, annotator_dir, "lineart_anime", "netG.pth")


def write_mlsd(annotator_dir: Path) -> Path:
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return _save(_seeded_state(MobileV2_MLSD_Large), annotator_dir, "mlsd", "mlsd_large_512_fp32.pth")


def write_midas(annotator_dir: Path) -> Path:
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    state = _seeded_state(lambda: DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True))
    return _save(state, annotator_dir, "midas", "dpt_hybrid-midas-501f0c75.pt")


def write_normal_bae(annotator_dir: Path) -> Path:
    import types

    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                 sampling_ratio=0.4, importance_ratio=0.7)
    state = {"module." + k: v for k, v in _seeded_state(lambda: NNET(args)).items()}
    return _save({"model": state}, annotator_dir, "normal_bae", "scannet.pt")


def write_openpose_body(annotator_dir: Path) -> Path:
    """The original file drops the first key component (the stage container) of every name."""
    from controlnet_aux.open_pose.model import bodypose_model

    state = {k.split(".", 1)[1]: v for k, v in _seeded_state(bodypose_model).items()}
    return _save(state, annotator_dir, "openpose", "body_pose_model.pth")


def write_uniformer(annotator_dir: Path) -> Path:
    """mmseg's checkpoint layout: {"meta", "state_dict"}, with the training-only auxiliary head."""
    from webui_api.controlnet.preprocessors.uniformer import UperNetUniFormer

    state = dict(_seeded_state(UperNetUniFormer))
    state["auxiliary_head.conv_seg.weight"] = torch.zeros(150, 256, 1, 1)
    meta = {"CLASSES": ("wall", "building"), "PALETTE": [[120, 120, 120], [180, 120, 120]]}
    return _save({"meta": meta, "state_dict": state}, annotator_dir, "uniformer", "upernet_global_small.pth")


def write_leres(annotator_dir: Path) -> Path:
    from controlnet_aux.leres.leres.multi_depth_model_woauxi import RelDepthModel

    state = {"module." + k: v for k, v in _seeded_state(lambda: RelDepthModel(backbone="resnext101")).items()}
    return _save({"depth_model": state}, annotator_dir, "leres", "res101.pth")


def write_zoe(annotator_dir: Path) -> Path:
    """Half precision to keep the file at ~700 MB; load_state_dict casts back to the network's float32."""
    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    state = _seeded_state(lambda: ZoeDepth.build_from_config(get_config("zoedepth", "infer")))
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return _save({"model": half}, annotator_dir, "zoedepth", "ZoeD_M12_N.pt")
