"""A1111's `sd_noise_schedule` through the API: per job in override_settings, written to the
infotext as `Noise Schedule`, read back by png-info; an unknown value acts as "Default" (A1111
only compares against "Zero Terminal SNR")."""

from __future__ import annotations


def _txt2img(client, **overrides):
    payload = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler",
               "override_settings": overrides}
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def test_zero_terminal_snr_per_job_and_in_infotext(client):
    default = _txt2img(client)
    ztsnr = _txt2img(client, sd_noise_schedule="Zero Terminal SNR")
    assert "Noise Schedule: Zero Terminal SNR" in ztsnr["info"] and "Noise Schedule" not in default["info"]
    assert ztsnr["images"][0] != default["images"][0]
    assert _txt2img(client)["images"][0] == default["images"][0]  # the override did not leak
    params = client.post("/sdapi/v1/png-info", json={"image": ztsnr["images"][0]}).json()["parameters"]
    assert params["Noise Schedule"] == "Zero Terminal SNR"
    assert _txt2img(client, sd_noise_schedule="something else")["images"][0] == default["images"][0]
