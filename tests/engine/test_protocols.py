"""The engine's typed seams: the Protocols callers type against, and EngineOptions."""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import fields

import pytest

from webui_api.engine import protocols
from webui_api.engine.facade import Engine
from webui_api.engine.models import CheckpointInfo
from webui_api.engine_options import OPTION_NAMES, EngineOptions


def _members(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_protocols_module_imports_no_torch():
    modules = "webui_api.engine.protocols, webui_api.jobs, webui_api.engine_options"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_engine_has_every_member_of_generation_engine_with_the_same_parameters():
    for name in _members(protocols.GenerationEngine):
        if isinstance(getattr(protocols.GenerationEngine, name), property):  # read-only facts (loaded)
            assert isinstance(getattr(Engine, name), property), name
            continue
        wanted = inspect.signature(getattr(protocols.GenerationEngine, name))
        actual = inspect.signature(getattr(Engine, name))
        assert list(actual.parameters) == list(wanted.parameters), name


def test_checkpoint_info_has_every_model_fact():
    info = CheckpointInfo.for_file("sub/model.safetensors", "/m/sub/model.safetensors", "ab" * 32)
    for name in _members(protocols.ModelFacts) | _members(protocols.CatalogEntry):
        assert hasattr(info, name), name


def test_every_engine_option_names_its_a1111_option():
    named = set(OPTION_NAMES)
    # the two fields that are facts of the request, not /options entries
    assert {f.name for f in fields(EngineOptions)} - named == {"disable_extra_networks", "token_merging_ratio_overridden"}
    assert len({option for option, _ in OPTION_NAMES.values()}) == len(OPTION_NAMES)


def test_engine_options_resolve_types_and_keep_defaults_for_unset_or_null():
    resolved = EngineOptions.from_options(
        {"sd_checkpoints_limit": 0, "sigma_min": "0.5", "uni_pc_order": 2, "sd_lora": None, "eta_ddim": 0,
         "control_net_model_cache_size": "3", "unrelated": object()},
        disable_extra_networks=True,
    )
    assert resolved.checkpoints_limit == 1  # 0 means one model, as in A1111
    assert resolved.sigma_min == 0.5 and resolved.uni_pc_order == 2 and resolved.controlnet_cache_size == 3
    assert resolved.default_lora == "None" and resolved.eta_ddim == 0.0 and resolved.eta_ancestral is None
    assert resolved.disable_extra_networks is True
    assert EngineOptions.from_options({}) == EngineOptions()


def test_engine_options_name_the_option_with_an_unusable_value():
    with pytest.raises(ValueError, match="uni_pc_order"):
        EngineOptions.from_options({"uni_pc_order": "three"})
