"""The LoRAs of one job: which networks its prompts name, reading them, their infotext.

`networks.py` knows LoRA files and how to patch a model; this module knows jobs: A1111's
`sd_lora` default network, `disable_extra_networks`, the per-batch rule, both hires passes.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from webui_api.engine.loading.discovery import ModelPaths
from webui_api.engine.loading.hashes import HashCache
from webui_api.engine.networks import (
    LORA_KINDS,
    LoadedNetwork,
    NetworkCall,
    NetworkFile,
    NetworkLibrary,
    PassNetworks,
    group_network_keys,
    lora_calls,
    parse_prompt_networks,
)
from webui_api.engine_options import EngineOptions
from webui_api.errors import NotImplementedFeature
from webui_api.jobs import GenerationJob

log = logging.getLogger(__name__)

LORA_NAME_SYMBOLS = str.maketrans("", "", ":,")  # A1111 drops these from names in "Lora hashes"


def with_default_lora(job: GenerationJob, default_lora: str | None) -> GenerationJob:
    """A1111's `sd_lora` option: unless the first prompt already names that network, every
    prompt gets `<lora:NAME:extra_networks_default_multiplier>` appended (so the images'
    prompts and infotext show it too). Disabled extra networks skip this, as A1111 then never
    activates the Lora network."""
    if default_lora is None or job.engine_options.disable_extra_networks or not job.prompts:
        return job
    tags = parse_prompt_networks(job.prompts[0])[1]
    named = [tag.positional[0] for tag in tags if tag.kind in LORA_KINDS and tag.positional]
    if default_lora in named:
        return job
    tag = f"<lora:{default_lora}:{job.engine_options.extra_networks_default_multiplier}>"
    return replace(job, prompts=tuple(prompt + tag for prompt in job.prompts))


def job_networks(job: GenerationJob) -> tuple[tuple[str, ...], list[NetworkCall]]:
    """Every prompt without its extra-network tags, and the LoRAs to apply.

    A1111 reads the networks of each batch from the batch's first prompt; a job whose
    batches name different networks would need weights changed between batches, which
    this engine does not do yet (501 rather than a silently wrong batch). With
    `disable_extra_networks` the tags are still stripped but nothing is applied (A1111
    parses the prompts and skips the activation).
    """
    parsed = [parse_prompt_networks(prompt) for prompt in job.prompts]
    if job.engine_options.disable_extra_networks:
        return tuple(text for text, _ in parsed), []
    per_batch = [lora_calls(parsed[job.batch_slice(n).start][1]) for n in range(job.n_iter)]
    if any(calls != per_batch[0] for calls in per_batch):
        raise NotImplementedFeature(
            "batches whose first prompts name different <lora:...> networks are not supported yet"
        )
    return tuple(text for text, _ in parsed), per_batch[0]


def hires_network_calls(job: GenerationJob) -> list[NetworkCall] | None:
    """The LoRAs of the hires prompts (A1111's hr_extra_network_data), read per batch like
    the first pass's; None for jobs without hires fix. The hires prompts keep their tags in
    the job (they are stripped when the second pass encodes them)."""
    if job.hires is None:
        return None
    per_batch = [
        lora_calls(parse_prompt_networks(job.hires.prompts[job.batch_slice(n).start])[1]) for n in range(job.n_iter)
    ]
    if any(calls != per_batch[0] for calls in per_batch):
        raise NotImplementedFeature(
            "batches whose first hires prompts name different <lora:...> networks are not supported yet"
        )
    return per_batch[0]


class JobNetworks:
    """The LoRA folder as jobs use it: listing, the default network, reading what a job names."""

    def __init__(self, paths: ModelPaths, hashes: HashCache, allow_unsafe_pickle: bool = False) -> None:
        self.library = NetworkLibrary(paths, hashes)
        self._allow_unsafe_pickle = allow_unsafe_pickle

    def files(self) -> list[NetworkFile]:
        """The /sdapi/v1/loras list."""
        return self.library.files()

    def refresh(self) -> None:
        self.library.refresh()

    def default_lora(self, options: EngineOptions) -> str | None:
        """The `sd_lora` option's network when a LoRA file has that name (A1111 silently
        ignores a name it does not list), else None."""
        name = options.default_lora
        if name == "None" or all(entry.name != name for entry in self.library.files()):
            return None
        return name

    def load(self, calls: list[NetworkCall]) -> list[LoadedNetwork]:
        """Find and read every network a job names (400 before any weight changes). A name
        that matches no file is skipped with a warning: A1111 generates without it."""
        loaded = []
        for call in calls:
            entry = self.library.lookup(call.name)
            if entry is None:
                log.warning("Networks not found: %s (generating without it, as A1111)", call.name)
                continue
            state = self.library.state_dict(entry, self._allow_unsafe_pickle)
            loaded.append(LoadedNetwork(call, entry, group_network_keys(state)))
        return loaded

    def for_passes(self, calls: list[NetworkCall], hires_calls: list[NetworkCall] | None) -> PassNetworks:
        """Both passes' networks, read before any weight changes (an unknown hires LoRA is a
        404 before sampling); the hires set is None when it equals the first pass's."""
        first = self.load(calls)
        if hires_calls is None or hires_calls == calls:
            return PassNetworks(first)
        return PassNetworks(first, self.load(hires_calls))

    def infotext(self, loaded: list[LoadedNetwork], options: EngineOptions) -> dict[str, str]:
        """A1111's "Lora hashes": "name: 12-digit hash" per network, as written in the prompt."""
        if not loaded or not options.lora_hashes_in_infotext:
            return {}
        hashes = {}
        for network in loaded:
            shorthash = self.library.shorthash(network.entry)
            if shorthash:
                hashes[network.call.name.translate(LORA_NAME_SYMBOLS)] = shorthash
        return {"Lora hashes": ", ".join(f"{name}: {value}" for name, value in hashes.items())} if hashes else {}
