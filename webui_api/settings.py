"""Frozen process configuration, built once from the command line (A1111's flag names).

`Settings` holds what cannot change while the server runs: where to listen, who may call,
where the data and models live, and the device/dtype wishes. What *can* change at run time
(the /sdapi/v1/options values) lives in `options.OptionsStore` instead.

This module is pure data: no argv parsing (that is `cli.py`), no torch, no file access.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .serving.audit import AuditPolicy
from .serving.content_policy import ContentPolicyConfig
from .serving.guards import RequestLimits


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server needs to know about this process; see `cli.parse_args` for sources."""

    host: str = "127.0.0.1"
    port: int = 7861
    api: bool = True  # we always serve the API; kept so /cmd-flags style checks read naturally
    nowebui: bool = False
    api_auth: tuple[tuple[str, str], ...] = ()  # (user, password) pairs from --api-auth "u:p,u2:p2"
    api_log: bool = False
    api_server_stop: bool = False
    cors_allow_origins: tuple[str, ...] = ()
    cors_allow_origins_regex: str | None = None

    data_dir: Path
    models_dir: Path
    ckpt_dirs: tuple[Path, ...]  # --ckpt-dir first (if given), then <models>/Stable-diffusion, like A1111
    ckpt: Path | None  # --ckpt, or <data>/model.ckpt when that file exists
    vae_dir: Path | None  # --vae-dir (an extra VAE folder; <models>/VAE is always scanned)
    vae_path: Path | None = None  # --vae-path: one VAE file that overrides every VAE setting
    lora_dir: Path
    lyco_dir: Path | None = None  # --lyco-dir-backcompat
    embeddings_dir: Path
    hypernetwork_dir: Path
    ui_settings_file: Path  # config.json holding the options
    styles_files: tuple[Path, ...]

    device: str = "auto"  # "cpu" with --use-cpu all/sd; else resolved by the engine
    dtype: str = "auto"  # "float32" with --no-half or --precision full; else resolved by the engine
    no_half_vae: bool = False
    precision: str = "autocast"  # --precision autocast|full|half (engine.precision.PrecisionPolicy)
    upcast_sampling: bool = False  # --upcast-sampling
    vram_mode: str = "normal"  # "normal" | "medvram" | "medvram-sdxl" | "lowvram" (engine.offload)
    compile_unet: bool = False  # --compile: torch.compile the UNet at load (engine.compile)
    compile_mode: str = "default"  # --compile-mode
    vae_tiling: str = "auto"  # --vae-tiling auto|on|off (engine.vae_tiling)
    channels_last: str = "auto"  # --channels-last auto|on|off (engine.device.DevicePolicy)
    offload_text_encoders: str = "auto"  # --offload-text-encoders auto|always|never (engine.text_encoder_offload)
    gpu_max_temp: float | None = None  # --gpu-max-temp (°C): refuse new generations while a GPU is this hot
    no_hashing: bool = False
    skip_load_model_at_start: bool = False

    freeze_settings: bool = False
    freeze_settings_in_sections: tuple[str, ...] = ()  # A1111 section ids, e.g. "saving-images"
    freeze_specific_settings: tuple[str, ...] = ()  # option keys
    hide_ui_dir_config: bool = False

    subpath: str | None = None
    timeout_keep_alive: int = 30
    tls_keyfile: str | None = None
    tls_certfile: str | None = None

    max_queue_depth: int = 64  # --max-queue-depth: generations waiting beyond this get 503 + Retry-After
    queue_timeout: float = 600.0  # --queue-timeout: seconds a generation may wait queued (0: no limit)
    # Production serving (docs/deployment.md). Features that write files are off here and
    # turned on by the CLI's defaults (result cache 256 MB, audit log under the data dir).
    api_keys_file: Path | None = None  # --api-keys-file: YAML/JSON keys with tiers, limits, route groups
    rate_limit: str | None = None  # --rate-limit: e.g. "30/minute" for callers without a limit of their own
    ray: Any = None  # webui_api.workers.RayOptions with --ray: run as a Ray Serve application
    redis_url: str | None = None  # --redis-url: shared rate-limit counters and result cache
    result_cache_mb: float = 0.0  # --result-cache-size (MB); 0 disables the result cache
    audit_log: Path | None = None  # --audit-log: one JSON line per generation; None: off
    audit: AuditPolicy = field(default_factory=AuditPolicy)  # --audit-log-* rotation/retention, --audit-redact-prompts
    task_retention_hours: float = 168.0  # --task-retention-hours: finished async tasks kept (0: forever)
    output_urls: bool = False  # --output-urls: generation responses carry image URLs instead of base64 by default
    output_url_ttl: float = 3600.0  # --output-url-ttl: seconds an output URL (and its stored image) lives
    task_max_count: int = 1000  # --task-max-count: finished async tasks kept at most (oldest deleted first; 0: no cap)
    task_max_mb: float = 1024.0  # --task-max-mb: MB of stored task requests and results (oldest finished deleted first)
    callback_allow: tuple[str, ...] = ()  # --callback-allow: hosts/CIDRs/"public" that task callbacks may reach
    api_docs_auth: bool = False  # --api-docs-auth: /docs, /redoc and /openapi.json behind the API auth too
    guards: RequestLimits = field(default_factory=RequestLimits)  # --max-pixels, --max-steps, ...
    content_policy: ContentPolicyConfig = field(default_factory=ContentPolicyConfig)  # --prompt-filter, --nsfw-*
    batch_max_size: int = 1  # --batch-max-size: images in one cross-request UNet batch (1: batching off, the default:
    # batching pads every UNet call to a fixed row count, which costs a lone request ~1.9x on a CPU; docs/benchmarks.md)
    batch_wait_ms: float = 10.0  # --batch-wait-ms: how long the worker waits for batch partners
    batch_unet_rows: int = 0  # --batch-unet-rows: rows of every UNet call while batching (0: auto, see unet_rows)

    # Weights fetched on first use (webui_api/weights). Off here so nothing built without the CLI
    # (tests included) ever downloads; the CLI turns downloads on unless --offline / HF_HUB_OFFLINE=1.
    weights_offline: bool = True  # --offline: a missing weights file is a 400 naming the fetch command
    models_mirror: str | None = None  # --models-mirror: replaces the origin of every pinned weights URL
    allow_unverified_weights: bool = False  # --allow-unverified: fetch files that have no pinned sha256

    cmd_flags: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # redacted vars(args)

    @property
    def unet_rows(self) -> int:
        """The fixed UNet call size of a batching server: by default a full batch of
        single-image jobs (prompt + negative row each) is one call, rounded up to a multiple
        of 4 (smaller or odd sizes were not row-position independent on the CPU measured)."""
        return self.batch_unet_rows or -(-2 * self.batch_max_size // 4) * 4

    @property
    def root_path(self) -> str:
        """The ASGI root path A1111 derives from --subpath ("/<subpath>"), or "" without one."""
        return f"/{self.subpath.strip('/')}" if self.subpath else ""

    @classmethod
    def layout(cls, data_dir: Path, models_dir: Path | None = None) -> Settings:
        """Default Settings for a data folder, with every path where A1111 would put it."""
        models = models_dir if models_dir is not None else data_dir / "models"
        return cls(
            data_dir=data_dir,
            models_dir=models,
            ckpt_dirs=(models / "Stable-diffusion",),
            ckpt=None,
            vae_dir=None,
            lora_dir=models / "Lora",
            lyco_dir=models / "LyCORIS",
            embeddings_dir=data_dir / "embeddings",
            hypernetwork_dir=models / "hypernetworks",
            ui_settings_file=data_dir / "config.json",
            styles_files=(data_dir / "styles.csv",),
        )
