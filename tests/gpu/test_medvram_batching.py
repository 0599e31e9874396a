"""--medvram / --medvram-sdxl / --lowvram turn cross-request batching off: N jobs in one UNet
batch need about N times the activation memory those modes exist to save."""

from __future__ import annotations

import logging

import pytest

from webui_api.batching import BatchingConfig, batch_size_for_vram


@pytest.mark.parametrize(
    ("vram_mode", "expected"), [("normal", 4), ("medvram", 1), ("medvram-sdxl", 1), ("lowvram", 1)]
)
def test_batch_size_per_vram_mode(vram_mode: str, expected: int) -> None:
    assert batch_size_for_vram(4, vram_mode) == expected
    assert batch_size_for_vram(1, vram_mode) == 1


def test_server_config_logs_when_it_turns_batching_off(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="webui_api.batching"):
        assert not BatchingConfig.for_server(4, 10.0, "medvram").enabled
        assert BatchingConfig.for_server(1, 10.0, "lowvram").max_size == 1  # already off: nothing to say
        assert BatchingConfig.for_server(4, 25.0, "normal") == BatchingConfig(4, 25.0)
    assert [record.getMessage().split(":")[0] for record in caplog.records] == ["--medvram"]


def test_the_server_scheduler_follows_the_decision(make_client) -> None:
    medvram = make_client(batch_max_size=4, vram_mode="medvram")
    assert not medvram.app.state.runtime.scheduler.batching.enabled
    normal = make_client(batch_max_size=4)
    assert normal.app.state.runtime.scheduler.batching.max_size == 4
