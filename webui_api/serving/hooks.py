"""The few calls the generation routes make into the serving layer, in order:

1. `check(request)`: guards, and 503 while shutting down;
2. `lookup(route, request, options, context)`: a cached response, or None (then it runs);
3. `timed(item, route, steps, context)`: the work item, reporting wait and run times;
4. `finish(route, request, response, context, cacheable)`: store in the cache, count, audit.

Keeping them in one object keeps the route code to a line per step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..scheduler import WorkItem
from .audit import AuditLog, generation_entry
from .content_policy import ContentPolicy, request_prompts
from .context import RequestContext
from .guards import RequestLimits, check_generation, check_job
from .lifecycle import Lifecycle
from .metrics import Metrics
from .result_cache import ResultCache


@dataclass
class ServingHooks:
    limits: RequestLimits
    cache: ResultCache
    metrics: Metrics
    audit: AuditLog
    lifecycle: Lifecycle
    policy: ContentPolicy = field(default_factory=ContentPolicy)

    def check(self, request: Any, context: RequestContext | None = None, route: str = "generation") -> None:
        """Guards and the prompt filter before anything is queued (a refusal is audited)."""
        self.lifecycle.check_intake()
        check_generation(request, self.limits)
        self._check_prompts(request_prompts(request), context or RequestContext(), route, request)

    def job_guard(self, context: RequestContext, route: str) -> Callable[[Any], None]:
        """The checks every job a script plans must pass: the request guards on the resolved
        job (size, steps, batch, prompt length) and the prompt filter on its prompts."""
        def check(job: Any) -> None:
            check_job(job, self.limits)
            self._check_prompts(job.prompts, context, route, None)

        return check

    def _check_prompts(self, prompts: Any, context: RequestContext, route: str, request: Any) -> None:
        refusal = self.policy.violation(prompts, context.priority)
        if refusal is None:
            return
        if self.audit.path is not None:
            params = request.model_dump(mode="json") if request is not None else {"prompts": list(prompts)}
            self.audit.write(generation_entry(caller=context.caller, route=route, params=params, response=None,
                                              timings=context.timings(), cache="miss", task_id=context.task_id,
                                              error=f"{refusal.error_name}: {refusal.detail}"))
            context.audited = True  # the refusal has its full entry; no short request line on top
        raise refusal

    async def lookup(
        self, route: str, request: Any, options: Mapping[str, Any], context: RequestContext
    ) -> dict | None:
        """A stored response for a deterministic request (then audited and counted here).
        Never for a caller whose images the content policy checks: cached images were not."""
        if not self.cache.enabled or self.policy.checks_images(context.priority):
            return None
        context.cache_key = await asyncio.to_thread(self.cache.key_for, route, request, options)
        if context.cache_key is None:
            return None
        cached = await asyncio.to_thread(self.cache.lookup, context.cache_key)
        self.metrics.count_cache(cached is not None)
        if cached is None:
            return None
        context.cache = "hit"
        self.metrics.count_generation(route)
        await self._audit(route, request.model_dump(mode="json"), cached, context)
        return cached

    def timed(self, item: WorkItem, route: str, steps: int, context: RequestContext) -> WorkItem:
        """The same work, measuring how long it waited in the queue and ran on the device (on
        whichever worker runs it: the scheduler calls the item's `around` wrappers)."""
        queued = time.monotonic()

        def timing(execute: Any) -> Any:
            started = time.monotonic()
            context.wait_seconds = started - queued
            try:
                return execute()
            finally:
                context.run_seconds = time.monotonic() - started
                self.metrics.observe_job(route, context.wait_seconds, context.run_seconds, steps)

        return dataclasses.replace(item, around=(*item.around, timing))  # keeps every other field

    async def finish(
        self, route: str, request: Any, response: dict[str, Any], context: RequestContext, cacheable: bool = True,
    ) -> dict[str, Any]:
        """After a generation: the content policy's image check (for the caller's tier), then
        store it (when complete, deterministic and unchecked), count it, audit it."""
        if self.policy.checks_images(context.priority):
            response = await asyncio.to_thread(self.policy.filter_response, response)
            cacheable = False
        if cacheable and context.cache_key is not None:
            await asyncio.to_thread(self.cache.store_response, context.cache_key, response)
        self.metrics.count_generation(route)
        await self._audit(route, request.model_dump(mode="json"), response, context)
        return response

    async def audit_failure(self, route: str, params: dict[str, Any], context: RequestContext, error: str) -> None:
        """A generation that ended in an error (async tasks report theirs here)."""
        await self._audit(route, params, None, context, error=error)

    async def _audit(self, route: str, params: dict[str, Any], response: dict | None, context: RequestContext,
                     error: str | None = None) -> None:
        if self.audit.path is None:
            return
        context.audited = True
        entry = generation_entry(
            caller=context.caller, route=route, params=params, response=response,
            timings=context.timings(), cache=context.cache, task_id=context.task_id, error=error,
        )
        await asyncio.to_thread(self.audit.write, entry)


def job_steps(job: Any) -> int:
    """Sampling steps times images: the work a job asked of the UNet (first pass)."""
    return int(job.sampling.steps) * int(job.image_count)
