"""The device suite's --smoke run (CPU, tiny SD1 + SDXL checkpoints): every section runs and reports
(slow: 1-2 min)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {"write_checkpoint", "gpu_noise", "diffusers_eager", "engine_eager", "engine_tome", "samplers",
            "clients_batching_off",
            "clients_batching_on", "batched_equals_alone", "engine_compile"}


@pytest.mark.slow
def test_smoke_run_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["meta"]["mode"] == "smoke"
    for family in ("sd1", "sdxl"):
        sections = report["results"][family]
        assert set(sections) == SECTIONS
        assert sections["batched_equals_alone"]["bit_identical"] == sections["batched_equals_alone"]["images"]
        assert sections["samplers"]["samplers"] >= 20
        assert f"| {family} | engine_eager |" in done.stdout


def test_markdown_lists_failures_and_speedups_are_ratios() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_suite

    report = gpu_suite.Report(meta={})
    report.results["sd1"] = {"diffusers_eager": {"s_per_step": 0.02}, "engine_eager": {"s_per_step": 0.01}}
    report.results["sd1"]["engine_compile"] = {"s_per_step": None}
    report.results["sd1"]["engine_tome"] = {"s_per_step": 0.008, "tome_ratio": 0.5}
    report.errors["sd1/engine_compile"] = "RuntimeError: boom"
    gpu_suite.speedups(report)
    assert report.results["sd1"]["engine_eager"]["vs_diffusers"] == 2.0
    assert "vs_diffusers" not in report.results["sd1"]["engine_compile"]
    assert report.results["sd1"]["engine_tome"]["vs_engine_eager"] == 1.25
    table = gpu_suite.markdown(report)
    assert "| sd1/engine_compile | FAILED |" in table and "boom" in table
