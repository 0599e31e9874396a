"""Class 9: no surprises. Runtime files (audit log, result cache, task store) live under the
data dir; --listen without auth is warned about; the audit log rotates, keeps a bounded number
of files for a bounded time, can redact prompts and can be turned off."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from tests.api.payloads import webuiapi_txt2img
from webui_api.auth import exposure_warnings
from webui_api.cli import parse_args
from webui_api.serving.audit import AuditLog, AuditPolicy

REPO = Path(__file__).resolve().parents[2]


def _tree(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if ".pytest_cache" not in path.parts and "__pycache__" not in path.parts}


def test_runtime_files_land_in_the_data_dir_not_the_working_dir(engine, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from webui_api.app import create_app

    data, cwd = tmp_path / "data", tmp_path / "cwd"
    data.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings, _ = parse_args(["--data-dir", str(data), "--api"])
    with TestClient(create_app(settings, engine=engine)) as client:
        assert client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=3)).status_code == 200
        assert client.post("/sdapi/v1/txt2img", json=webuiapi_txt2img(seed=3)).headers["X-Cache"] == "hit"
        task = client.post("/agent-scheduler/v1/queue/txt2img", json=webuiapi_txt2img(steps=1)).json()["task_id"]
        assert task
    assert _tree(cwd) == set()
    assert (data / "logs" / "audit.jsonl").is_file() and (data / "tasks" / "tasks.sqlite3").is_file()
    assert any((data / "cache").rglob("*"))


def test_runtime_folders_are_ignored_by_git():
    ignored = (REPO / ".gitignore").read_text().split()
    assert {"cache/", "logs/", "tasks/", "cache.json"} <= set(ignored)


@pytest.mark.parametrize(("argv", "warned"), [
    (["--listen"], True),
    (["--server-name", "192.168.1.20"], True),
    (["--listen", "--api-auth", "u:p"], False),
    ([], False),
    (["--server-name", "127.0.0.1"], False),
])
def test_listen_without_auth_is_warned_about(tmp_path, argv, warned):
    settings, _ = parse_args(["--data-dir", str(tmp_path), *argv])
    warnings = exposure_warnings(settings)
    assert bool(warnings) is warned
    if warned:
        assert "WITHOUT authentication" in warnings[0]


def test_the_warning_reaches_the_startup_log(make_client, caplog):
    with caplog.at_level(logging.WARNING):
        make_client(host="0.0.0.0")
    assert any("WITHOUT authentication" in record.getMessage() for record in caplog.records)


def _entry(index: int, prompt: str = "a cat") -> dict:
    return {"time": "2026-01-01T00:00:00+00:00", "caller": "alice", "route": "txt2img", "n": index,
            "params": {"prompt": prompt, "negative_prompt": "ugly", "steps": 4, "script_args": ["secret list"],
                       "alwayson_scripts": {"adetailer": {"args": [{"ad_prompt": "face"}]}}}}


def test_the_audit_log_rotates_by_size_and_keeps_a_bounded_number_of_files(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", AuditPolicy(max_bytes=600, keep_files=2, rotate_seconds=0))
    for index in range(20):
        log.write(_entry(index))
    rotated = log.rotated_files()
    assert [path.name for path in rotated] == ["audit.jsonl.1", "audit.jsonl.2"]
    assert all(path.stat().st_size <= 600 for path in [log.path, *rotated])
    newest = [json.loads(line)["n"] for line in log.path.read_text().splitlines()]
    assert newest[-1] == 19 and not (tmp_path / "audit.jsonl.3").exists()


def test_the_audit_log_rotates_by_age_and_drops_expired_files(tmp_path):
    path = tmp_path / "audit.jsonl"
    old = path.with_name("audit.jsonl.1")
    old.write_text("{}\n")
    past = time.time() - 40 * 86400
    os.utime(old, (past, past))
    path.write_text(json.dumps(_entry(0)) + "\n")  # first entry dated 2026-01-01: older than a day
    log = AuditLog(path, AuditPolicy(retention_days=30))
    assert not old.exists()  # past retention: deleted at start
    log.write(_entry(1))
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [1]
    assert json.loads(path.with_name("audit.jsonl.1").read_text())["n"] == 0


def test_prompts_can_be_redacted(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", AuditPolicy(redact_prompts=True))
    log.write(_entry(0, prompt="my private idea"))
    text = (tmp_path / "audit.jsonl").read_text()
    assert "private idea" not in text and "ugly" not in text and "secret list" not in text and "face" not in text
    params = json.loads(text)["params"]
    assert params["steps"] == 4 and params["prompt"].startswith("<redacted")


def test_audit_flags_reach_the_settings_and_off_disables_it(tmp_path):
    settings, _ = parse_args(["--data-dir", str(tmp_path), "--audit-log-max-mb", "5", "--audit-log-keep", "3",
                              "--audit-log-retention-days", "7", "--audit-redact-prompts"])
    assert settings.audit == AuditPolicy(max_bytes=5 * 1024 * 1024, keep_files=3, retention_days=7.0,
                                         rotate_seconds=24 * 3600.0, redact_prompts=True)
    assert settings.audit_log == tmp_path / "logs" / "audit.jsonl"
    off, _ = parse_args(["--data-dir", str(tmp_path), "--audit-log", "off"])
    assert off.audit_log is None
    AuditLog(None).write(_entry(0))  # no file, no error
