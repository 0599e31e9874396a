"""An async task is accepted only when it can run: with downloads off (--offline, the test
default) and face restoration or upscaler weights missing, both agent-scheduler submission
routes answer the synchronous route's 400 (file, folder, fetch command) and store nothing.
A script's later jobs count too: a prompt line or an x/y/z cell that turns face restoration on
is refused before the run is queued (sync) or stored (async), not after its first jobs ran."""

from __future__ import annotations

import pytest

from tests.api.payloads import a1111_img2img_payload, webuiapi_txt2img
from tests.api.test_first_use_weights import online
from tests.api.test_tasks import wait_for_status
from tests.postprocess.face_weights import write_faceless_detector
from tests.security.helpers import assert_a1111_error, png_b64
from tests.security.test_c6_script_guards import prompts_script, xyz_script
from tests.weights.mirror import MirrorState, serve_mirror
from tests.weights.tiny_files import origin_path, pinned_to
from webui_api.weights import WeightsRegistry

QUEUE = "/agent-scheduler/v1/queue"
GFPGAN = {"restore_faces": True, "override_settings": {"face_restoration_model": "GFPGAN"}}


def txt2img_restoring() -> dict:
    return webuiapi_txt2img(steps=1, **GFPGAN)


def img2img_restoring() -> dict:
    return a1111_img2img_payload(init_images=[png_b64()], steps=1, **GFPGAN)


def sd_upscale() -> dict:
    return a1111_img2img_payload(init_images=[png_b64()], script_name="sd upscale",
                                 script_args=["", 8, "R-ESRGAN 4x+", 2.0])


def xyz_restoring() -> dict:
    return {**xyz_script("Seed", "1, 2"), **GFPGAN}


def prompt_line_restoring() -> dict:
    """Only the second line asks for face restoration (the face model comes from the request)."""
    body = prompts_script("plain\n--prompt \"a face\" --restore_faces true")
    return {**body, "override_settings": {"face_restoration_model": "GFPGAN"}}


def xyz_cell_restoring() -> dict:
    """Only the second cell of the "Face restore" axis restores faces."""
    return xyz_script("Face restore", "False, GFPGAN")


def stored_tasks(client) -> int:
    store = client.app.state.task_runner.store
    return sum(store.count(status) for status in ("pending", "running", "done", "failed", "interrupted"))


@pytest.mark.parametrize(
    ("tab", "payload", "command", "missing"),
    [
        ("txt2img", txt2img_restoring, 'webui-api models fetch "GFPGAN"', "GFPGANv1.4.pth"),
        ("img2img", img2img_restoring, 'webui-api models fetch "GFPGAN"', "GFPGANv1.4.pth"),
        ("img2img", sd_upscale, 'webui-api models fetch "R-ESRGAN 4x+"', "RealESRGAN_x4plus.pth"),
        ("txt2img", xyz_restoring, 'webui-api models fetch "GFPGAN"', "GFPGANv1.4.pth"),
        ("txt2img", prompt_line_restoring, 'webui-api models fetch "GFPGAN"', "GFPGANv1.4.pth"),
        ("txt2img", xyz_cell_restoring, 'webui-api models fetch "GFPGAN"', "GFPGANv1.4.pth"),
    ],
)
def test_offline_missing_weights_refuse_the_task_as_the_sync_route_does(client, tmp_path, tab, payload, command,
                                                                         missing):
    sync = client.post(f"/sdapi/v1/{tab}", json=payload())
    body = assert_a1111_error(sync, 400, command, missing, str(tmp_path / "models"))  # the sync path, unchanged
    task = client.post(f"{QUEUE}/{tab}", json=payload())
    assert task.json() == body and task.status_code == 400
    assert stored_tasks(client) == 0


def test_a_task_whose_weights_can_be_fetched_is_accepted_and_fetches_them_when_it_runs(client, tmp_path):
    detector = write_faceless_detector(tmp_path / "src" / "detector.pth").read_bytes()
    files = {"GFPGAN": b"GFPGAN weights: never loaded, no face is found", "facexlib detection": detector,
             "facexlib parsing": b"parser weights: never loaded, no face is found"}
    registry, served = WeightsRegistry.builtin(), {}
    for name, data in files.items():
        registry, entry = pinned_to(registry, name, data)
        served[origin_path(entry)] = data
    state = MirrorState(files=served)
    with serve_mirror(state) as mirror:
        online(client, registry, mirror)
        response = client.post(f"{QUEUE}/txt2img", json=txt2img_restoring())
        assert response.status_code == 200, response.text
        task = wait_for_status(client, response.json()["task_id"])
    assert task["status"] == "done", task
    assert (tmp_path / "models" / "GFPGAN" / "GFPGANv1.4.pth").is_file()


def test_a_task_with_its_weights_present_is_accepted_offline(client, tmp_path):
    """Offline is no refusal in itself: only a file that is missing is."""
    folder = tmp_path / "models" / "GFPGAN"
    folder.mkdir(parents=True)
    (folder / "GFPGANv1.4.pth").write_bytes(b"never loaded: no face is found")
    write_faceless_detector(folder / "detection_Resnet50_Final.pth")
    response = client.post(f"{QUEUE}/txt2img", json=txt2img_restoring())
    assert response.status_code == 200, response.text
