"""OptionsStore and the option defaults table: A1111's keys, typing and POST semantics."""

from __future__ import annotations

import json
import threading

import pytest

from tests.factories import settings_for_tests
from webui_api.errors import ApiError, BadRequest, UnknownCheckpoint, UnknownOption
from webui_api.option_defaults import OPTION_DEFS, OPTIONS_BY_KEY, RESTRICT_API_KEYS
from webui_api.options import OptionsStore, frozen_option_keys

WELL_KNOWN_DEFAULTS = {
    "samples_save": True,
    "samples_format": "png",
    "jpeg_quality": 80,
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "sd_model_checkpoint": None,
    "sd_checkpoint_hash": "",
    "sd_vae": "Automatic",
    "randn_source": "GPU",
    "show_progress_every_n_steps": 10,
    "eta_ancestral": 1.0,
    "s_noise": 1.0,
    "emphasis": "Original",
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "quicksettings_list": ["sd_model_checkpoint"],
    "sd_lora": "None",
    "lora_functional": False,
    "api_useragent": "",
    "enable_prompt_comments": True,
}


@pytest.fixture()
def config_path(tmp_path):
    return tmp_path / "config.json"


@pytest.fixture()
def store(config_path):
    return OptionsStore(config_path)


def _checkpoint_titles(name: str) -> str:
    """A stand-in for the model registry: two aliases of one checkpoint, anything else unknown."""
    aliases = {
        "tiny": "tiny.safetensors [0123456789]",
        "tiny.safetensors [0123456789]": "tiny.safetensors [0123456789]",
    }
    if name not in aliases:
        raise UnknownCheckpoint(name)
    return aliases[name]


# --- the table ------------------------------------------------------------------------------


def test_table_has_one_entry_per_key_and_the_well_known_defaults():
    keys = [option.key for option in OPTION_DEFS]
    assert len(keys) == len(set(keys)) > 300
    for key, default in WELL_KNOWN_DEFAULTS.items():
        assert OPTIONS_BY_KEY[key].fresh_default() == default, key
    assert RESTRICT_API_KEYS == {"api_enable_requests", "api_forbid_local_requests", "api_useragent"}


def test_html_pseudo_options_carry_their_text():
    vae = OPTIONS_BY_KEY["sd_vae_explanation"]
    assert vae.html and vae.default.startswith("<abbr title='Variational autoencoder'>VAE</abbr>")
    assert vae.default == vae.default.strip()


def test_defaults_cannot_be_mutated_through_a_value(store):
    store.snapshot()["quicksettings_list"].append("x")
    store.as_api_dict()["quicksettings_list"].append("y")
    assert store.get("quicksettings_list") == ["sd_model_checkpoint"]
    assert OPTIONS_BY_KEY["quicksettings_list"].default == ("sd_model_checkpoint",)


# --- GET typing -----------------------------------------------------------------------------


def test_api_dict_has_every_key_and_a1111_typing(store):
    body = store.as_api_dict()
    assert list(body) == [option.key for option in OPTION_DEFS]
    assert body["CLIP_stop_at_last_layers"] == 1.0 and isinstance(body["CLIP_stop_at_last_layers"], float)
    assert body["jpeg_quality"] == 80.0 and isinstance(body["jpeg_quality"], float)
    assert body["eta_noise_seed_delta"] == 0 and isinstance(body["eta_noise_seed_delta"], int)
    assert body["samples_save"] is True
    assert body["sd_model_checkpoint"] is None
    assert body["sd_vae_explanation"] == OPTIONS_BY_KEY["sd_vae_explanation"].default


def test_snapshot_keeps_ints(store):
    values = store.snapshot()
    assert set(values) >= set(OPTIONS_BY_KEY)
    assert values["jpeg_quality"] == 80 and isinstance(values["jpeg_quality"], int)
    assert values["show_progress_every_n_steps"] == 10 and isinstance(values["show_progress_every_n_steps"], int)


# --- POST semantics -------------------------------------------------------------------------


def test_whole_get_dict_round_trips_unchanged(store, config_path):
    body = store.as_api_dict()
    assert store.apply(body) == {}
    assert store.as_api_dict() == body
    assert not config_path.exists()  # nothing changed, nothing written


def test_round_trip_with_one_change_reports_only_that_change(store):
    body = store.as_api_dict()
    body["jpeg_quality"] = 95.0
    body["sd_vae_explanation"] = "edited html is ignored"
    assert store.apply(body) == {"jpeg_quality": (80, 95)}
    assert store.snapshot()["jpeg_quality"] == 95 and isinstance(store.snapshot()["jpeg_quality"], int)
    assert store.as_api_dict()["sd_vae_explanation"] == OPTIONS_BY_KEY["sd_vae_explanation"].default


def test_unknown_key_is_refused_and_nothing_changes(store):
    with pytest.raises(UnknownOption) as caught:
        store.apply({"jpeg_quality": 50, "no_such_option": 1})
    assert "no_such_option" in caught.value.detail
    assert 400 <= caught.value.status_code < 500
    assert store.get("jpeg_quality") == 80


def test_restrict_api_keys_are_silently_ignored(store):
    assert store.apply({"api_enable_requests": False, "api_useragent": "bot/1.0", "samples_format": "jpg"}) == {
        "samples_format": ("png", "jpg")
    }
    assert store.get("api_enable_requests") is True
    assert store.get("api_useragent") == ""


@pytest.mark.parametrize(
    ("key", "sent", "stored"),
    [
        ("show_progress_every_n_steps", "20", 20),
        ("jpeg_quality", 90.0, 90),
        ("sd_webui_modal_lightbox_icon_opacity", 0.5, 0.5),  # int default, float slider
        ("eta_ddim", 1, 1.0),
        ("samples_save", "false", False),
        ("realesrgan_enabled_models", ("R-ESRGAN 4x+",), ["R-ESRGAN 4x+"]),
        ("upscaler_for_img2img", "Lanczos", "Lanczos"),
    ],
)
def test_values_are_coerced_to_the_option_type(store, key, sent, stored):
    store.apply({key: sent})
    value = store.get(key)
    assert value == stored and type(value) is type(stored)


@pytest.mark.parametrize(
    ("key", "sent"),
    [("jpeg_quality", "high"), ("jpeg_quality", True), ("samples_save", "yes"), ("samples_format", 5),
     ("hide_samplers", "Euler"), ("CLIP_stop_at_last_layers", None), ("sd_model_checkpoint", 5)],
)
def test_wrong_types_are_a_400_naming_key_and_value(store, key, sent):
    with pytest.raises(BadRequest) as caught:
        store.apply({key: sent})
    assert caught.value.status_code == 400
    assert key in caught.value.detail and "expected" in caught.value.detail


def test_checkpoint_is_validated_and_canonicalised_before_anything_changes(store):
    changes = store.apply({"sd_model_checkpoint": "tiny", "tiling": True}, validate_checkpoint=_checkpoint_titles)
    assert changes["sd_model_checkpoint"] == (None, "tiny.safetensors [0123456789]")
    with pytest.raises(UnknownCheckpoint):
        store.apply({"tiling": False, "sd_model_checkpoint": "missing"}, validate_checkpoint=_checkpoint_titles)
    assert store.get("tiling") is True
    assert store.get("sd_model_checkpoint") == "tiny.safetensors [0123456789]"
    assert store.apply({"sd_model_checkpoint": "tiny"}, validate_checkpoint=_checkpoint_titles) == {}
    assert store.apply({"sd_model_checkpoint": None}, validate_checkpoint=_checkpoint_titles) == {}


def test_frozen_keys_refuse_changes_but_accept_the_same_value(config_path):
    store = OptionsStore(config_path, frozen_keys=frozenset({"samples_format"}))
    assert store.apply({"samples_format": "png"}) == {}
    with pytest.raises(ApiError) as caught:
        store.apply({"samples_format": "webp", "jpeg_quality": 1})
    assert 400 <= caught.value.status_code < 500 and "samples_format" in caught.value.detail
    assert store.get("jpeg_quality") == 80


def test_freeze_flags_map_to_keys():
    assert "samples_format" in frozen_option_keys(sections=("saving-images",))
    assert "sd_vae" not in frozen_option_keys(sections=("saving-images",))
    assert frozen_option_keys(freeze_all=True) >= set(OPTIONS_BY_KEY)
    assert frozen_option_keys(keys=("tiling",)) == {"tiling"}


def test_hide_ui_dir_config_silently_ignores_output_paths(tmp_path):
    store = OptionsStore.from_settings(settings_for_tests(tmp_path, hide_ui_dir_config=True))
    assert store.apply({"outdir_txt2img_samples": "/elsewhere", "tiling": True}) == {"tiling": (False, True)}
    assert store.get("outdir_txt2img_samples") == "outputs/txt2img-images"


# --- persistence ----------------------------------------------------------------------------


def test_changes_persist_and_reload(store, config_path):
    store.apply({"show_progress_every_n_steps": 3, "sd_vae": "vae-ft-mse.safetensors"})
    saved = json.loads(config_path.read_text(encoding="utf8"))
    assert saved == {"show_progress_every_n_steps": 3, "sd_vae": "vae-ft-mse.safetensors"}
    reloaded = OptionsStore(config_path)
    assert reloaded.get("show_progress_every_n_steps") == 3
    assert reloaded.get("sd_vae") == "vae-ft-mse.safetensors"
    assert not list(config_path.parent.glob("*.tmp"))


def test_unknown_keys_in_the_file_are_kept_returned_and_accepted(config_path):
    config_path.write_text(json.dumps({"my_extension_setting": [1, 2], "jpeg_quality": 70}), encoding="utf8")
    store = OptionsStore(config_path)
    body = store.as_api_dict()
    assert body["my_extension_setting"] == [1, 2] and body["jpeg_quality"] == 70.0
    assert store.apply(body) == {}
    store.apply({"my_extension_setting": [3], "tiling": True})
    assert json.loads(config_path.read_text(encoding="utf8"))["my_extension_setting"] == [3]


def test_bad_values_in_the_file_fall_back_to_defaults(config_path):
    config_path.write_text(json.dumps({"jpeg_quality": "lots", "samples_format": "webp"}), encoding="utf8")
    store = OptionsStore(config_path)
    assert store.get("jpeg_quality") == 80
    assert store.get("samples_format") == "webp"


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", "\x00\x01"])
def test_corrupt_config_is_set_aside_and_startup_survives(config_path, content):
    config_path.write_text(content, encoding="utf8")
    store = OptionsStore(config_path)
    assert store.get("samples_format") == "png"
    backups = list(config_path.parent.glob("config.json.corrupt*"))
    assert len(backups) == 1 and backups[0].read_text(encoding="utf8") == content
    store.apply({"tiling": True})
    assert json.loads(config_path.read_text(encoding="utf8")) == {"tiling": True}


def test_constructor_overrides_sit_on_top_of_the_file(config_path):
    config_path.write_text(json.dumps({"samples_format": "jpg"}), encoding="utf8")
    store = OptionsStore(config_path, overrides={"samples_format": "webp"})
    assert store.get("samples_format") == "webp"


def test_set_internal_bypasses_frozen_keys(config_path):
    store = OptionsStore(config_path, frozen_keys=frozen_option_keys(freeze_all=True))
    store.set_internal({"sd_model_checkpoint": "tiny.safetensors [0123456789]", "sd_checkpoint_hash": "ab" * 32})
    assert store.get("sd_model_checkpoint") == "tiny.safetensors [0123456789]"


# --- per-job copies and threads ---------------------------------------------------------------


def test_with_overrides_does_not_mutate_the_store(store):
    values = store.with_overrides({"CLIP_stop_at_last_layers": 2.0, "not_an_option": 1, "api_useragent": "x"})
    assert values["CLIP_stop_at_last_layers"] == 2 and isinstance(values["CLIP_stop_at_last_layers"], int)
    assert "not_an_option" not in values and values["api_useragent"] == ""
    assert store.get("CLIP_stop_at_last_layers") == 1
    with pytest.raises(BadRequest):
        store.with_overrides({"CLIP_stop_at_last_layers": "two"})


def test_concurrent_applies_and_reads_stay_consistent(store, config_path):
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for step in range(20):
                store.apply({"show_progress_every_n_steps": index * 100 + step})
        except BaseException as exc:  # collected and re-raised by the test thread
            errors.append(exc)

    def reader() -> None:
        sizes = {len(store.as_api_dict()) for _ in range(50)}
        if sizes != {len(OPTION_DEFS)}:
            errors.append(AssertionError(f"GET sizes seen: {sizes}"))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)] + [threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    on_disk = json.loads(config_path.read_text(encoding="utf8"))["show_progress_every_n_steps"]
    assert on_disk == store.get("show_progress_every_n_steps")
    assert on_disk % 100 == 19
