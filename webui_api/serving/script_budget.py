"""The whole-script work budget: one limit on everything a single script run may generate.

Every job a script plans (an x/y/z cell, a prompts-from-file line, sd upscale's tiles) passes
the per-job guards, but the number of jobs is the caller's choice: a 64-cell x 64-line plot of
maximal jobs would hold the device for days. So the jobs of one script run are also counted
against two totals, checked while the script is planned (before anything is queued):

* images: batch_size x n_iter summed over the planned jobs (--max-script-images);
* work: images x sampling steps x megapixels, summed, with a hires pass counting its own
  steps at its own size (--max-script-work, in step-megapixels). Nominal steps are counted
  (an img2img job's denoising strength is not discounted), so the number is an upper bound.

Planning stops at the first job that takes a total over its limit, so a request asking for
a million lines is refused after building only as many jobs as the budget holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import LimitExceeded

DEFAULT_MAX_SCRIPT_IMAGES = 1024
# about the work of the largest direct request at the default guards (64 images x 1000 steps x 4.2 MP)
DEFAULT_MAX_SCRIPT_WORK = 270_000
SCRIPT_BUDGET_STATUS = 413


@dataclass(frozen=True)
class ScriptLimits:
    """The two totals of one script run; 0 disables a total."""

    max_images: int = DEFAULT_MAX_SCRIPT_IMAGES
    max_work: int = DEFAULT_MAX_SCRIPT_WORK  # step-megapixels


@dataclass(frozen=True)
class JobWork:
    """What one planned job (or a group of identical runs) adds to the totals."""

    images: int
    step_megapixels: float


def job_work(job: Any, runs: int = 1) -> JobWork:
    """The images and step-megapixels of `runs` runs of a GenerationJob (hires pass included)."""
    images = job.batch_size * job.n_iter * runs
    per_image = job.sampling.steps * job.width * job.height
    if job.hires is not None:
        per_image += job.hires.steps * job.hires.upscale_width * job.hires.upscale_height
    return JobWork(images, images * per_image / 1_000_000)


class ScriptBudget:
    """The running totals of ONE script run's planning (a fresh budget per request)."""

    def __init__(self, limits: ScriptLimits, script: str = "the script") -> None:
        self.limits = limits
        self.script = script
        self.images = 0
        self.step_megapixels = 0.0

    def charge(self, work: JobWork) -> None:
        """Add one planned job's work; LimitExceeded (413) when a total passes its limit."""
        self.images += work.images
        self.step_megapixels += work.step_megapixels
        if self.limits.max_images and self.images > self.limits.max_images:
            raise LimitExceeded(f"the number of images {self.script} plans", f"at least {self.images}",
                                self.limits.max_images, "--max-script-images", status=SCRIPT_BUDGET_STATUS)
        if self.limits.max_work and self.step_megapixels > self.limits.max_work:
            raise LimitExceeded(f"the work {self.script} plans (images x steps x megapixels)",
                                f"at least {round(self.step_megapixels, 2)}", self.limits.max_work,
                                "--max-script-work", status=SCRIPT_BUDGET_STATUS)

    def charge_job(self, job: Any, runs: int = 1) -> None:
        """Charge `runs` runs of a planned job."""
        self.charge(job_work(job, runs))
