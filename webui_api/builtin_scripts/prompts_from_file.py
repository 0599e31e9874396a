"""A1111's "Prompts from file or textbox": one generation per line of a text.

script_args: [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt].
A line is either a plain prompt or command-line style arguments
(`--prompt "a cat" --steps 10 --seed 5`) naming request fields from A1111's allowed list.
Each line's prompt is joined to the request's own prompt at the start or end
(`prompt_position`). Images of all lines are returned one after another, each with its own
infotext; no grid (A1111 sets do_not_save_grid).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationFailed
from ..jobs import GenerationJob
from .args import ArgSpec, bind, one_of, read_bool, read_str
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
)
from .checkpoints import closest_checkpoint

TITLE = "prompts from file or textbox"
MAX_SEED = 4294967294
MAX_LINES = 1000  # a sanity limit: each line is at least one queued generation


def arg_specs(ctx: ScriptContext | None = None) -> list[ArgSpec]:
    """A1111's four controls (the file upload only fills the textbox in the UI)."""
    return [
        ArgSpec("Iterate seed every line", False, read_bool),
        ArgSpec("Use same random seed for all lines", False, read_bool),
        ArgSpec("Insert prompts at the", "start", one_of(("start", "end")), choices=("start", "end")),
        ArgSpec("List of prompt inputs", "", read_str),
    ]


# Allowed `--key value` options and how their value is read (A1111's prompt_tags). Keys that
# name server paths (outpath_samples, outpath_grids) are accepted and ignored: a request must
# not choose where the server writes.
def _flag(value: str) -> bool:
    return value == "true"


LINE_KEYS: dict[str, Callable[[str], Any]] = {
    "sd_model": str, "outpath_samples": str, "outpath_grids": str, "prompt_for_display": str,
    "prompt": str, "negative_prompt": str, "styles": str, "seed": int, "subseed_strength": float,
    "subseed": int, "seed_resize_from_h": int, "seed_resize_from_w": int, "sampler_index": int,
    "sampler_name": str, "batch_size": int, "n_iter": int, "steps": int, "cfg_scale": float,
    "width": int, "height": int, "restore_faces": _flag, "tiling": _flag,
    "do_not_save_samples": _flag, "do_not_save_grid": _flag,
}
IGNORED_KEYS = ("outpath_samples", "outpath_grids", "prompt_for_display", "sampler_index")

log = logging.getLogger(__name__)


def parse_arg_line(line: str) -> dict[str, Any]:
    """`--key value` pairs; --prompt and --negative_prompt take every word up to the next
    `--` option (A1111's cmdargs). Raises ValueError saying what is wrong."""
    words, pos, found = shlex.split(line), 0, {}
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise ValueError(f'expected an option starting with "--", found {word!r}')
        if pos + 1 >= len(words):
            raise ValueError(f"option {word} has no value")
        key = word[2:]
        if key in ("prompt", "negative_prompt"):
            pos, found[key] = _take_words(words, pos + 1)
            continue
        if key not in LINE_KEYS:
            raise ValueError(f"unknown option {word}; known: {', '.join('--' + k for k in LINE_KEYS)}")
        found[key] = LINE_KEYS[key](words[pos + 1])
        pos += 2
    return found


def _take_words(words: list[str], pos: int) -> tuple[int, str]:
    taken = [words[pos]]
    pos += 1
    while pos < len(words) and not words[pos].startswith("--"):
        taken.append(words[pos])
        pos += 1
    return pos, " ".join(taken)


def parse_line(line: str) -> dict[str, Any]:
    """A plain prompt, or arguments when the line contains "--". A line that does not parse
    (unknown option, bad value, unclosed quote) is used whole as the prompt, with a warning,
    as A1111 does ("Error parsing line ... as commandline"), and the request goes on."""
    if "--" not in line:
        return {"prompt": line}
    try:
        return parse_arg_line(line)
    except ValueError as exc:
        log.warning("%s: cannot read the line %r as arguments (%s); using it as the prompt", TITLE, line, exc)
        return {"prompt": line}


def read_lines(text: str) -> list[dict[str, Any]]:
    lines = [stripped for stripped in (raw.strip() for raw in text.splitlines()) if stripped]
    if len(lines) > MAX_LINES:
        raise ValidationFailed(f"{TITLE}: {len(lines)} lines; at most {MAX_LINES} are accepted per request")
    return [parse_line(line) for line in lines]


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Settings:
    iterate: bool
    same_seed: bool
    position: str
    text: str


def plan(request: Any, ctx: ScriptContext) -> ScriptRun:
    """One job per line, built now so that a bad line is refused before anything runs."""
    settings = Settings(*bind(TITLE, arg_specs(ctx), request.script_args))
    lines = read_lines(settings.text)
    if not lines:
        raise ValidationFailed(f"{TITLE}: the list of prompt inputs (script_args[3]) has no lines")
    jobs = _line_jobs(request, ctx, settings, lines)
    return ScriptRun(
        job_count=sum(progress_units(job) for job in jobs),
        execute=lambda worker: _execute(worker, jobs, request),
        first_job=jobs[0],
        jobs=tuple(jobs),
    )


def _line_jobs(
    request: Any, ctx: ScriptContext, settings: Settings, lines: list[dict[str, Any]]
) -> list[GenerationJob]:
    """Seeds as A1111 moves them: with either checkbox a random seed is fixed once; "iterate"
    then adds batch_size * n_iter of the request after every line."""
    seed = request.seed
    if (settings.iterate or settings.same_seed) and seed in (None, -1, ""):
        seed = ctx.rng.randrange(MAX_SEED)
    jobs = []
    for line in lines:
        jobs.append(_line_job(request, ctx, settings, {"seed": seed, **line}))
        if settings.iterate:
            seed = int(seed) + request.batch_size * request.n_iter
    return jobs


def _line_job(request: Any, ctx: ScriptContext, settings: Settings, line: dict[str, Any]) -> GenerationJob:
    options = dict(ctx.options)
    if "sd_model" in line:
        options["sd_model_checkpoint"] = closest_checkpoint(ctx.checkpoints, line["sd_model"], TITLE).title
    updates = _request_updates(request, settings.position, line)
    styles = ctx.all_styles() if "styles" in updates else ctx.styles
    return build_job(ctx.tab, revalidated(request, updates, TITLE), options, styles, ctx.rng, guard=ctx.admit)


def _request_updates(request: Any, position: str, line: dict[str, Any]) -> dict[str, Any]:
    """Request fields a line sets; its prompts are joined to the request's own."""
    updates = {k: v for k, v in line.items() if k not in IGNORED_KEYS and k != "sd_model"}
    if isinstance(updates.get("styles"), str):
        updates["styles"] = [name.strip() for name in updates["styles"].split(",") if name.strip()]
    for key in ("prompt", "negative_prompt"):
        own = getattr(request, key)
        if updates.get(key) and own and isinstance(own, str):
            updates[key] = f"{updates[key]} {own}" if position == "start" else f"{own} {updates[key]}"
    return updates


# --------------------------------------------------------------------------- running


def _execute(worker: ScriptWorker, jobs: list[GenerationJob], request: Any) -> ScriptOutput:
    """Every line in order; the images and infotexts concatenated."""
    outcomes: list[JobOutcome] = []
    for job in jobs:  # an interrupt ends the run after the current line (the first always runs)
        outcomes.append(worker.run(job))
        if worker.interrupted:
            break
    images: list[OutputImage] = []
    for outcome in outcomes:
        texts = outcome.infotexts()
        images += [
            OutputImage(done.image, text, seed=done.seed, prompt=done.prompt)
            for done, text in zip(outcome.result.images, texts, strict=True)
        ]
    return ScriptOutput(images, _info(outcomes, request, [image.infotext for image in images]))


def _info(outcomes: list[JobOutcome], request: Any, infotexts: list[str]) -> dict[str, Any]:
    """A1111's Processed(p, images, p.seed, "", all_prompts=..., infotexts=...): the request's
    own prompt at the top, every line's prompts and seeds in the lists."""
    info = base_info(outcomes[0], request, infotexts)
    generated = [image for outcome in outcomes for image in outcome.result.images]
    info.update(
        prompt=request.prompt if isinstance(request.prompt, str) else info["prompt"],
        all_prompts=[image.prompt for image in generated],
        all_negative_prompts=[image.negative_prompt for image in generated],
        all_seeds=[image.seed for image in generated],
        all_subseeds=[image.subseed for image in generated],
    )
    return info

