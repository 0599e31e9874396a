"""X/Y/Z cells run with the costliest axis outermost (A1111's rule), Z-Y-X by default."""

from __future__ import annotations

from webui_api.builtin_scripts.xyz_axes import find_axis
from webui_api.builtin_scripts.xyz_plot import PlotAxis, processing_order


def plot_axis(label: str, count: int) -> PlotAxis:
    values = list(range(count))
    return PlotAxis(find_axis("txt2img", label, "X"), values, [str(v) for v in values], "")


def test_default_order_is_z_then_y_then_x():
    order = processing_order([plot_axis("Steps", 2), plot_axis("Seed", 2), plot_axis("Nothing", 1)])
    assert order == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]


def test_a_checkpoint_axis_on_x_goes_outermost():
    order = processing_order([plot_axis("Checkpoint name", 2), plot_axis("Seed", 2), plot_axis("Steps", 1)])
    assert order[:2] == [(0, 0, 0), (0, 1, 0)]  # every Y value for the first checkpoint first
    assert [x for x, _, _ in order] == [0, 0, 1, 1]


def test_vae_on_y_outer_and_unipc_order_on_z_second():
    order = processing_order([plot_axis("Steps", 2), plot_axis("VAE", 2), plot_axis("UniPC Order", 2)])
    assert order[:4] == [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1)]  # y outer, then z, then x
