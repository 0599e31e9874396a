"""A1111's "X/Y/Z plot": one generation per combination of axis values, drawn as grids.

script_args (18, in A1111's order): x_type, x_values, x_values_dropdown, y_type, y_values,
y_values_dropdown, z_type, z_values, z_values_dropdown, draw_legend, include_lone_images,
include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size,
csv_mode. Types are indexes into the tab's axis list (xyz_axes.axes_for); values are text
(ranges, CSV) or, for axes with choices and csv_mode off, the dropdown list.

Response images, as A1111 orders them: the main grid (all Z slices side by side), then one
sub-grid per Z value when include_sub_grids, then every cell's first image when
include_lone_images (cell index = ix + iy * nx + iz * nx * ny). Grids carry infotext only in
`info` (with "Script: X/Y/Z plot", "X Type", "X Values", ...), cells their own infotext.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any, TypeGuard

from PIL import Image

from ..errors import ValidationFailed
from ..jobs import GenerationJob
from . import grid_draw
from .args import ArgSpec, bind, read_bool, read_int, read_int_or_str, read_str, read_str_list
from .base import (
    JobOutcome,
    OutputImage,
    ScriptContext,
    ScriptOutput,
    ScriptRun,
    ScriptWorker,
    base_info,
    build_job,
    progress_units,
    revalidated,
    with_extra_params,
)
from .xyz_axes import Axis, CellEdit, axes_for, axis_values, check_values, find_axis, format_value, to_csv

TITLE = "x/y/z plot"
INFOTEXT_TITLE = "X/Y/Z plot"  # A1111 writes its title() into "Script"
MAX_CELLS = 4096
MAX_MARGIN = 500  # A1111's slider range
SEED_AXES = ("Seed", "Var. seed")
MAX_SEED = 4294967294


def arg_specs(ctx: ScriptContext | None = None) -> list[ArgSpec]:
    labels = tuple(axis.label for axis in axes_for(ctx.tab if ctx is not None else "txt2img"))
    specs = []
    for name, default in (("X", labels[1]), ("Y", labels[0]), ("Z", labels[0])):
        specs += [
            ArgSpec(f"{name} type", default, read_int_or_str, choices=labels),
            ArgSpec(f"{name} values", "", read_str),
            ArgSpec(f"{name} values", (), read_str_list),
        ]
    return specs + [
        ArgSpec("Draw legend", True, read_bool),
        ArgSpec("Include Sub Images", False, read_bool),
        ArgSpec("Include Sub Grids", False, read_bool),
        ArgSpec("Keep -1 for seeds", False, read_bool),
        ArgSpec("Vary seeds for X", False, read_bool),
        ArgSpec("Vary seeds for Y", False, read_bool),
        ArgSpec("Vary seeds for Z", False, read_bool),
        ArgSpec("Grid margins (px)", 0, read_int, minimum=0, maximum=500, step=2),
        ArgSpec("Use text inputs instead of dropdowns", False, read_bool),
    ]


@dataclass(frozen=True)
class PlotAxis:
    """One axis, resolved: its type, values, legend labels and the "X Values" infotext text."""

    axis: Axis
    values: list[Any]
    labels: list[str]
    text: str

    @property
    def is_nothing(self) -> bool:
        return self.axis.label == "Nothing"


@dataclass(frozen=True)
class Flags:
    draw_legend: bool
    include_lone_images: bool
    include_sub_grids: bool
    no_fixed_seeds: bool
    vary_seeds: tuple[bool, bool, bool]
    margin: int
    csv_mode: bool


@dataclass(frozen=True)
class PlotCell:
    index: int  # ix + iy * nx + iz * nx * ny
    job: GenerationJob


@dataclass(frozen=True)
class Plot:
    axes: tuple[PlotAxis, PlotAxis, PlotAxis]
    flags: Flags
    cells: list[PlotCell]  # in processing order (slow axes outermost)
    request: Any  # the base request (seeds fixed)
    background: str


# --------------------------------------------------------------------------- planning


def plan(request: Any, ctx: ScriptContext) -> ScriptRun:
    values = bind(TITLE, arg_specs(ctx), request.script_args)
    vary_seeds = (values[13], values[14], values[15])
    flags = Flags(values[9], values[10], values[11], values[12], vary_seeds, values[16], values[17])
    if not 0 <= flags.margin <= MAX_MARGIN:
        raise ValidationFailed(f"{TITLE}: grid margins must be between 0 and {MAX_MARGIN} px; received {flags.margin}")
    x, y, z = (_plot_axis(ctx, name, values[3 * i:3 * i + 3], flags) for i, name in enumerate("XYZ"))
    axes = (x, y, z)
    base = _base_request(request, flags, ctx)
    _check_size(axes, base, ctx)
    cells = [_cell(base, ctx, axes, flags, index) for index in processing_order(axes)]
    plot = Plot(axes, flags, cells, base, str(ctx.options.get("grid_background_color") or "#ffffff"))
    return ScriptRun(
        job_count=sum(progress_units(cell.job) for cell in cells),
        execute=lambda worker: _execute(worker, plot),
        first_job=cells[0].job,
        jobs=tuple(cell.job for cell in cells),
    )


def _plot_axis(ctx: ScriptContext, name: str, args: Sequence[Any], flags: Flags) -> PlotAxis:
    choice, text, dropdown = args
    axis = find_axis(ctx.tab, choice, name)
    use_dropdown = axis.choices is not None and not flags.csv_mode and bool(dropdown)
    text = to_csv(dropdown) if use_dropdown else text
    values = axis_values(axis, text, dropdown, flags.csv_mode, ctx)
    check_values(axis, values, ctx)
    if axis.label in SEED_AXES and not flags.no_fixed_seeds:
        values = [ctx.rng.randrange(MAX_SEED) if value == -1 else value for value in values]
    return PlotAxis(axis, values, [format_value(axis, value) for value in values], text)


def _base_request(request: Any, flags: Flags, ctx: ScriptContext) -> Any:
    """A1111's fix_seed (unless "Keep -1 for seeds") and batch_size 1 when grids are not
    returned (option return_grid)."""
    from ..job_builder import resolve_seed

    updates: dict[str, Any] = {}
    if not flags.no_fixed_seeds:
        updates.update(seed=resolve_seed(request.seed, ctx.rng), subseed=resolve_seed(request.subseed, ctx.rng))
    if not ctx.options.get("return_grid", True):
        updates["batch_size"] = 1
    return request.model_copy(update=updates)


def _check_size(axes: Sequence[PlotAxis], request: Any, ctx: ScriptContext) -> None:
    count = len(axes[0].values) * len(axes[1].values) * len(axes[2].values)
    if count > MAX_CELLS:
        raise ValidationFailed(f"{TITLE}: {count} cells; at most {MAX_CELLS} are accepted per request")
    megapixels = round(count * request.width * request.height / 1_000_000)
    limit = ctx.options.get("img_max_size_mp", 200)
    if megapixels >= limit:
        raise ValidationFailed(
            f"{TITLE}: the grid would be {megapixels} megapixels; the limit is {limit} (option img_max_size_mp)"
        )


def processing_order(axes: Sequence[PlotAxis]) -> list[tuple[int, int, int]]:
    """Cell (ix, iy, iz) triples with the costliest axis outermost (A1111's rule: a strictly
    costliest axis goes first, then the costlier of the others; by default Z, then Y, then X)."""
    costs = {name: axis.axis.cost for name, axis in zip("xyz", axes, strict=True)}
    first, second = _outer_axes(costs)
    third = next(n for n in "xyz" if n not in (first, second))
    order = (first, second, third)
    sizes = {name: len(axis.values) for name, axis in zip("xyz", axes, strict=True)}
    triples = []
    for combo in product(*(range(sizes[name]) for name in order)):
        where = dict(zip(order, combo, strict=True))
        triples.append((where["x"], where["y"], where["z"]))
    return triples


def _outer_axes(costs: dict[str, float]) -> tuple[str, str]:
    for name, (a, b) in {"x": ("y", "z"), "y": ("x", "z"), "z": ("x", "y")}.items():
        if costs[name] > costs[a] and costs[name] > costs[b]:
            return name, (a if costs[a] > costs[b] else b)
    return "z", "y"


def _cell(
    base: Any, ctx: ScriptContext, axes: Sequence[PlotAxis], flags: Flags, where: tuple[int, int, int]
) -> PlotCell:
    edit = CellEdit(base)
    for plot_axis, i in zip(axes, where, strict=True):
        apply = plot_axis.axis.apply
        assert apply is not None  # find_axis refuses the axis types this server does not support
        apply(edit, plot_axis.values[i], plot_axis.values, ctx)
    edit.fields["seed"] = _cell_seed(edit, axes, flags, where)
    styles = ctx.styles
    if edit.styles:
        edit.fields["styles"] = [*(base.styles or []), *edit.styles]
        styles = ctx.all_styles()
    options = {**ctx.options, **edit.options}
    job = build_job(ctx.tab, revalidated(base, edit.fields, TITLE), options, styles, ctx.rng, guard=ctx.admit)
    nx, ny = len(axes[0].values), len(axes[1].values)
    return PlotCell(where[0] + where[1] * nx + where[2] * nx * ny, job)


def _cell_seed(edit: CellEdit, axes: Sequence[PlotAxis], flags: Flags, where: tuple[int, int, int]) -> Any:
    """"Vary seeds for X/Y/Z": the seed moves by the cell's position along those axes."""
    seed = edit.current("seed")
    if not any(flags.vary_seeds):
        return seed
    seed = -1 if seed in (None, "") else int(seed)
    step = 1
    for vary, plot_axis, i in zip(flags.vary_seeds, axes, where, strict=True):
        if vary:
            seed += i * step
            step *= len(plot_axis.values)
    return seed


# --------------------------------------------------------------------------- running


def _execute(worker: ScriptWorker, plot: Plot) -> ScriptOutput:
    outcomes: dict[int, JobOutcome] = {}
    for cell in plot.cells:  # an interrupt leaves the remaining cells black (the first always runs)
        outcomes[cell.index] = worker.run(cell.job)
        if worker.interrupted:
            break
    count = len(plot.axes[0].values) * len(plot.axes[1].values) * len(plot.axes[2].values)
    cells = [_cell_image(outcomes.get(index), plot) for index in range(count)]
    texts = [outcomes[index].infotexts()[0] if _has_image(outcomes.get(index)) else "" for index in range(count)]
    grids, grid_texts = _grids(plot, cells, outcomes)
    return _assemble(plot, grids, grid_texts, cells, texts, outcomes)


def _has_image(outcome: JobOutcome | None) -> TypeGuard[JobOutcome]:
    return outcome is not None and bool(outcome.result.images)


def _cell_image(outcome: JobOutcome | None, plot: Plot) -> Image.Image:
    """The cell's first image; a black one of the job size for a cell that did not run."""
    if _has_image(outcome):
        return outcome.result.images[0].image
    first = plot.cells[0].job
    return Image.new("RGB", (first.width, first.height))


def _grids(
    plot: Plot, cells: list[Image.Image], outcomes: dict[int, JobOutcome]
) -> tuple[list[Image.Image], list[str]]:
    """Main grid then one sub-grid per Z value, and their infotexts."""
    x, y, z = plot.axes
    per_z = len(x.values) * len(y.values)
    subs = []
    for iz in range(len(z.values)):
        images = cells[iz * per_z:(iz + 1) * per_z]
        grid = grid_draw.paste_grid(images, len(y.values), plot.background)
        if plot.flags.draw_legend:
            grid = grid_draw.annotate(
                grid, grid_draw.cell_size(images), x.labels, y.labels, plot.flags.margin, plot.background
            )
        subs.append(grid)
    main = grid_draw.paste_grid(subs, 1, plot.background)
    if plot.flags.draw_legend:
        main = grid_draw.annotate(main, grid_draw.cell_size(subs), z.labels, [""], 0, plot.background)
    sub_texts = [_grid_infotext(plot, outcomes.get(iz * per_z), with_z=False) for iz in range(len(z.values))]
    return [main, *subs], [_grid_infotext(plot, outcomes.get(0), with_z=True), *sub_texts]


def _grid_infotext(plot: Plot, outcome: JobOutcome | None, with_z: bool) -> str:
    """The first cell's infotext plus Script and the axes' types and values (A1111 adds Z only
    to the main grid's)."""
    if not _has_image(outcome):
        return ""
    keys: dict[str, Any] = {"Script": INFOTEXT_TITLE}
    for name, plot_axis in zip("XYZ", plot.axes, strict=True):
        if plot_axis.is_nothing or (name == "Z" and not with_z):
            continue
        keys[f"{name} Type"] = plot_axis.axis.label
        keys[f"{name} Values"] = plot_axis.text
        if plot_axis.axis.label in SEED_AXES and not plot.flags.no_fixed_seeds:
            keys[f"Fixed {name} Values"] = ", ".join(str(value) for value in plot_axis.values)
    return with_extra_params(outcome, keys).infotexts()[0]


def _cell_output(image: Image.Image, text: str, outcome: JobOutcome | None) -> OutputImage:
    if not _has_image(outcome):
        return OutputImage(image, text)
    done = outcome.result.images[0]
    return OutputImage(image, text, seed=done.seed, prompt=done.prompt)


def _assemble(
    plot: Plot, grids: list[Image.Image], grid_texts: list[str], cells: list[Image.Image], texts: list[str],
    outcomes: dict[int, JobOutcome],
) -> ScriptOutput:
    """A1111's final list: main grid, sub-grids if asked, cells if asked."""
    first = outcomes[plot.cells[0].index]
    ran = [outcomes.get(index) for index in range(len(cells))]
    name = first.result.images[0] if _has_image(first) else None
    seed, prompt = (name.seed, name.prompt) if name is not None else (None, "")
    images = [OutputImage(grids[0], grid_texts[0], embed=False, grid=True, seed=seed, prompt=prompt)]
    if plot.flags.include_sub_grids:
        images += [
            OutputImage(g, text, embed=False, grid=True, seed=seed, prompt=prompt)
            for g, text in zip(grids[1:], grid_texts[1:], strict=True)
        ]
    if plot.flags.include_lone_images:
        images += [_cell_output(image, text, o) for image, text, o in zip(cells, texts, ran, strict=True)]
    info = base_info(first, plot.request, [image.infotext for image in images], index_of_first_image=1)
    info["all_prompts"] = [o.result.images[0].prompt if _has_image(o) else None for o in ran]
    info["all_seeds"] = [o.result.images[0].seed if _has_image(o) else None for o in ran]
    return ScriptOutput(images, info)
