"""Our UniFormer-S + UPerNet: key names of the original checkpoint and the shape contract (fast, tiny inputs)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from webui_api.controlnet.preprocessors.uniformer import ADE20K_PALETTE, UperNetUniFormer  # noqa: E402


def test_state_dict_uses_the_mmseg_checkpoint_names():
    keys = set(UperNetUniFormer().state_dict())
    for expected in ("backbone.patch_embed1.proj.weight", "backbone.patch_embed1.norm.weight",
                     "backbone.blocks1.0.attn.weight", "backbone.blocks1.0.norm1.running_mean",
                     "backbone.blocks3.7.attn.qkv.bias", "backbone.blocks4.2.mlp.fc2.weight", "backbone.norm4.bias",
                     "decode_head.psp_modules.3.1.conv.weight", "decode_head.psp_modules.0.1.bn.running_var",
                     "decode_head.bottleneck.conv.weight", "decode_head.lateral_convs.2.bn.weight",
                     "decode_head.fpn_convs.0.conv.weight", "decode_head.fpn_bottleneck.conv.weight",
                     "decode_head.conv_seg.bias"):
        assert expected in keys, expected
    assert not any(".bias" in k and ".conv." in k for k in keys if k.startswith("decode_head"))  # ConvModule: no bias


def test_logits_come_back_at_the_input_size():
    torch.manual_seed(0)
    network = UperNetUniFormer().eval()
    with torch.inference_mode():
        logits = network(torch.randn(1, 3, 64, 96))
    assert logits.shape == (1, 150, 64, 96)


def test_checkpoint_loading_skips_the_auxiliary_head_and_is_strict_otherwise():
    network = UperNetUniFormer()
    state = dict(network.state_dict())
    network.load_checkpoint({"meta": {}, "state_dict": {**state, "auxiliary_head.conv_seg.weight": torch.zeros(1)}})
    del state["decode_head.conv_seg.weight"]
    with pytest.raises(RuntimeError):
        network.load_checkpoint(state)


def test_palette_is_ade20ks_150_colours():
    assert ADE20K_PALETTE.shape == (150, 3)
    assert ADE20K_PALETTE[0].tolist() == [120, 120, 120] and ADE20K_PALETTE[-1].tolist() == [92, 0, 255]
    assert len({tuple(c) for c in ADE20K_PALETTE}) == 149  # mmseg's table repeats (140, 140, 140) once
