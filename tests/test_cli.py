"""Command line: A1111 flag names parse into Settings; secrets never reach /cmd-flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import settings_for_tests
from webui_api.cli import build_parser, parse_api_auth, parse_args, redact

NO_ENV: dict[str, str] = {}


def parse(*argv: str, environ: dict[str, str] | None = None):
    return parse_args(list(argv), environ=NO_ENV if environ is None else environ)


def test_the_flags_users_paste_from_a1111_all_parse(tmp_path):
    data, ckpt_dir, vae_dir, lora_dir, emb_dir = (tmp_path / n for n in ("data", "ckpts", "vae", "lora", "emb"))
    settings, unknown = parse(
        "--api", "--nowebui", "--listen", "--port", "9001", "--api-auth", "u:p,u2:p2", "--api-log",
        "--cors-allow-origins", "http://a.example,http://b.example", "--cors-allow-origins-regex", r"https://.*\.x",
        "--data-dir", str(data), "--ckpt-dir", str(ckpt_dir), "--ckpt", str(tmp_path / "m.safetensors"),
        "--vae-dir", str(vae_dir), "--lora-dir", str(lora_dir), "--embeddings-dir", str(emb_dir),
        "--use-cpu", "all", "--no-half", "--precision", "full", "--api-server-stop",
    )
    assert unknown == []
    assert (settings.host, settings.port, settings.nowebui) == ("0.0.0.0", 9001, True)
    assert settings.api_auth == (("u", "p"), ("u2", "p2"))
    assert settings.api_log and settings.api_server_stop
    assert settings.cors_allow_origins == ("http://a.example", "http://b.example")
    assert settings.cors_allow_origins_regex == r"https://.*\.x"
    assert settings.data_dir == data and settings.models_dir == data / "models"
    assert settings.ckpt_dirs == (ckpt_dir, data / "models" / "Stable-diffusion")
    assert settings.ckpt == tmp_path / "m.safetensors"
    assert (settings.vae_dir, settings.lora_dir, settings.embeddings_dir) == (vae_dir, lora_dir, emb_dir)
    assert (settings.device, settings.dtype) == ("cpu", "float32")
    assert settings.ui_settings_file == data / "config.json"


def test_paths_default_under_data_dir_like_a1111(tmp_path):
    settings, _ = parse("--data-dir", str(tmp_path))
    assert settings.ckpt_dirs == (tmp_path / "models" / "Stable-diffusion",)
    assert settings.ckpt is None  # A1111's default model.ckpt does not exist here
    assert settings.lora_dir == tmp_path / "models" / "Lora"
    assert settings.hypernetwork_dir == tmp_path / "models" / "hypernetworks"
    assert settings.embeddings_dir == tmp_path / "embeddings"
    assert settings.styles_files == (tmp_path / "styles.csv",)
    assert (settings.device, settings.dtype) == ("auto", "auto")


def test_models_dir_moves_model_folders(tmp_path):
    settings, _ = parse("--data-dir", str(tmp_path / "d"), "--models-dir", str(tmp_path / "m"))
    assert settings.lora_dir == tmp_path / "m" / "Lora"
    assert settings.ckpt_dirs == (tmp_path / "m" / "Stable-diffusion",)
    assert settings.embeddings_dir == tmp_path / "d" / "embeddings"


def test_lyco_dir_abbreviation_still_works(tmp_path):
    settings, unknown = parse("--lyco-dir", str(tmp_path / "ly"))
    assert unknown == [] and settings.lyco_dir == tmp_path / "ly"


@pytest.mark.parametrize(
    ("argv", "host", "port"),
    [
        ((), "127.0.0.1", 7860),
        (("--nowebui",), "127.0.0.1", 7861),
        (("--listen",), "0.0.0.0", 7860),
        (("--listen", "--server-name", "10.1.2.3", "--port", "8000"), "10.1.2.3", 8000),
    ],
)
def test_host_and_port_defaults(argv, host, port):
    settings, _ = parse(*argv)
    assert (settings.host, settings.port) == (host, port)


def test_unknown_flags_are_returned_not_fatal():
    settings, unknown = parse("--nowebui", "--some-extension-flag", "value", "--another")
    assert settings.nowebui
    assert unknown == ["--some-extension-flag", "value", "--another"]


def test_commandline_args_env_is_honoured_and_explicit_flags_win():
    settings, _ = parse("--port", "9100", environ={"COMMANDLINE_ARGS": "--listen --port 9000 --api-log"})
    assert settings.host == "0.0.0.0" and settings.api_log
    assert settings.port == 9100


def test_cmd_flags_has_every_dest_and_no_password(tmp_path):
    settings, _ = parse(
        "--api-auth", "alice:s3cret,bob:hunter2", "--gradio-auth", "carol:pw", "--ngrok", "tok123",
        "--ngrok-options", '{"authtoken": "tok456", "basic_auth": "dave:pw2", "region": "eu"}',
        "--tls-keyfile", "/k.pem", "--data-dir", str(tmp_path),
    )
    flags = dict(settings.cmd_flags)
    parser_dests = {action.dest for action in build_parser(str(tmp_path))._actions} - {"help"}
    assert set(flags) == parser_dests
    text = repr(flags)
    for secret in ("s3cret", "hunter2", "carol:pw", "tok123", "tok456", "pw2", "/k.pem"):
        assert secret not in text
    assert flags["api_auth"] == "alice:***,bob:***"
    assert flags["ngrok_options"]["region"] == "eu"
    assert flags["port"] is None and flags["timeout_keep_alive"] == 30 and flags["precision"] == "autocast"


def test_redact_keeps_empty_and_non_secret_values():
    assert redact("api_auth", None) is None
    assert redact("api_auth", "solo") == "***"
    assert redact("port", 7860) == 7860


def test_bad_api_auth_is_a_clear_error_without_the_secret():
    with pytest.raises(ValueError) as caught:
        parse_api_auth("alice:pw,justapassword")
    assert "#2" in str(caught.value) and "justapassword" not in str(caught.value)
    assert parse_api_auth("a:b:c, d:e ,") == (("a", "b:c"), ("d", "e"))


def test_freeze_flags_become_tuples():
    settings, _ = parse(
        "--freeze-settings-in-sections", "saving-images, upscaling", "--freeze-specific-settings", "tiling"
    )
    assert settings.freeze_settings_in_sections == ("saving-images", "upscaling")
    assert settings.freeze_specific_settings == ("tiling",)


def test_offload_text_encoders_defaults_to_auto_and_refuses_other_words():
    assert parse()[0].offload_text_encoders == "auto"
    assert parse("--offload-text-encoders", "always")[0].offload_text_encoders == "always"
    with pytest.raises(SystemExit):
        parse("--offload-text-encoders", "sometimes")


def test_importing_cli_does_not_import_torch_or_fastapi():
    code = "import sys, webui_api.cli; print(sorted({'torch', 'fastapi'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_for_tests_carries_default_cmd_flags(tmp_path):
    settings = settings_for_tests(tmp_path, port=1234)
    assert settings.port == 1234
    assert settings.cmd_flags["data_dir"] == str(tmp_path.absolute())
    assert settings.cmd_flags["nowebui"] is False and settings.cmd_flags["lora_dir"].endswith("Lora")
