"""Request bodies as real clients send them (facts from the clients reference)."""

from __future__ import annotations


def webuiapi_txt2img(**overrides):
    """What the `webuiapi` package's txt2img() sends: every field, nulls included."""
    payload = {
        "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
        "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None,
        "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7,
        "firstphase_width": 0, "firstphase_height": 0, "prompt": "a photo of a cat", "styles": [],
        "seed": 1234, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
        "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 4, "cfg_scale": 7.0,
        "width": 64, "height": 64, "restore_faces": False, "tiling": False,
        "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "blurry",
        "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
        "override_settings_restore_afterwards": True, "sampler_name": "Euler a",
        "scheduler": "automatic", "sampler_index": "Euler a", "script_name": None, "script_args": [],
        "send_images": True, "save_images": False, "alwayson_scripts": {},
    }
    payload.update(overrides)
    return payload


def a1111_test_payload(**overrides):
    """The base payload of A1111's own test/test_txt2img.py."""
    payload = {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
        "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
        "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0,
        "s_tmin": 0, "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1,
        "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1, "subseed_strength": 0,
        "tiling": False, "width": 64,
    }
    payload.update(overrides)
    return payload


def a1111_img2img_payload(**overrides):
    """The base payload of A1111's own test/test_img2img.py (init_images left to the caller)."""
    payload = {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": None, "inpaint_full_res": False,
        "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
        "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
        "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }
    payload.update(overrides)
    return payload
