"""Command line: A1111's flag names in, a frozen `Settings` out.

Users start this server with the COMMANDLINE_ARGS they already use for A1111, so the parser
accepts every flag A1111 v1.10.1 defines (its `cmd_args.py` plus the preload flags of its
built-in extensions) with the same dest names and defaults: GET /sdapi/v1/cmd-flags returns
them. Flags that only matter to A1111's Gradio UI or installer are accepted and ignored.
Unknown flags are returned to the caller, which logs a warning instead of refusing to start.

Importing this module must stay cheap: no torch, no fastapi (the server is imported in `main`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui_api.serving.script_budget import DEFAULT_MAX_SCRIPT_IMAGES, DEFAULT_MAX_SCRIPT_WORK
from webui_api.settings import Settings

logger = logging.getLogger(__name__)

_IGNORED = "accepted for A1111 compatibility; no effect here"
_SENSITIVE_WORDS = ("auth", "password", "token", "key")
_SENSITIVE_DESTS = frozenset({"ngrok", "redis_url"})  # an ngrok authtoken; a URL that may hold a password
_REDACTED = "***"


def absolute_path(value: str) -> str:
    """A1111's `normalized_filepath`: path flags are made absolute against the working directory."""
    return str(Path(value).expanduser().absolute())


def _path_or_off(value: str) -> str:
    """A path made absolute, except the words 'off'/'none' that disable the feature."""
    return value if value.strip().lower() in ("off", "none", "") else absolute_path(value)


def _lower(value: str) -> str:
    return value.lower()


@dataclass(frozen=True)
class FlagSpec:
    """One command-line flag. `under` names the folder a path default lives in ("data"/"models")."""

    flag: str
    help: str = _IGNORED
    type: Callable[[str], Any] | None = None  # None: an on/off switch
    default: Any = None
    under: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # extra add_argument keywords


def _switch(flag: str, help: str = _IGNORED, default: bool = False) -> FlagSpec:
    """An on/off flag (store_true); A1111's `--gradio-queue` is the one that defaults to on."""
    return FlagSpec(flag, help, None, default, options={"action": "store_true"})


def _path(flag: str, help: str, *parts: str, under: str | None = None) -> FlagSpec:
    """A path flag; with `parts`, its default is <under>/<parts...> (made absolute like A1111)."""
    default = os.path.join(*parts) if parts else None
    return FlagSpec(flag, help, absolute_path, default, under if parts else None)


# A1111 v1.10.1 modules/cmd_args.py, in its order (the order /cmd-flags lists them in).
A1111_FLAGS: tuple[FlagSpec, ...] = (
    _switch("-f", argparse.SUPPRESS),
    _switch("--update-all-extensions"),
    _switch("--skip-python-version-check"),
    _switch("--skip-torch-cuda-test"),
    _switch("--reinstall-xformers"),
    _switch("--reinstall-torch"),
    _switch("--update-check"),
    _switch("--test-server"),
    _switch("--log-startup"),
    _switch("--skip-prepare-environment"),
    _switch("--skip-install"),
    _switch("--dump-sysinfo"),
    FlagSpec("--loglevel", "logging level name (CRITICAL, ERROR, WARNING, INFO, DEBUG)", str),
    _switch("--do-not-download-clip"),
    FlagSpec("--data-dir", "folder for user data: config.json, embeddings, outputs, models", absolute_path, "", "data"),
    _path("--models-dir", "folder holding the model folders; default <data-dir>/models"),
    FlagSpec("--config", _IGNORED, absolute_path, os.path.join("configs", "v1-inference.yaml"), "data"),
    FlagSpec("--ckpt", "an extra checkpoint file, listed and loaded at start", absolute_path, "model.ckpt", "data"),
    _path("--ckpt-dir", "an extra folder of Stable Diffusion checkpoints"),
    _path("--vae-dir", "an extra folder of VAE files"),
    FlagSpec("--gfpgan-dir", _IGNORED, absolute_path, "./GFPGAN"),
    _path("--gfpgan-model", _IGNORED),
    _switch("--no-half", "keep model weights in float32"),
    _switch("--no-half-vae", "keep the VAE in float32"),
    _switch("--no-progressbar-hiding"),
    FlagSpec("--max-batch-count", _IGNORED, int, 16),
    _path("--embeddings-dir", "folder of textual inversion embeddings", "embeddings", under="data"),
    _path("--textual-inversion-templates-dir", _IGNORED, "textual_inversion_templates", under="data"),
    _path("--hypernetwork-dir", "folder of hypernetworks", "hypernetworks", under="models"),
    _path("--localizations-dir", _IGNORED, "localizations", under="data"),
    _switch("--allow-code"),
    _switch("--medvram"),
    _switch("--medvram-sdxl"),
    _switch("--lowvram"),
    _switch("--lowram"),
    _switch("--always-batch-cond-uncond"),
    _switch("--unload-gfpgan"),
    FlagSpec("--precision", "'full' keeps float32", str, "autocast", options={"choices": ["full", "half", "autocast"]}),
    _switch("--upcast-sampling"),
    _switch("--share"),
    FlagSpec("--ngrok", _IGNORED, str),
    FlagSpec("--ngrok-region", _IGNORED, str, ""),
    FlagSpec("--ngrok-options", _IGNORED, json.loads, options={"default": {}}),
    _switch("--enable-insecure-extension-access"),
    _path("--codeformer-models-path", "folder of CodeFormer weights", "Codeformer", under="models"),
    _path("--gfpgan-models-path", "folder of GFPGAN weights", "GFPGAN", under="models"),
    _path("--esrgan-models-path", "folder of ESRGAN upscalers", "ESRGAN", under="models"),
    _path("--bsrgan-models-path", "folder of BSRGAN upscalers", "BSRGAN", under="models"),
    _path("--realesrgan-models-path", "folder of RealESRGAN upscalers", "RealESRGAN", under="models"),
    _path("--dat-models-path", "folder of DAT upscalers", "DAT", under="models"),
    _path("--clip-models-path", _IGNORED),
    _switch("--xformers"),
    _switch("--force-enable-xformers"),
    _switch("--xformers-flash-attention"),
    _switch("--deepdanbooru"),
    _switch("--opt-split-attention"),
    _switch("--opt-sub-quad-attention"),
    FlagSpec("--sub-quad-q-chunk-size", _IGNORED, int, 1024),
    FlagSpec("--sub-quad-kv-chunk-size", _IGNORED, int),
    FlagSpec("--sub-quad-chunk-threshold", _IGNORED, int),
    _switch("--opt-split-attention-invokeai"),
    _switch("--opt-split-attention-v1"),
    _switch("--opt-sdp-attention"),
    _switch("--opt-sdp-no-mem-attention"),
    _switch("--disable-opt-split-attention"),
    _switch("--disable-nan-check", "do not check results for NaNs"),
    FlagSpec("--use-cpu", "modules to run on the CPU; 'all' or 'sd' moves generation there", _lower,
             options={"nargs": "+", "default": []}),
    _switch("--use-ipex"),
    _switch("--disable-model-loading-ram-optimization"),
    _switch("--listen", "listen on 0.0.0.0 instead of 127.0.0.1"),
    FlagSpec("--port", "port to listen on; default 7860, or 7861 with --nowebui", int),
    _switch("--show-negative-prompt", default=False),
    FlagSpec("--ui-config-file", _IGNORED, str, "ui-config.json", "data"),
    _switch("--hide-ui-dir-config", "lock the output-folder and filename-pattern options", default=False),
    _switch("--freeze-settings", "refuse every change to the options", default=False),
    FlagSpec("--freeze-settings-in-sections", "comma-separated option sections to lock, e.g. saving-images", str),
    FlagSpec("--freeze-specific-settings", "comma-separated option keys to lock", str),
    FlagSpec("--ui-settings-file", "the options file", str, "config.json", "data"),
    _switch("--gradio-debug"),
    FlagSpec("--gradio-auth", _IGNORED, str),
    _path("--gradio-auth-path", _IGNORED),
    FlagSpec("--gradio-img2img-tool", _IGNORED, str),
    FlagSpec("--gradio-inpaint-tool", _IGNORED, str),
    FlagSpec("--gradio-allowed-path", _IGNORED, None, under="data", options={"action": "append"}),
    _switch("--opt-channelslast"),
    FlagSpec("--styles-file", "styles CSV file; repeat for several", str, options={"action": "append", "default": []}),
    _switch("--autolaunch", default=False),
    FlagSpec("--theme", _IGNORED, str),
    _switch("--use-textbox-seed", default=False),
    _switch("--disable-console-progressbars", default=False),
    _switch("--enable-console-prompts", default=False),
    _path("--vae-path", "one VAE file that replaces every model's VAE"),
    _switch("--disable-safe-unpickle", default=False),
    _switch("--api", "serve the API (always on here)"),
    FlagSpec("--api-auth", 'HTTP Basic credentials for the API: "user:password[,user2:password2]"', str),
    _switch("--api-log", "log one line per API request"),
    _switch("--nowebui", "API only (this server never serves a web UI); default port 7861"),
    _switch("--ui-debug-mode"),
    FlagSpec("--device-id", "CUDA device index to use", str),
    _switch("--administrator", default=False),
    FlagSpec("--cors-allow-origins", "comma-separated origins allowed by CORS", str),
    FlagSpec("--cors-allow-origins-regex", "a regular expression of origins allowed by CORS", str),
    FlagSpec("--tls-keyfile", "TLS private key file (needs --tls-certfile)", str),
    FlagSpec("--tls-certfile", "TLS certificate file (needs --tls-keyfile)", str),
    FlagSpec("--disable-tls-verify", _IGNORED, options={"action": "store_false", "default": None}),
    FlagSpec("--server-name", "host name or address to listen on; overrides --listen", str),
    _switch("--gradio-queue", default=True),
    _switch("--no-gradio-queue"),
    _switch("--skip-version-check"),
    _switch("--no-hashing", "do not compute sha256 of checkpoints", default=False),
    _switch("--no-download-sd-model", default=False),
    FlagSpec("--subpath", "serve under /<subpath> behind a reverse proxy", str),
    _switch("--add-stop-route"),
    _switch("--api-server-stop", "enable /sdapi/v1/server-kill, -restart and -stop"),
    FlagSpec("--timeout-keep-alive", "HTTP keep-alive timeout in seconds", int, 30),
    _switch("--disable-all-extensions", default=False),
    _switch("--disable-extra-extensions", default=False),
    _switch("--skip-load-model-at-start", "do not load a checkpoint until a request needs one"),
    _switch("--unix-filenames-sanitization"),
    FlagSpec("--filenames-max-length", "longest file name for saved images", int, 128),
    _switch("--no-prompt-history"),
)

# Flags the built-in extensions add in their preload.py (LDSR, Lora, ScuNET, SwinIR).
EXTENSION_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("--ldsr-models-path", "folder of LDSR weights", str, "LDSR", "models"),
    _path("--lora-dir", "folder of LoRA networks", "Lora", under="models"),
    _path("--lyco-dir-backcompat", "folder of LyCORIS networks (also --lyco-dir)", "LyCORIS", under="models"),
    FlagSpec("--scunet-models-path", "folder of ScuNET weights", str, "ScuNET", "models"),
    FlagSpec("--swinir-models-path", "folder of SwinIR weights", str, "SwinIR", "models"),
)


# sd-webui-controlnet's flags (its preload.py), with its dests and defaults, so a launch line
# written for A1111 + ControlNet works and /cmd-flags shows them; docs/controlnet.md says which act.
CONTROLNET_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("--controlnet-dir", "an extra folder of ControlNet models (besides <models-dir>/ControlNet)", str),
    FlagSpec(
        "--controlnet-annotator-models-path",
        "folder of preprocessor (annotator) weights; default <models-dir>/ControlNetAnnotators",
        str,
    ),
    FlagSpec(
        "--no-half-controlnet",
        "run ControlNet models in float32 even when the checkpoint runs in half precision",
        options={"action": "store_true", "default": None},
    ),
    FlagSpec(
        "--controlnet-preprocessor-cache-size", "accepted for compatibility; detected maps are not cached", int, 16
    ),
    FlagSpec(
        "--controlnet-loglevel",
        "log level of the ControlNet modules",
        str,
        "INFO",
        options={"choices": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
    ),
    FlagSpec("--controlnet-tracemalloc", _IGNORED, options={"action": "store_true", "default": None}),
)
# This server's own flags (not in A1111): production guards for shared servers.
SERVING_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("--max-queue-depth", "generations that may wait in the queue; more get 503 with Retry-After", int, 64),
    FlagSpec(
        "--queue-timeout", "seconds a generation may wait in the queue before it is refused (0: no limit)", float, 600.0
    ),
    FlagSpec(
        "--api-keys-file",
        "YAML or JSON file of API keys (name, key or sha256, tier, rate_limit, groups)",
        absolute_path,
    ),
    FlagSpec("--rate-limit", 'rate limit for callers without their own, e.g. "30/minute" (default: none)', str),
    FlagSpec(
        "--redis-url", "redis://host:port/db for shared rate limits and result cache (default: in memory / disk)", str
    ),
    FlagSpec("--result-cache-size", "MB of cached responses to deterministic requests (0 disables)", float, 256.0),
    FlagSpec(
        "--audit-log",
        "JSON-lines audit log of generations ('off' disables)",
        _path_or_off,
        os.path.join("logs", "audit.jsonl"),
        "data",
    ),
    FlagSpec(
        "--task-retention-hours", "hours finished async tasks and their results are kept (0: forever)", float, 168.0
    ),
    _switch(
        "--output-urls",
        "answer generations with signed, expiring image URLs instead of base64 "
        "(a request's output_urls field overrides it)",
    ),
    FlagSpec("--output-url-ttl", "seconds an output URL and its stored image are kept", float, 3600.0),
    FlagSpec(
        "--task-max-count", "finished async tasks kept at most; the oldest are deleted first (0: no cap)", int, 1000
    ),
    FlagSpec(
        "--task-max-mb",
        "MB of stored async task requests and results; the oldest finished go first, and new "
        "tasks get 503 while pending ones alone fill it (0: no cap)",
        float,
        1024.0,
    ),
    FlagSpec(
        "--callback-allow",
        "comma-separated hosts, addresses/CIDRs or 'public' that async task callback_url may "
        "reach; private and loopback targets need an explicit entry (default: callbacks only for API-key "
        "callers, to public addresses)",
        str,
    ),
    FlagSpec(
        "--audit-log-max-mb", "rotate the audit log when it reaches this size in MB (0: no size limit)", float, 50.0
    ),
    FlagSpec("--audit-log-rotate-hours", "rotate the audit log after this many hours (0: only by size)", float, 24.0),
    FlagSpec("--audit-log-keep", "rotated audit log files kept (audit.jsonl.1 ... .N)", int, 10),
    FlagSpec("--audit-log-retention-days", "rotated audit log files older than this are deleted", float, 30.0),
    _switch("--audit-redact-prompts", "write prompts to the audit log as their length only"),
    _switch("--api-docs-auth", "put /docs, /redoc and /openapi.json behind the API auth (A1111 leaves them open)"),
    FlagSpec("--max-pixels", "largest width x height of an output image (0: no limit)", int, 2048 * 2048),
    FlagSpec("--max-batch", "largest batch_size x n_iter (0: no limit)", int, 64),
    FlagSpec("--max-steps", "most sampling steps (0: no limit)", int, 1000),
    FlagSpec("--max-prompt-length", "longest prompt in characters (0: no limit)", int, 20_000),
    FlagSpec("--max-body-mb", "largest request body in MB (0: no limit)", float, 64.0),
    FlagSpec(
        "--max-input-pixels",
        "largest image the server decodes or builds outside the UNet (inputs, upscales, "
        "detect maps), in pixels (0: no limit)",
        int,
        4096 * 4096,
    ),
    FlagSpec(
        "--max-script-images",
        "most images one script run (x/y/z plot, prompts from file, sd upscale) may plan, all its jobs together "
        "(0: no limit)",
        int,
        DEFAULT_MAX_SCRIPT_IMAGES,
    ),
    FlagSpec(
        "--max-script-work",
        "most work one script run may plan: images x steps x megapixels summed over its jobs (0: no limit)",
        int,
        DEFAULT_MAX_SCRIPT_WORK,
    ),
    FlagSpec(
        "--prompt-filter",
        "content policy: file of words/phrases and re:regex rules refused in prompts "
        "(re-read when it changes; default: off)",
        absolute_path,
    ),
    FlagSpec(
        "--nsfw-check-dir",
        "content policy: folder of a CompVis safety checker (config.json + weights) that "
        "checks every output image (default: off)",
        absolute_path,
    ),
    FlagSpec(
        "--nsfw-action",
        "content policy: what happens to a flagged image",
        str,
        "blur",
        options={"choices": ["blur", "replace"]},
    ),
    FlagSpec(
        "--content-policy-tiers", "content policy: comma-separated key tiers it applies to", str, "high,normal,low"
    ),
    FlagSpec(
        "--batch-max-size",
        "cross-request batching: most images in one UNet batch (1: off, the default; e.g. 4 for a busy shared server)",
        int,
        1,
    ),
    FlagSpec("--batch-wait-ms", "cross-request batching: how long a job waits for batch partners, in ms", float, 10.0),
    FlagSpec("--batch-unet-rows", "cross-request batching: every UNet call gets exactly this many rows (padded), "
             "so batched and lone images agree bit for bit; use a multiple of 4 (0: 2 x --batch-max-size, rounded up "
             "to a multiple of 4)", int, 0),
    _switch("--compile", "torch.compile the UNet when a model loads (warmed up at the default image size before "
            "serving; minutes on first load, faster sampling after)"),
    FlagSpec("--compile-mode", "torch.compile mode with --compile: default, reduce-overhead (CUDA graphs), "
             "max-autotune, max-autotune-no-cudagraphs", str, "default",
             options={"choices": ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]}),
    FlagSpec("--vae-tiling", "tiled VAE decode/encode: auto (only images above 1536x1536 pixels), on (every image "
             "larger than one VAE tile), off (never, as A1111)", str, "auto",
             options={"choices": ["auto", "on", "off"]}),
    FlagSpec("--channels-last", "UNet/VAE weights and inputs in channels-last memory format: auto (on CUDA with "
             "half precision), on (any CUDA device), off", str, "auto",
             options={"choices": ["auto", "on", "off"]}),
    FlagSpec("--offload-text-encoders", "Flux/SD3: move the text encoders to CPU RAM after the prompts are encoded "
             "(back for the next encode): auto (when the GPU lacks room for sampling and decoding), always, never",
             str, "auto", options={"choices": ["auto", "always", "never"]}),
    FlagSpec("--gpu-max-temp", "refuse new generations (503 + Retry-After) while a GPU is at or above this temperature "
             "in °C, until it is 5 °C cooler (needs nvidia-ml-py; 0: off)", float, 0.0),
)


# This server's own flags for the weights fetcher (webui_api/weights; docs/models.md).
WEIGHTS_FLAGS: tuple[FlagSpec, ...] = (
    _switch("--offline", "never download weights; a missing file is a 400 naming the fetch command "
            "(HF_HUB_OFFLINE=1 does the same)"),
    FlagSpec("--models-mirror", "URL that replaces the origin of every pinned weights URL (an air-gapped mirror)", str),
    _switch("--allow-unverified", "also download weights that have no pinned sha256"),
)

OFFLINE_ENV = "HF_HUB_OFFLINE"


def offline_from_env(environ: Mapping[str, str]) -> bool:
    """HF_HUB_OFFLINE set to a true value (1/true/yes/on, as huggingface_hub reads it)."""
    return environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _resolve_default(spec: FlagSpec, bases: Mapping[str, str]) -> Any:
    """A default under data/models becomes a path in that folder; others stay as written."""
    if spec.under is None:
        return spec.default
    if spec.options.get("action") == "append":
        return [bases[spec.under]]
    return os.path.join(bases[spec.under], spec.default) if spec.default else bases[spec.under]


def _add_flag(parser: argparse.ArgumentParser, spec: FlagSpec, bases: Mapping[str, str]) -> None:
    kwargs: dict[str, Any] = {"help": spec.help, "default": _resolve_default(spec, bases)}
    if spec.type is not None:
        kwargs["type"] = spec.type
    kwargs.update(spec.options)
    parser.add_argument(spec.flag, **kwargs)


def build_parser(data_dir: str | None = None, models_dir: str | None = None) -> argparse.ArgumentParser:
    """Every A1111 flag, with path defaults under `data_dir` (default: the working directory)."""
    data = absolute_path(data_dir or os.getcwd())
    bases = {"data": data, "models": absolute_path(models_dir) if models_dir else os.path.join(data, "models")}
    parser = argparse.ArgumentParser(prog="webui-api", description="A1111-compatible Stable Diffusion API server")
    for spec in A1111_FLAGS + EXTENSION_FLAGS + CONTROLNET_FLAGS + SERVING_FLAGS + WEIGHTS_FLAGS + RAY_FLAGS:
        _add_flag(parser, spec, bases)
    return parser


def _pre_parse_dirs(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """Read --data-dir/--models-dir first, because the other path defaults hang off them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--data-dir", default=None)
    pre.add_argument("--models-dir", default=None)
    known, _ = pre.parse_known_args(list(argv))
    return known.data_dir, known.models_dir


def effective_argv(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """COMMANDLINE_ARGS (as webui-user.sh sets it) first, then argv, so explicit flags win."""
    return shlex.split(environ.get("COMMANDLINE_ARGS", "")) + list(argv)


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> tuple[Settings, list[str]]:
    """Parse A1111 flags into Settings; unknown flags are returned, not rejected."""
    full_argv = effective_argv(argv, os.environ if environ is None else environ)
    data_dir, models_dir = _pre_parse_dirs(full_argv)
    parser = build_parser(data_dir, models_dir)
    args, unknown = parser.parse_known_args(full_argv)
    settings = settings_from_args(args, parser)
    if offline_from_env(os.environ if environ is None else environ):
        settings = replace(settings, weights_offline=True)
    return settings, unknown


def parse_api_auth(value: str | None) -> tuple[tuple[str, str], ...]:
    """'u:p,u2:p2' -> (('u', 'p'), ('u2', 'p2')); the password may itself contain ':'."""
    if not value:
        return ()
    pairs = []
    for index, entry in enumerate(item.strip() for item in value.split(",")):
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user:
            raise ValueError(f"--api-auth entry #{index + 1} is not 'user:password' (expected 'u1:p1,u2:p2')")
        pairs.append((user, password))
    return tuple(pairs)


def _split_list(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip()) if value else ()


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _checkpoint_file(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path | None:
    """--ckpt when given; otherwise A1111's default <data>/model.ckpt only if that file exists."""
    path = Path(args.ckpt)
    explicit = args.ckpt != parser.get_default("ckpt")
    return path if explicit or path.is_file() else None


def _checkpoint_dirs(args: argparse.Namespace, models_dir: Path) -> tuple[Path, ...]:
    """A1111 scans --ckpt-dir first, then <models>/Stable-diffusion."""
    default = models_dir / "Stable-diffusion"
    extra = Path(args.ckpt_dir) if args.ckpt_dir else None
    return (extra, default) if extra is not None and extra != default else (default,)


def _listen_address(args: argparse.Namespace) -> tuple[str, int]:
    """Host: --server-name, else 0.0.0.0 with --listen; port: --port, else 7861/7860 like A1111."""
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    port = args.port or (7861 if args.nowebui else 7860)
    return host, port


def _device_and_dtype(args: argparse.Namespace) -> tuple[str, str]:
    """Only the user's explicit wishes; "auto" is resolved by the engine once torch is loaded."""
    device = "cpu" if {"all", "sd"} & set(args.use_cpu) else "auto"
    dtype = "float32" if args.no_half or args.precision == "full" else "auto"
    return device, dtype


HALF_PRECISION_CONFLICT = "--no-half and --no-half-vae conflict with --precision half"


def _precision_flags(args: argparse.Namespace) -> dict[str, Any]:
    """A1111's precision flags as Settings fields; the same start-up refusal as A1111 for
    --precision half with --no-half/--no-half-vae (the engine resolves the rest)."""
    if args.precision == "half" and (args.no_half or args.no_half_vae):
        raise ValueError(HALF_PRECISION_CONFLICT)
    return {"precision": args.precision, "upcast_sampling": args.upcast_sampling}


def _vram_mode(args: argparse.Namespace) -> str:
    """--lowvram wins over --medvram, which wins over --medvram-sdxl (A1111's order of checks)."""
    if args.lowvram:
        return "lowvram"
    if args.medvram:
        return "medvram"
    return "medvram-sdxl" if args.medvram_sdxl else "normal"


def _styles_files(args: argparse.Namespace, data_dir: Path) -> tuple[Path, ...]:
    return tuple(Path(p) for p in args.styles_file) or (data_dir / "styles.csv",)


# Scale-out on a Ray Serve cluster (this server's own; needs the `ray` extra).
RAY_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("--ray", "run as a Ray Serve application: an ingress deployment and one worker replica per device",
             options={"action": "store_true", "default": None}),
    FlagSpec("--ray-address", "join this Ray cluster (e.g. auto or ray://head:10001); default: start a local one", str),
    FlagSpec("--ray-workers", "worker replicas (default: one per visible GPU, 1 on a CPU-only host)", int),
    FlagSpec("--ray-gpus-per-worker", "GPUs each worker replica reserves (default: 1 with GPUs, 0 without)", float),
    FlagSpec("--ray-min-workers", "autoscaling on queue length: fewest worker replicas (with --ray-max-workers)", int),
    FlagSpec("--ray-max-workers", "autoscaling on queue length: most worker replicas (with --ray-min-workers)", int),
    FlagSpec("--ray-ingress-replicas", "ingress (HTTP) replicas; more than 1 needs --redis-url, the shared task store "
             "(default: 1)", int),
)


def ray_options(args: argparse.Namespace, visible_gpus: int | None = None) -> Any:
    """The --ray* flags as RayOptions; None without --ray. Defaults follow the visible GPUs."""
    if not getattr(args, "ray", None):
        return None
    from webui_api.workers import RayOptions

    gpus = _visible_gpus() if visible_gpus is None else visible_gpus
    per_worker = args.ray_gpus_per_worker if args.ray_gpus_per_worker is not None else (1.0 if gpus else 0.0)
    workers = args.ray_workers if args.ray_workers is not None else max(1, gpus)
    options = RayOptions(address=args.ray_address or None, workers=workers, gpus_per_worker=per_worker,
                         min_workers=args.ray_min_workers, max_workers=args.ray_max_workers,
                         ingress_replicas=args.ray_ingress_replicas if args.ray_ingress_replicas is not None else 1)
    options.check_task_store(args.redis_url or None)
    return options


def _visible_gpus() -> int:
    """CUDA devices this host shows (0 when torch sees none); only asked with --ray."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _at_least(minimum: float, flag: str, value: Any) -> Any:
    if value < minimum:
        raise ValueError(f"{flag} must be at least {minimum}, got {value}")
    return value


def settings_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """Map the parsed namespace onto Settings (paths as Path, lists as tuples, secrets redacted)."""
    data_dir = Path(args.data_dir)
    models_dir = Path(args.models_dir) if args.models_dir else data_dir / "models"
    host, port = _listen_address(args)
    device, dtype = _device_and_dtype(args)
    return Settings(
        host=host,
        port=port,
        api=True,
        nowebui=args.nowebui,
        api_auth=parse_api_auth(args.api_auth),
        api_log=args.api_log,
        api_server_stop=args.api_server_stop,
        cors_allow_origins=_split_list(args.cors_allow_origins),
        cors_allow_origins_regex=args.cors_allow_origins_regex,
        data_dir=data_dir,
        models_dir=models_dir,
        ckpt_dirs=_checkpoint_dirs(args, models_dir),
        ckpt=_checkpoint_file(args, parser),
        vae_dir=_optional_path(args.vae_dir),
        vae_path=_optional_path(args.vae_path),
        lora_dir=Path(args.lora_dir),
        lyco_dir=Path(args.lyco_dir_backcompat),
        embeddings_dir=Path(args.embeddings_dir),
        hypernetwork_dir=Path(args.hypernetwork_dir),
        ui_settings_file=Path(args.ui_settings_file),
        styles_files=_styles_files(args, data_dir),
        device=device,
        dtype=dtype,
        no_half_vae=args.no_half_vae,
        no_hashing=args.no_hashing,
        vram_mode=_vram_mode(args),
        **_precision_flags(args),
        compile_unet=args.compile,
        compile_mode=args.compile_mode,
        vae_tiling=args.vae_tiling,
        channels_last=args.channels_last,
        offload_text_encoders=args.offload_text_encoders,
        gpu_max_temp=_at_least(0, "--gpu-max-temp", args.gpu_max_temp) or None,
        skip_load_model_at_start=args.skip_load_model_at_start,
        freeze_settings=args.freeze_settings, freeze_settings_in_sections=_split_list(args.freeze_settings_in_sections),
        freeze_specific_settings=_split_list(args.freeze_specific_settings), hide_ui_dir_config=args.hide_ui_dir_config,
        subpath=args.subpath, timeout_keep_alive=args.timeout_keep_alive,
        tls_keyfile=args.tls_keyfile, tls_certfile=args.tls_certfile,
        max_queue_depth=_at_least(1, "--max-queue-depth", args.max_queue_depth),
        queue_timeout=_at_least(0, "--queue-timeout", args.queue_timeout),
        **serving_settings(args),
        batch_max_size=_at_least(1, "--batch-max-size", args.batch_max_size),
        batch_wait_ms=_at_least(0, "--batch-wait-ms", args.batch_wait_ms),
        batch_unet_rows=_at_least(0, "--batch-unet-rows", args.batch_unet_rows),
        weights_offline=args.offline, models_mirror=args.models_mirror or None,
        allow_unverified_weights=args.allow_unverified,
        ray=ray_options(args),
        cmd_flags=MappingProxyType(cmd_flags_from_args(args, data_dir)),
    )


def serving_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The production-serving flags (this server's own) as Settings fields."""
    from webui_api.serving.audit import AuditPolicy
    from webui_api.serving.guards import RequestLimits

    audit = None if str(args.audit_log).lower() in ("off", "none", "") else Path(args.audit_log)
    return {
        "api_keys_file": _optional_path(args.api_keys_file), "rate_limit": args.rate_limit or None,
        "redis_url": args.redis_url or None, "audit_log": audit,
        "result_cache_mb": _at_least(0, "--result-cache-size", args.result_cache_size),
        "task_retention_hours": _at_least(0, "--task-retention-hours", args.task_retention_hours),
        "output_urls": bool(args.output_urls),
        "output_url_ttl": _at_least(1, "--output-url-ttl", args.output_url_ttl),
        "task_max_count": _at_least(0, "--task-max-count", args.task_max_count),
        "task_max_mb": _at_least(0, "--task-max-mb", args.task_max_mb),
        "callback_allow": _callback_allow(args.callback_allow),
        "api_docs_auth": bool(args.api_docs_auth),
        "audit": AuditPolicy(
            max_bytes=int(_at_least(0, "--audit-log-max-mb", args.audit_log_max_mb) * 1024 * 1024),
            rotate_seconds=_at_least(0, "--audit-log-rotate-hours", args.audit_log_rotate_hours) * 3600.0,
            keep_files=_at_least(0, "--audit-log-keep", args.audit_log_keep),
            retention_days=_at_least(0, "--audit-log-retention-days", args.audit_log_retention_days),
            redact_prompts=bool(args.audit_redact_prompts),
        ),
        "guards": RequestLimits(
            max_pixels=_at_least(0, "--max-pixels", args.max_pixels),
            max_batch=_at_least(0, "--max-batch", args.max_batch),
            max_steps=_at_least(0, "--max-steps", args.max_steps),
            max_prompt_length=_at_least(0, "--max-prompt-length", args.max_prompt_length),
            max_body_bytes=int(_at_least(0, "--max-body-mb", args.max_body_mb) * 1024 * 1024),
            max_input_pixels=_at_least(0, "--max-input-pixels", args.max_input_pixels),
            max_script_images=_at_least(0, "--max-script-images", args.max_script_images),
            max_script_work=_at_least(0, "--max-script-work", args.max_script_work),
        ),
        "content_policy": _content_policy(args),
    }


def _content_policy(args: argparse.Namespace) -> Any:
    """--prompt-filter, --nsfw-check-dir, --nsfw-action, --content-policy-tiers (a bad value exits)."""
    from webui_api.serving.content_policy import ContentPolicyConfig

    tiers = frozenset(part.strip().lower() for part in str(args.content_policy_tiers).split(",") if part.strip())
    try:
        return ContentPolicyConfig(prompt_filter=_optional_path(args.prompt_filter),
                                   nsfw_model_dir=_optional_path(args.nsfw_check_dir),
                                   nsfw_action=args.nsfw_action, tiers=tiers)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _callback_allow(value: str | None) -> tuple[str, ...]:
    """--callback-allow entries, checked now so a typo fails the start, not a callback."""
    from webui_api.url_policy import UrlPolicy

    entries = _split_list(value)
    UrlPolicy.parse(entries)
    return entries


def cmd_flags_from_args(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """vars(args) as A1111's /cmd-flags shows it (styles_file filled in), with secrets redacted."""
    flags = dict(vars(args))
    if not flags.get("styles_file"):
        flags["styles_file"] = [str(data_dir / "styles.csv")]  # A1111 fills this in at startup
    return {name: redact(name, value) for name, value in flags.items()}


def default_cmd_flags(data_dir: Path) -> dict[str, Any]:
    """/cmd-flags of a server started with no flags but --data-dir (the tests' settings use it)."""
    parser = build_parser(str(data_dir))
    args, _ = parser.parse_known_args(["--data-dir", str(data_dir)])
    return cmd_flags_from_args(args, Path(args.data_dir))


def is_sensitive(name: str) -> bool:
    """Flag names that carry credentials: anything about auth, passwords, tokens or keys."""
    lowered = name.lower()
    return lowered in _SENSITIVE_DESTS or any(word in lowered for word in _SENSITIVE_WORDS)


def redact(name: str, value: Any) -> Any:
    """Hide secrets but keep shape: 'u:p,u2:p2' -> 'u:***,u2:***'; dicts are redacted per key."""
    if isinstance(value, Mapping):
        return {key: redact(str(key), item) for key, item in value.items()}
    if not is_sensitive(name) or not isinstance(value, str) or not value:
        return value
    return ",".join(_redact_credential(entry) for entry in value.split(","))


def _redact_credential(entry: str) -> str:
    user, sep, _secret = entry.partition(":")
    return f"{user}:{_REDACTED}" if sep else _REDACTED


def _configure_logging(level_name: str | None) -> None:
    level = getattr(logging, (level_name or "INFO").upper(), None)
    if not isinstance(level, int):
        raise SystemExit(f"--loglevel {level_name!r} is not one of CRITICAL, ERROR, WARNING, INFO, DEBUG")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


CONTROLNET_LOGGERS = ("webui_api.controlnet", "webui_api.engine.control", "webui_api.engine.control_models")


def _configure_controlnet_logging(level_name: str | None) -> None:
    """--controlnet-loglevel sets the ControlNet modules' loggers, as the extension sets its own."""
    for name in CONTROLNET_LOGGERS:
        logging.getLogger(name).setLevel(level_name or "INFO")


def models_main(argv: Sequence[str]) -> int:
    """`webui-api models list|fetch ...`: the server's flags choose the folders and the fetch policy;
    what the server parser does not know (the action and the names) goes to the subcommand."""
    from webui_api.weights import command

    try:
        settings, rest = parse_args(argv)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    _configure_logging(settings.cmd_flags.get("loglevel"))
    return command.run(rest, settings)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse flags, warn about unknown ones, run the server until it stops
    (or run the `models` subcommand)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["models"]:
        raise SystemExit(models_main(argv[1:]))
    try:
        settings, unknown = parse_args(argv)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    _configure_logging(settings.cmd_flags.get("loglevel"))
    _configure_controlnet_logging(settings.cmd_flags.get("controlnet_loglevel"))
    if unknown:
        logger.warning("ignoring unknown command-line arguments: %s", " ".join(unknown))
    if settings.ray is not None:
        from webui_api.cluster.launch import serve_ray  # imported late: it pulls in Ray

        serve_ray(settings)
        return
    from webui_api.serve import serve  # imported late: it pulls in fastapi and the engine

    serve(settings)
