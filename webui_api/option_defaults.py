"""Every option key A1111 v1.10.1 exposes through GET /sdapi/v1/options, with its default.

This module is data, not behaviour: one `OptionDef` per key, in A1111's registration order
(its `modules/shared_options.py` sections, then the options that built-in scripts and
extensions add: prompt comments, Lora, canvas hotkeys, extra-options, the upscaler and
Hypertile options a web-UI launch registers, and sd-webui-controlnet's settings). Clients read and
write these keys by name, so the set of keys and their defaults is part of the wire contract.

A1111 types each option for the API from its default (`Options.typemap`): a falsy default
makes the field `Any`; otherwise it is `Optional[type(default)]` with int widened to float.
That is why `CLIP_stop_at_last_layers` (default 1) is served as 1.0 while
`eta_noise_seed_delta` (default 0) stays an int. `OptionDef.api_type` encodes that rule.

A1111 also builds `prioritized_callbacks_<category>` options at run time from whatever
callbacks its scripts registered; they have no fixed key set, so they are not listed here
(see `DYNAMIC_KEY_PREFIXES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Forge's choices for forge_unet_storage_dtype (the float8 ones take effect for Flux, see docs/models.md)
FORGE_UNET_STORAGE_DTYPES = (
    'Automatic', 'Automatic (fp16 LoRA)', 'bnb-nf4', 'bnb-nf4 (fp16 LoRA)', 'float8-e4m3fn',
    'float8-e4m3fn (fp16 LoRA)', 'bnb-fp4', 'bnb-fp4 (fp16 LoRA)', 'float8-e5m2', 'float8-e5m2 (fp16 LoRA)',
)


@dataclass(frozen=True)
class OptionDef:
    """One registered option: its key, default and the flags that change how the API treats it.

    List defaults are stored as tuples so the shared table cannot be mutated through a value;
    use `fresh_default()` to get the value a store should hold.
    """

    key: str
    default: Any
    section: str | None  # A1111's section id, the unit --freeze-settings-in-sections freezes
    choices: tuple[str, ...] | None = None  # fixed choices where A1111 lists them statically
    html: bool = False  # OptionHTML: explanatory text, read-only, never saved
    restrict_api: bool = False  # writes through the API are silently ignored
    dir_config: bool = False  # locked by --hide-ui-dir-config (paths and filename patterns)

    @property
    def value_type(self) -> type | None:
        """The Python type values of this option have; None when the default is None (any value)."""
        if self.default is None:
            return None
        if isinstance(self.default, tuple):
            return list
        return type(self.default)

    @property
    def api_any(self) -> bool:
        """True where A1111 types the API field as `Any` (falsy default), so values pass unchanged."""
        return not self.default

    @property
    def api_type(self) -> type | None:
        """The type GET /options serialises this option as; None means `Any` (no coercion)."""
        if self.api_any:
            return None
        value_type = self.value_type
        return float if value_type is int else value_type

    def fresh_default(self) -> Any:
        """The default as a store value: a new list for list options, the constant otherwise."""
        if isinstance(self.default, tuple):
            return list(self.default)
        return self.default


# Option keys A1111 creates at run time (one per callback category that has callbacks).
DYNAMIC_KEY_PREFIXES: tuple[str, ...] = ("prioritized_callbacks_",)


# OptionHTML texts: A1111 serves each as the value of its pseudo-option (stripped of outer whitespace).
_HTML_PROFILING_EXPLANATION = (
    'Those settings allow you to enable torch profiler when generating pictures.\n'
    "Profiling allows you to see which code uses how much of computer's resources during generation.\n"
    'Each generation writes its own profile to one file, overwriting previous.\n'
    'The file can be viewed in <a href="chrome:tracing">Chrome</a>, or on a <a '
    'href="https://ui.perfetto.dev/">Perfetto</a> web site.\n'
    'Warning: writing profile can take a lot of time, up to 30 seconds, and the file itelf can be around 500MB in size.'
)

_HTML_SD_VAE_EXPLANATION = (
    "<abbr title='Variational autoencoder'>VAE</abbr> is a neural network that transforms a standard <abbr "
    "title='red/green/blue'>RGB</abbr>\n"
    "image into latent space representation and back. Latent space representation is what stable diffusion is working "
    "on during sampling\n"
    "(i.e. when the progress bar is between empty and full). For txt2img, VAE is used to create a resulting image "
    "after the sampling is finished.\n"
    "For img2img, VAE is used to process user's input image before the sampling, and to create an image after sampling."
)

_HTML_INFOTEXT_EXPLANATION = (
    "Infotext is what this software calls the text that contains generation parameters and can be used to generate "
    "the same picture again.\n"
    "It is displayed in UI below the image. To use infotext, paste it into the prompt and click the ↙️ paste button."
)

_HTML_SETTINGS_IN_UI = (
    'This page allows you to add some settings to the main interface of txt2img and img2img tabs.'
)

_HTML_HYPERTILE_EXPLANATION = (
    "<a href='https://github.com/tfernd/HyperTile'>Hypertile</a> optimizes the self-attention layer within U-Net and "
    "VAE models,\n"
    "    resulting in a reduction in computation time ranging from 1 to 4 times. The larger the generated image is, "
    "the greater the\n"
    "    benefit."
)


OPTION_DEFS: tuple[OptionDef, ...] = (
    # section 'saving-images'
    OptionDef('samples_save', True, 'saving-images'),
    OptionDef('samples_format', 'png', 'saving-images'),
    OptionDef('samples_filename_pattern', '', 'saving-images', dir_config=True),
    OptionDef('save_images_add_number', True, 'saving-images', dir_config=True),
    OptionDef(
        'save_images_replace_action', 'Replace', 'saving-images',
        choices=('Replace', 'Add number suffix'), dir_config=True,
    ),
    OptionDef('grid_save', True, 'saving-images'),
    OptionDef('grid_format', 'png', 'saving-images'),
    OptionDef('grid_extended_filename', False, 'saving-images'),
    OptionDef('grid_only_if_multiple', True, 'saving-images'),
    OptionDef('grid_prevent_empty_spots', False, 'saving-images'),
    OptionDef('grid_zip_filename_pattern', '', 'saving-images', dir_config=True),
    OptionDef('n_rows', -1, 'saving-images'),
    OptionDef('font', '', 'saving-images'),
    OptionDef('grid_text_active_color', '#000000', 'saving-images'),
    OptionDef('grid_text_inactive_color', '#999999', 'saving-images'),
    OptionDef('grid_background_color', '#ffffff', 'saving-images'),
    OptionDef('save_images_before_face_restoration', False, 'saving-images'),
    OptionDef('save_images_before_highres_fix', False, 'saving-images'),
    OptionDef('save_images_before_color_correction', False, 'saving-images'),
    OptionDef('save_mask', False, 'saving-images'),
    OptionDef('save_mask_composite', False, 'saving-images'),
    OptionDef('jpeg_quality', 80, 'saving-images'),
    OptionDef('webp_lossless', False, 'saving-images'),
    OptionDef('export_for_4chan', True, 'saving-images'),
    OptionDef('img_downscale_threshold', 4.0, 'saving-images'),
    OptionDef('target_side_length', 4000, 'saving-images'),
    OptionDef('img_max_size_mp', 200, 'saving-images'),
    OptionDef('use_original_name_batch', True, 'saving-images'),
    OptionDef('use_upscaler_name_as_suffix', False, 'saving-images'),
    OptionDef('save_selected_only', True, 'saving-images'),
    OptionDef('save_write_log_csv', True, 'saving-images'),
    OptionDef('save_init_img', False, 'saving-images'),
    OptionDef('temp_dir', '', 'saving-images', dir_config=True),
    OptionDef('clean_temp_dir_at_start', False, 'saving-images', dir_config=True),
    OptionDef('save_incomplete_images', False, 'saving-images'),
    OptionDef('notification_audio', True, 'saving-images'),
    OptionDef('notification_volume', 100, 'saving-images'),
    # section 'saving-paths'
    OptionDef('outdir_samples', '', 'saving-paths', dir_config=True),
    OptionDef('outdir_txt2img_samples', 'outputs/txt2img-images', 'saving-paths', dir_config=True),
    OptionDef('outdir_img2img_samples', 'outputs/img2img-images', 'saving-paths', dir_config=True),
    OptionDef('outdir_extras_samples', 'outputs/extras-images', 'saving-paths', dir_config=True),
    OptionDef('outdir_grids', '', 'saving-paths', dir_config=True),
    OptionDef('outdir_txt2img_grids', 'outputs/txt2img-grids', 'saving-paths', dir_config=True),
    OptionDef('outdir_img2img_grids', 'outputs/img2img-grids', 'saving-paths', dir_config=True),
    OptionDef('outdir_save', 'log/images', 'saving-paths', dir_config=True),
    OptionDef('outdir_init_images', 'outputs/init-images', 'saving-paths', dir_config=True),
    # section 'saving-to-dirs'
    OptionDef('save_to_dirs', True, 'saving-to-dirs'),
    OptionDef('grid_save_to_dirs', True, 'saving-to-dirs'),
    OptionDef('use_save_to_dirs_for_ui', False, 'saving-to-dirs'),
    OptionDef('directories_filename_pattern', '[date]', 'saving-to-dirs', dir_config=True),
    OptionDef('directories_max_prompt_words', 8, 'saving-to-dirs', dir_config=True),
    # section 'upscaling'
    OptionDef('ESRGAN_tile', 192, 'upscaling'),
    OptionDef('ESRGAN_tile_overlap', 8, 'upscaling'),
    OptionDef('realesrgan_enabled_models', ('R-ESRGAN 4x+', 'R-ESRGAN 4x+ Anime6B'), 'upscaling'),
    OptionDef('dat_enabled_models', ('DAT x2', 'DAT x3', 'DAT x4'), 'upscaling'),
    OptionDef('DAT_tile', 192, 'upscaling'),
    OptionDef('DAT_tile_overlap', 8, 'upscaling'),
    OptionDef('upscaler_for_img2img', None, 'upscaling'),
    OptionDef('set_scale_by_when_changing_upscaler', False, 'upscaling'),
    # section 'face-restoration'
    OptionDef('face_restoration', False, 'face-restoration'),
    OptionDef('face_restoration_model', 'CodeFormer', 'face-restoration'),
    OptionDef('code_former_weight', 0.5, 'face-restoration'),
    OptionDef('face_restoration_unload', False, 'face-restoration'),
    # section 'system'
    OptionDef('auto_launch_browser', 'Local', 'system', choices=('Disable', 'Local', 'Remote')),
    OptionDef('enable_console_prompts', False, 'system'),
    OptionDef('show_warnings', False, 'system'),
    OptionDef('show_gradio_deprecation_warnings', True, 'system'),
    OptionDef('memmon_poll_rate', 8, 'system'),
    OptionDef('samples_log_stdout', False, 'system'),
    OptionDef('multiple_tqdm', True, 'system'),
    OptionDef('enable_upscale_progressbar', True, 'system'),
    OptionDef('print_hypernet_extra', False, 'system'),
    OptionDef('list_hidden_files', True, 'system'),
    OptionDef('disable_mmap_load_safetensors', False, 'system'),
    OptionDef('hide_ldm_prints', True, 'system'),
    OptionDef('dump_stacks_on_signal', False, 'system'),
    # section 'profiler'
    OptionDef('profiling_explanation', _HTML_PROFILING_EXPLANATION, 'profiler', html=True),
    OptionDef('profiling_enable', False, 'profiler'),
    OptionDef('profiling_activities', ('CPU',), 'profiler', choices=('CPU', 'CUDA')),
    OptionDef('profiling_record_shapes', True, 'profiler'),
    OptionDef('profiling_profile_memory', True, 'profiler'),
    OptionDef('profiling_with_stack', True, 'profiler'),
    OptionDef('profiling_filename', 'trace.json', 'profiler'),
    # section 'API'
    OptionDef('api_enable_requests', True, 'API', restrict_api=True),
    OptionDef('api_forbid_local_requests', True, 'API', restrict_api=True),
    OptionDef('api_useragent', '', 'API', restrict_api=True),
    # section 'training'
    OptionDef('unload_models_when_training', False, 'training'),
    OptionDef('pin_memory', False, 'training'),
    OptionDef('save_optimizer_state', False, 'training'),
    OptionDef('save_training_settings_to_txt', True, 'training'),
    OptionDef('dataset_filename_word_regex', '', 'training'),
    OptionDef('dataset_filename_join_string', ' ', 'training'),
    OptionDef('training_image_repeats_per_epoch', 1, 'training'),
    OptionDef('training_write_csv_every', 500, 'training'),
    OptionDef('training_xattention_optimizations', False, 'training'),
    OptionDef('training_enable_tensorboard', False, 'training'),
    OptionDef('training_tensorboard_save_images', False, 'training'),
    OptionDef('training_tensorboard_flush_every', 120, 'training'),
    # section 'sd'
    OptionDef('sd_model_checkpoint', None, 'sd'),
    OptionDef('sd_checkpoints_limit', 1, 'sd'),
    OptionDef('sd_checkpoints_keep_in_cpu', True, 'sd'),
    OptionDef('sd_checkpoint_cache', 0, 'sd'),
    OptionDef('sd_unet', 'Automatic', 'sd'),
    OptionDef('enable_quantization', False, 'sd'),
    OptionDef('emphasis', 'Original', 'sd'),
    OptionDef('enable_batch_seeds', True, 'sd'),
    OptionDef('comma_padding_backtrack', 20, 'sd'),
    OptionDef('sdxl_clip_l_skip', False, 'sd'),
    OptionDef('CLIP_stop_at_last_layers', 1, 'sd'),
    OptionDef('upcast_attn', False, 'sd'),
    OptionDef('randn_source', 'GPU', 'sd', choices=('GPU', 'CPU', 'NV')),
    OptionDef('tiling', False, 'sd'),
    OptionDef('hires_fix_refiner_pass', 'second pass', 'sd', choices=('first pass', 'second pass', 'both passes')),
    # section 'sdxl'
    OptionDef('sdxl_crop_top', 0, 'sdxl'),
    OptionDef('sdxl_crop_left', 0, 'sdxl'),
    OptionDef('sdxl_refiner_low_aesthetic_score', 2.5, 'sdxl'),
    OptionDef('sdxl_refiner_high_aesthetic_score', 6.0, 'sdxl'),
    # section 'sd3'
    OptionDef('sd3_enable_t5', False, 'sd3'),
    # Forge's options (not A1111's): clients detect Forge by forge_additional_modules in GET /options
    OptionDef('forge_preset', 'sd', 'forge', choices=('sd', 'xl', 'flux', 'all')),
    OptionDef('forge_additional_modules', (), 'forge'),
    OptionDef('forge_unet_storage_dtype', 'Automatic', 'forge', choices=FORGE_UNET_STORAGE_DTYPES),
    # section 'vae'
    OptionDef('sd_vae_explanation', _HTML_SD_VAE_EXPLANATION, 'vae', html=True),
    OptionDef('sd_vae_checkpoint_cache', 0, 'vae'),
    OptionDef('sd_vae', 'Automatic', 'vae'),
    OptionDef('sd_vae_overrides_per_model_preferences', True, 'vae'),
    OptionDef('auto_vae_precision_bfloat16', False, 'vae'),
    OptionDef('auto_vae_precision', True, 'vae'),
    OptionDef('sd_vae_encode_method', 'Full', 'vae', choices=('Full', 'TAESD')),
    OptionDef('sd_vae_decode_method', 'Full', 'vae', choices=('Full', 'TAESD')),
    # section 'img2img'
    OptionDef('inpainting_mask_weight', 1.0, 'img2img'),
    OptionDef('initial_noise_multiplier', 1.0, 'img2img'),
    OptionDef('img2img_extra_noise', 0.0, 'img2img'),
    OptionDef('img2img_color_correction', False, 'img2img'),
    OptionDef('img2img_fix_steps', False, 'img2img'),
    OptionDef('img2img_background_color', '#ffffff', 'img2img'),
    OptionDef('img2img_editor_height', 720, 'img2img'),
    OptionDef('img2img_sketch_default_brush_color', '#ffffff', 'img2img'),
    OptionDef('img2img_inpaint_mask_brush_color', '#ffffff', 'img2img'),
    OptionDef('img2img_inpaint_sketch_default_brush_color', '#ffffff', 'img2img'),
    OptionDef('return_mask', False, 'img2img'),
    OptionDef('return_mask_composite', False, 'img2img'),
    OptionDef('img2img_batch_show_results_limit', 32, 'img2img'),
    OptionDef('overlay_inpaint', True, 'img2img'),
    # section 'optimizations'
    OptionDef('cross_attention_optimization', 'Automatic', 'optimizations'),
    OptionDef('s_min_uncond', 0.0, 'optimizations'),
    OptionDef('s_min_uncond_all', False, 'optimizations'),
    OptionDef('token_merging_ratio', 0.0, 'optimizations'),
    OptionDef('token_merging_ratio_img2img', 0.0, 'optimizations'),
    OptionDef('token_merging_ratio_hr', 0.0, 'optimizations'),
    OptionDef('pad_cond_uncond', False, 'optimizations'),
    OptionDef('pad_cond_uncond_v0', False, 'optimizations'),
    OptionDef('persistent_cond_cache', True, 'optimizations'),
    OptionDef('batch_cond_uncond', True, 'optimizations'),
    OptionDef('fp8_storage', 'Disable', 'optimizations', choices=('Disable', 'Enable for SDXL', 'Enable')),
    OptionDef('cache_fp16_weight', False, 'optimizations'),
    # section 'compatibility'
    OptionDef('auto_backcompat', True, 'compatibility'),
    OptionDef('use_old_emphasis_implementation', False, 'compatibility'),
    OptionDef('use_old_karras_scheduler_sigmas', False, 'compatibility'),
    OptionDef('no_dpmpp_sde_batch_determinism', False, 'compatibility'),
    OptionDef('use_old_hires_fix_width_height', False, 'compatibility'),
    OptionDef('hires_fix_use_firstpass_conds', False, 'compatibility'),
    OptionDef('use_old_scheduling', False, 'compatibility'),
    OptionDef('use_downcasted_alpha_bar', False, 'compatibility'),
    OptionDef('refiner_switch_by_sample_steps', False, 'compatibility'),
    # section 'interrogate'
    OptionDef('interrogate_keep_models_in_memory', False, 'interrogate'),
    OptionDef('interrogate_return_ranks', False, 'interrogate'),
    OptionDef('interrogate_clip_num_beams', 1, 'interrogate'),
    OptionDef('interrogate_clip_min_length', 24, 'interrogate'),
    OptionDef('interrogate_clip_max_length', 48, 'interrogate'),
    OptionDef('interrogate_clip_dict_limit', 1500, 'interrogate'),
    OptionDef('interrogate_clip_skip_categories', (), 'interrogate'),
    OptionDef('interrogate_deepbooru_score_threshold', 0.5, 'interrogate'),
    OptionDef('deepbooru_sort_alpha', True, 'interrogate'),
    OptionDef('deepbooru_use_spaces', True, 'interrogate'),
    OptionDef('deepbooru_escape', True, 'interrogate'),
    OptionDef('deepbooru_filter_tags', '', 'interrogate'),
    # section 'extra_networks'
    OptionDef('extra_networks_show_hidden_directories', True, 'extra_networks'),
    OptionDef('extra_networks_dir_button_function', False, 'extra_networks'),
    OptionDef(
        'extra_networks_hidden_models', 'When searched', 'extra_networks',
        choices=('Always', 'When searched', 'Never'),
    ),
    OptionDef('extra_networks_default_multiplier', 1.0, 'extra_networks'),
    OptionDef('extra_networks_card_width', 0, 'extra_networks'),
    OptionDef('extra_networks_card_height', 0, 'extra_networks'),
    OptionDef('extra_networks_card_text_scale', 1.0, 'extra_networks'),
    OptionDef('extra_networks_card_show_desc', True, 'extra_networks'),
    OptionDef('extra_networks_card_description_is_html', False, 'extra_networks'),
    OptionDef(
        'extra_networks_card_order_field', 'Path', 'extra_networks',
        choices=('Path', 'Name', 'Date Created', 'Date Modified'),
    ),
    OptionDef('extra_networks_card_order', 'Ascending', 'extra_networks', choices=('Ascending', 'Descending')),
    OptionDef('extra_networks_tree_view_style', 'Dirs', 'extra_networks', choices=('Tree', 'Dirs')),
    OptionDef('extra_networks_tree_view_default_enabled', True, 'extra_networks'),
    OptionDef('extra_networks_tree_view_default_width', 180, 'extra_networks'),
    OptionDef('extra_networks_add_text_separator', ' ', 'extra_networks'),
    OptionDef('ui_extra_networks_tab_reorder', '', 'extra_networks'),
    OptionDef('textual_inversion_print_at_load', False, 'extra_networks'),
    OptionDef('textual_inversion_add_hashes_to_infotext', True, 'extra_networks'),
    OptionDef('sd_hypernetwork', 'None', 'extra_networks'),
    # section 'ui_prompt_editing'
    OptionDef('keyedit_precision_attention', 0.1, 'ui_prompt_editing'),
    OptionDef('keyedit_precision_extra', 0.05, 'ui_prompt_editing'),
    OptionDef('keyedit_delimiters', '.,\\/!?%^*;:{}=`~() ', 'ui_prompt_editing'),
    OptionDef(
        'keyedit_delimiters_whitespace', ('Tab', 'Carriage Return', 'Line Feed'), 'ui_prompt_editing',
        choices=('Tab', 'Carriage Return', 'Line Feed'),
    ),
    OptionDef('keyedit_move', True, 'ui_prompt_editing'),
    OptionDef('disable_token_counters', False, 'ui_prompt_editing'),
    OptionDef('include_styles_into_token_counters', True, 'ui_prompt_editing'),
    # section 'ui_gallery'
    OptionDef('return_grid', True, 'ui_gallery'),
    OptionDef('do_not_show_images', False, 'ui_gallery'),
    OptionDef('js_modal_lightbox', True, 'ui_gallery'),
    OptionDef('js_modal_lightbox_initially_zoomed', True, 'ui_gallery'),
    OptionDef('js_modal_lightbox_gamepad', False, 'ui_gallery'),
    OptionDef('js_modal_lightbox_gamepad_repeat', 250, 'ui_gallery'),
    OptionDef('sd_webui_modal_lightbox_icon_opacity', 1, 'ui_gallery'),
    OptionDef('sd_webui_modal_lightbox_toolbar_opacity', 0.9, 'ui_gallery'),
    OptionDef('gallery_height', '', 'ui_gallery'),
    OptionDef(
        'open_dir_button_choice', 'Subdirectory', 'ui_gallery',
        choices=('Output Root', 'Subdirectory', 'Subdirectory (even temp dir)'),
    ),
    # section 'ui_alternatives'
    OptionDef('compact_prompt_box', False, 'ui_alternatives'),
    OptionDef('samplers_in_dropdown', True, 'ui_alternatives'),
    OptionDef('dimensions_and_batch_together', True, 'ui_alternatives'),
    OptionDef('sd_checkpoint_dropdown_use_short', False, 'ui_alternatives'),
    OptionDef('hires_fix_show_sampler', False, 'ui_alternatives'),
    OptionDef('hires_fix_show_prompts', False, 'ui_alternatives'),
    OptionDef('txt2img_settings_accordion', False, 'ui_alternatives'),
    OptionDef('img2img_settings_accordion', False, 'ui_alternatives'),
    OptionDef('interrupt_after_current', True, 'ui_alternatives'),
    # section 'ui'
    OptionDef('localization', 'None', 'ui'),
    OptionDef('quicksettings_list', ('sd_model_checkpoint',), 'ui'),
    OptionDef('ui_tab_order', (), 'ui'),
    OptionDef('hidden_tabs', (), 'ui'),
    OptionDef('ui_reorder_list', (), 'ui'),
    OptionDef('gradio_theme', 'Default', 'ui'),
    OptionDef('gradio_themes_cache', True, 'ui'),
    OptionDef('show_progress_in_title', True, 'ui'),
    OptionDef('send_seed', True, 'ui'),
    OptionDef('send_size', True, 'ui'),
    OptionDef('enable_reloading_ui_scripts', False, 'ui'),
    # section 'infotext'
    OptionDef('infotext_explanation', _HTML_INFOTEXT_EXPLANATION, 'infotext', html=True),
    OptionDef('enable_pnginfo', True, 'infotext'),
    OptionDef('save_txt', False, 'infotext'),
    OptionDef('add_model_name_to_info', True, 'infotext'),
    OptionDef('add_model_hash_to_info', True, 'infotext'),
    OptionDef('add_vae_name_to_info', True, 'infotext'),
    OptionDef('add_vae_hash_to_info', True, 'infotext'),
    OptionDef('add_user_name_to_info', False, 'infotext'),
    OptionDef('add_version_to_infotext', True, 'infotext'),
    OptionDef('disable_weights_auto_swap', True, 'infotext'),
    OptionDef('infotext_skip_pasting', (), 'infotext'),
    OptionDef('infotext_styles', 'Apply if any', 'infotext', choices=('Ignore', 'Apply', 'Discard', 'Apply if any')),
    # section 'ui'
    OptionDef('show_progressbar', True, 'ui'),
    OptionDef('live_previews_enable', True, 'ui'),
    OptionDef('live_previews_image_format', 'png', 'ui', choices=('jpeg', 'png', 'webp')),
    OptionDef('show_progress_grid', True, 'ui'),
    OptionDef('show_progress_every_n_steps', 10, 'ui'),
    OptionDef('show_progress_type', 'Approx NN', 'ui', choices=('Full', 'Approx NN', 'Approx cheap', 'TAESD')),
    OptionDef('live_preview_allow_lowvram_full', False, 'ui'),
    OptionDef('live_preview_content', 'Prompt', 'ui', choices=('Combined', 'Prompt', 'Negative prompt')),
    OptionDef('live_preview_refresh_period', 1000, 'ui'),
    OptionDef('live_preview_fast_interrupt', False, 'ui'),
    OptionDef('js_live_preview_in_modal_lightbox', False, 'ui'),
    OptionDef('prevent_screen_sleep_during_generation', True, 'ui'),
    # section 'sampler-params'
    OptionDef('hide_samplers', (), 'sampler-params'),
    OptionDef('eta_ddim', 0.0, 'sampler-params'),
    OptionDef('eta_ancestral', 1.0, 'sampler-params'),
    OptionDef('ddim_discretize', 'uniform', 'sampler-params', choices=('uniform', 'quad')),
    OptionDef('s_churn', 0.0, 'sampler-params'),
    OptionDef('s_tmin', 0.0, 'sampler-params'),
    OptionDef('s_tmax', 0.0, 'sampler-params'),
    OptionDef('s_noise', 1.0, 'sampler-params'),
    OptionDef('sigma_min', 0.0, 'sampler-params'),
    OptionDef('sigma_max', 0.0, 'sampler-params'),
    OptionDef('rho', 0.0, 'sampler-params'),
    OptionDef('eta_noise_seed_delta', 0, 'sampler-params'),
    OptionDef('always_discard_next_to_last_sigma', False, 'sampler-params'),
    OptionDef('sgm_noise_multiplier', False, 'sampler-params'),
    OptionDef('uni_pc_variant', 'bh1', 'sampler-params', choices=('bh1', 'bh2', 'vary_coeff')),
    OptionDef(
        'uni_pc_skip_type', 'time_uniform', 'sampler-params',
        choices=('time_uniform', 'time_quadratic', 'logSNR'),
    ),
    OptionDef('uni_pc_order', 3, 'sampler-params'),
    OptionDef('uni_pc_lower_order_final', True, 'sampler-params'),
    OptionDef('sd_noise_schedule', 'Default', 'sampler-params', choices=('Default', 'Zero Terminal SNR')),
    OptionDef('skip_early_cond', 0.0, 'sampler-params'),
    OptionDef('beta_dist_alpha', 0.6, 'sampler-params'),
    OptionDef('beta_dist_beta', 0.6, 'sampler-params'),
    # section 'postprocessing'
    OptionDef('postprocessing_enable_in_main_ui', (), 'postprocessing'),
    OptionDef('postprocessing_disable_in_extras', (), 'postprocessing'),
    OptionDef('postprocessing_operation_order', (), 'postprocessing'),
    OptionDef('upscaling_max_images_in_cache', 5, 'postprocessing'),
    OptionDef(
        'postprocessing_existing_caption_action', 'Ignore', 'postprocessing',
        choices=('Ignore', 'Keep', 'Prepend', 'Append'),
    ),
    # section None
    OptionDef('disabled_extensions', (), None),
    OptionDef('disable_all_extensions', 'none', None, choices=('none', 'extra', 'all')),
    OptionDef('restore_config_state_file', '', None),
    OptionDef('sd_checkpoint_hash', '', None),
    # section 'sd'
    OptionDef('enable_prompt_comments', True, 'sd'),
    # section 'extra_networks'
    OptionDef('sd_lora', 'None', 'extra_networks'),
    OptionDef('lora_preferred_name', 'Alias from file', 'extra_networks', choices=('Alias from file', 'Filename')),
    OptionDef('lora_add_hashes_to_infotext', True, 'extra_networks'),
    OptionDef('lora_bundled_ti_to_infotext', True, 'extra_networks'),
    OptionDef('lora_show_all', False, 'extra_networks'),
    OptionDef('lora_hide_unknown_for_versions', (), 'extra_networks', choices=('SD1', 'SD2', 'SDXL')),
    OptionDef('lora_in_memory_limit', 0, 'extra_networks'),
    OptionDef('lora_not_found_warning_console', False, 'extra_networks'),
    OptionDef('lora_not_found_gradio_warning', False, 'extra_networks'),
    # section 'compatibility'
    OptionDef('lora_functional', False, 'compatibility'),
    # section 'canvas_hotkey'
    OptionDef('canvas_hotkey_zoom', 'Alt', 'canvas_hotkey', choices=('Shift', 'Ctrl', 'Alt')),
    OptionDef('canvas_hotkey_adjust', 'Ctrl', 'canvas_hotkey', choices=('Shift', 'Ctrl', 'Alt')),
    OptionDef('canvas_hotkey_shrink_brush', 'Q', 'canvas_hotkey'),
    OptionDef('canvas_hotkey_grow_brush', 'W', 'canvas_hotkey'),
    OptionDef('canvas_hotkey_move', 'F', 'canvas_hotkey'),
    OptionDef('canvas_hotkey_fullscreen', 'S', 'canvas_hotkey'),
    OptionDef('canvas_hotkey_reset', 'R', 'canvas_hotkey'),
    OptionDef('canvas_hotkey_overlap', 'O', 'canvas_hotkey'),
    OptionDef('canvas_show_tooltip', True, 'canvas_hotkey'),
    OptionDef('canvas_auto_expand', True, 'canvas_hotkey'),
    OptionDef('canvas_blur_prompt', False, 'canvas_hotkey'),
    OptionDef(
        "canvas_disabled_functions",
        ("Overlap",),
        "canvas_hotkey",
        choices=(
            "Zoom",
            "Adjust brush size",
            "Hotkey enlarge brush",
            "Hotkey shrink brush",
            "Moving canvas",
            "Fullscreen",
            "Reset Zoom",
            "Overlap",
        ),
    ),
    # section 'settings_in_ui'
    OptionDef('settings_in_ui', _HTML_SETTINGS_IN_UI, 'settings_in_ui', html=True),
    OptionDef('extra_options_txt2img', (), 'settings_in_ui'),
    OptionDef('extra_options_img2img', (), 'settings_in_ui'),
    OptionDef('extra_options_cols', 1, 'settings_in_ui'),
    OptionDef('extra_options_accordion', False, 'settings_in_ui'),
    # section 'upscaling'
    OptionDef('ldsr_steps', 100, 'upscaling'),
    OptionDef('ldsr_cached', False, 'upscaling'),
    OptionDef('SCUNET_tile', 256, 'upscaling'),
    OptionDef('SCUNET_tile_overlap', 8, 'upscaling'),
    OptionDef('SWIN_tile', 192, 'upscaling'),
    OptionDef('SWIN_tile_overlap', 8, 'upscaling'),
    OptionDef('SWIN_torch_compile', False, 'upscaling'),
    # section 'hypertile'
    OptionDef('hypertile_explanation', _HTML_HYPERTILE_EXPLANATION, 'hypertile', html=True),
    OptionDef('hypertile_enable_unet', False, 'hypertile'),
    OptionDef('hypertile_enable_unet_secondpass', False, 'hypertile'),
    OptionDef('hypertile_max_depth_unet', 3, 'hypertile'),
    OptionDef('hypertile_max_tile_unet', 256, 'hypertile'),
    OptionDef('hypertile_swap_size_unet', 3, 'hypertile'),
    OptionDef('hypertile_enable_vae', False, 'hypertile'),
    OptionDef('hypertile_max_depth_vae', 3, 'hypertile'),
    OptionDef('hypertile_max_tile_vae', 128, 'hypertile'),
    OptionDef('hypertile_swap_size_vae', 3, 'hypertile'),
    # section 'control_net': sd-webui-controlnet's settings (its on_ui_settings), registered
    # because its API is served here. Read: control_net_no_detectmap, control_net_unit_count,
    # control_net_model_cache_size; the others are stored and listed only (docs/controlnet.md).
    OptionDef('control_net_detectedmap_dir', 'detected_maps', 'control_net'),
    OptionDef('control_net_models_path', '', 'control_net'),
    OptionDef('control_net_modules_path', '', 'control_net'),
    OptionDef('control_net_unit_count', 3, 'control_net'),
    OptionDef('control_net_model_cache_size', 5, 'control_net'),
    OptionDef('control_net_no_detectmap', False, 'control_net'),
    OptionDef('control_net_detectmap_autosaving', False, 'control_net'),
    OptionDef('control_net_allow_script_control', False, 'control_net'),
    OptionDef('control_net_sync_field_args', True, 'control_net'),
    OptionDef('controlnet_show_batch_images_in_ui', False, 'control_net'),
    OptionDef('controlnet_increment_seed_during_batch', False, 'control_net'),
    OptionDef('controlnet_disable_openpose_edit', False, 'control_net'),
    OptionDef('controlnet_disable_photopea_edit', False, 'control_net'),
    OptionDef('controlnet_photopea_warning', True, 'control_net'),
    OptionDef('controlnet_input_thumbnail', True, 'control_net'),
    # This server's own (not A1111's): zlib level 0-9 of result PNGs; 1 is fast (docs/benchmarks.md).
    OptionDef('png_compress_level', 1, 'saving-images'),
)

OPTIONS_BY_KEY: dict[str, OptionDef] = {option.key: option for option in OPTION_DEFS}

# Keys whose API writes A1111 silently drops (api_enable_requests, api_forbid_local_requests, api_useragent).
RESTRICT_API_KEYS: frozenset[str] = frozenset(option.key for option in OPTION_DEFS if option.restrict_api)
