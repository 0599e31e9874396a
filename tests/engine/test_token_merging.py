"""Token merging (ToMe) on the CPU: the bipartite merge on toy tensors, the UNet patch on tiny
SD1 / SDXL networks (on/off, restore, which blocks merge), and tomesd as a reference when it
is installed (A1111 runs tomesd with use_rand=False; our merge must give its numbers)."""

from __future__ import annotations

import pytest
import torch

from tests.engine.ldm_checkpoints import build_networks
from webui_api.engine.token_merging import (
    MergeSettings,
    apply_token_merging,
    bipartite_merge,
    destination_positions,
    token_merging,
    transformer_blocks,
)


@pytest.fixture(scope="module")
def sd1_unet():
    return build_networks("sd1", seed=3).unet


def unet_inputs(batch: int = 2, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, size, size, generator=generator)
    context = torch.randn(batch, 77, 64, generator=generator)
    return sample, torch.full((batch,), 500), context


def run_unet(unet, inputs) -> torch.Tensor:
    sample, timestep, context = inputs
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=context).sample


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# -- the merge itself ---------------------------------------------------------------------


def test_destinations_are_the_top_left_of_each_whole_cell():
    assert destination_positions(4, 4, 2, 2, torch.device("cpu")).tolist() == [0, 2, 8, 10]
    # 5 x 3: the last column and the last row are sources only
    assert destination_positions(5, 3, 2, 2, torch.device("cpu")).tolist() == [0, 2]


@pytest.mark.parametrize(("width", "height", "r"), [(8, 8, 32), (8, 8, 5), (7, 5, 17), (16, 12, 96)])
def test_merge_removes_r_tokens_and_unmerge_restores_the_shape(width, height, r):
    x = torch.randn(3, width * height, 6)
    merge = bipartite_merge(x, width, height, r)
    assert merge is not None
    merged = merge.merge(x)
    assert merged.shape == (3, width * height - r, 6)
    assert merge.unmerge(merged).shape == x.shape


def test_r_is_capped_at_the_number_of_sources():
    x = torch.randn(1, 64, 4)
    merge = bipartite_merge(x, 8, 8, 1000)
    assert merge is not None and merge.merged_length == 16  # only the 16 destinations are left


def test_nothing_to_merge_is_no_merge():
    x = torch.randn(1, 64, 4)
    assert bipartite_merge(x, 8, 8, 0) is None
    assert bipartite_merge(torch.randn(1, 1, 4), 1, 1, 1) is None  # no whole 2x2 cell


def test_identical_tokens_merge_without_loss():
    """Every 2x2 cell holds four copies of one token: merging any of them loses nothing."""
    cells = torch.randn(2, 4, 4, 5)  # (batch, cell rows, cell cols, channels)
    grid = cells.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (2, 8, 8, 5)
    x = grid.reshape(2, 64, 5)
    merge = bipartite_merge(x, 8, 8, 48)
    assert merge is not None and merge.merged_length == 16
    torch.testing.assert_close(merge.unmerge(merge.merge(x)), x)


def test_kept_tokens_pass_through_and_destinations_average_their_sources():
    torch.manual_seed(1)
    x = torch.randn(1, 64, 8)
    merge = bipartite_merge(x, 8, 8, 10)
    assert merge is not None
    round_trip = merge.unmerge(merge.merge(x))
    kept = merge.src[merge.kept[0]]
    torch.testing.assert_close(round_trip[0, kept], x[0, kept])
    moved, targets = merge.src[merge.moved[0]], merge.dst[merge.targets[0]]
    for destination in targets.unique():
        group = torch.cat([destination[None], moved[targets == destination]])
        expected = x[0, group].mean(dim=0)
        torch.testing.assert_close(round_trip[0, destination], expected)
        torch.testing.assert_close(round_trip[0, group], expected.expand(len(group), -1))


def test_each_row_merges_on_its_own_tokens():
    """Batch-safe: a row's merge is the one it gets alone (cond/uncond, jobs sharing a batch)."""
    x = torch.randn(4, 64, 8)
    together = bipartite_merge(x, 8, 8, 20)
    assert together is not None
    for row in range(4):
        alone = bipartite_merge(x[row : row + 1], 8, 8, 20)
        assert alone is not None
        one = x[row : row + 1]
        torch.testing.assert_close(together.merge(x)[row], alone.merge(one)[0])
        torch.testing.assert_close(together.unmerge(together.merge(x))[row], alone.unmerge(alone.merge(one))[0])


def test_a_zero_row_stays_finite():
    x = torch.randn(2, 64, 8)
    x[1] = 0
    merge = bipartite_merge(x, 8, 8, 20)
    assert merge is not None and torch.isfinite(merge.unmerge(merge.merge(x))).all()


# -- the UNet patch -----------------------------------------------------------------------


def test_ratio_zero_installs_nothing_and_is_bit_identical(sd1_unet):
    inputs = unet_inputs()
    before, hooks = run_unet(sd1_unet, inputs), hook_count(sd1_unet)
    with token_merging(sd1_unet, 0.0) as patch:
        assert patch.handles == [] and hook_count(sd1_unet) == hooks
        during = run_unet(sd1_unet, inputs)
    assert torch.equal(before, during)


def test_half_ratio_changes_the_output_but_stays_close_and_finite(sd1_unet):
    inputs = unet_inputs()
    plain = run_unet(sd1_unet, inputs)
    with token_merging(sd1_unet, 0.5):
        merged = run_unet(sd1_unet, inputs)
    assert torch.isfinite(merged).all()
    assert not torch.equal(plain, merged)
    relative = (merged - plain).norm() / plain.norm()
    assert 0 < relative < 0.5, relative


def test_restore_leaves_the_model_as_it_was(sd1_unet):
    inputs = unet_inputs()
    weights = {name: tensor.clone() for name, tensor in sd1_unet.state_dict().items()}
    before, hooks = run_unet(sd1_unet, inputs), hook_count(sd1_unet)
    patch = apply_token_merging(sd1_unet, MergeSettings(0.5))
    assert hook_count(sd1_unet) > hooks
    patch.restore()
    assert hook_count(sd1_unet) == hooks
    assert torch.equal(run_unet(sd1_unet, inputs), before)
    state = sd1_unet.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)


def test_restored_even_when_the_run_fails(sd1_unet):
    hooks = hook_count(sd1_unet)
    with pytest.raises(RuntimeError, match="sampler broke"), token_merging(sd1_unet, 0.5):
        raise RuntimeError("sampler broke")
    assert hook_count(sd1_unet) == hooks


def self_attention_lengths(unet, inputs, ratio: float) -> dict[str, int]:
    """The token count each block's attn1 saw in one UNet call (recorded after the merge:
    hooks run in the order they were added)."""
    seen: dict[str, int] = {}

    def recorder(name: str):
        def record(_module, args, kwargs) -> None:
            seen[name] = (args[0] if args else kwargs["hidden_states"]).shape[1]

        return record

    blocks = transformer_blocks(unet)
    with token_merging(unet, ratio):
        handles = [module.attn1.register_forward_pre_hook(recorder(name), with_kwargs=True)
                   for name, module in unet.named_modules() if module in blocks]
        try:
            run_unet(unet, inputs)
        finally:
            for handle in handles:
                handle.remove()
    return seen


def test_only_full_resolution_blocks_merge(sd1_unet):
    """tomesd's max_downsample=1 (A1111): 16x16 latent = 256 tokens at full resolution,
    the 8x8 mid block keeps its 64."""
    lengths = self_attention_lengths(sd1_unet, unet_inputs(size=16), 0.5)
    full = {name: n for name, n in lengths.items() if not name.startswith("mid_block")}
    mid = {name: n for name, n in lengths.items() if name.startswith("mid_block")}
    assert full and set(full.values()) == {256 - 128}
    assert mid and set(mid.values()) == {64}


def test_sdxl_has_no_full_resolution_attention_so_nothing_changes():
    """SDXL's first level has no transformer blocks: at A1111's max_downsample=1 ToMe is a no-op."""
    nets = build_networks("sdxl", seed=2)
    unet = nets.unet
    sample = torch.randn(1, 4, 16, 16)
    kwargs = {
        "encoder_hidden_states": torch.randn(1, 77, unet.config.cross_attention_dim),
        "added_cond_kwargs": {"text_embeds": torch.randn(1, 64), "time_ids": torch.randn(1, 6)},
    }
    with torch.no_grad():
        plain = unet(sample, torch.tensor([500]), **kwargs).sample
        with token_merging(unet, 0.5) as patch:
            assert patch.blocks > 0  # its lower levels have blocks; none runs at full resolution
            merged = unet(sample, torch.tensor([500]), **kwargs).sample
    assert torch.equal(plain, merged)


# -- tomesd as the reference (A1111 runs it) ------------------------------------------------


def test_merge_gives_tomesds_numbers():
    tomesd_merge = pytest.importorskip("tomesd.merge")
    torch.manual_seed(0)
    for width, height in ((8, 8), (7, 5), (16, 12)):
        x = torch.randn(3, width * height, 16)
        r = int(width * height * 0.5)
        reference_merge, reference_unmerge = tomesd_merge.bipartite_soft_matching_random2d(
            x, width, height, 2, 2, r, no_rand=True)
        ours = bipartite_merge(x, width, height, r)
        assert ours is not None
        torch.testing.assert_close(ours.unmerge(ours.merge(x)), reference_unmerge(reference_merge(x)),
                                   rtol=0, atol=0)


def test_unet_output_matches_tomesds_patch(sd1_unet):
    tomesd = pytest.importorskip("tomesd")
    inputs = unet_inputs()
    tomesd.apply_patch(sd1_unet, ratio=0.5, use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False)
    try:
        reference = run_unet(sd1_unet, inputs)
    finally:
        tomesd.remove_patch(sd1_unet)
    with token_merging(sd1_unet, 0.5):
        ours = run_unet(sd1_unet, inputs)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


# -- --compile -------------------------------------------------------------------------------


def test_a_merged_pass_pauses_the_compiled_call_and_restores_it(sd1_unet):
    """The decision alone, without compiling: the compiled call is out of the way while a
    merged pass runs (even one that fails) and back afterwards; ratio 0 leaves it alone."""
    from webui_api.engine.compile import is_compiled

    def compiled_call(*_args, **_kwargs):
        raise AssertionError("the compiled call must not run while tokens are merged")

    sd1_unet._compiled_call_impl = compiled_call
    try:
        with token_merging(sd1_unet, 0.0):
            assert sd1_unet._compiled_call_impl is compiled_call
        with pytest.raises(RuntimeError, match="boom"), token_merging(sd1_unet, 0.5):
            assert not is_compiled(sd1_unet)
            run_unet(sd1_unet, unet_inputs())
            raise RuntimeError("boom")
        assert sd1_unet._compiled_call_impl is compiled_call
    finally:
        sd1_unet._compiled_call_impl = None


@pytest.mark.slow
def test_a_compiled_unet_merges_eagerly_and_gets_its_compiled_call_back():
    """torch.compile does not guard on hooks added after compiling, so a compiled UNet would
    run unmerged; the pass runs it uncompiled instead (the "eager" backend traces like inductor)."""
    from webui_api.engine.compile import is_compiled

    unet = build_networks("sd1", seed=3).unet
    inputs = unet_inputs()
    plain = run_unet(unet, inputs)
    with token_merging(unet, 0.5):
        eager_merged = run_unet(unet, inputs)
    unet.compile(backend="eager", dynamic=False)
    assert torch.equal(run_unet(unet, inputs), plain)
    with token_merging(unet, 0.5):
        assert not is_compiled(unet)
        compiled_merged = run_unet(unet, inputs)
    assert is_compiled(unet)
    assert torch.equal(compiled_merged, eager_merged)
    assert torch.equal(run_unet(unet, inputs), plain)
