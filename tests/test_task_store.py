"""The SQLite task store: ordering, recovery after a crash, result files."""

from __future__ import annotations

import pytest

from webui_api.tasks import DONE, FAILED, PENDING, RUNNING, TaskStore


def test_tasks_come_out_in_submission_order_with_positions(tmp_path):
    store = TaskStore(tmp_path)
    ids = [store.create("txt2img", {"seed": i}).id for i in range(3)]
    assert [t.id for t in store.pending()] == ids and store.next_pending().params == {"seed": 0}
    assert [store.position(store.get(i)) for i in ids] == [0, 1, 2]
    store.mark_running(ids[0])
    assert store.position(store.get(ids[0])) is None and store.position(store.get(ids[1])) == 0


def test_a_crash_requeues_running_tasks_once_then_fails_them(tmp_path):
    store = TaskStore(tmp_path)
    task = store.create("txt2img", {"seed": 1})
    store.mark_running(task.id)
    store.close()  # the process dies here

    store = TaskStore(tmp_path)
    assert store.recover().requeued == 1 and store.get(task.id).status == PENDING
    store.mark_running(task.id)  # the retry; the process dies again
    store.close()

    store = TaskStore(tmp_path)
    report = store.recover()
    failed = store.get(task.id)
    assert (report.requeued, report.failed) == (0, 1)
    assert failed.status == FAILED and "2 times" in failed.error


def test_a_graceful_stop_does_not_use_up_the_retry(tmp_path):
    store = TaskStore(tmp_path)
    task = store.create("txt2img", {})
    store.mark_running(task.id)
    store.return_to_queue(task.id)
    assert store.get(task.id).attempts == 0 and store.get(task.id).status == PENDING


def test_results_are_files_and_survive_reopening(tmp_path):
    store = TaskStore(tmp_path)
    task = store.create("txt2img", {})
    store.mark_running(task.id)
    store.finish(task.id, {"images": ["abc"], "info": "{}"})
    store.close()
    reopened = TaskStore(tmp_path)
    assert reopened.get(task.id).status == DONE and reopened.result(task.id) == {"images": ["abc"], "info": "{}"}
    assert (tmp_path / "results" / f"{task.id}.json").is_file()
    assert reopened.delete(task.id) and reopened.get(task.id) is None and not reopened.delete(task.id)
    assert not (tmp_path / "results" / f"{task.id}.json").exists()


def test_bad_types_and_ids_are_refused(tmp_path):
    store = TaskStore(tmp_path)
    with pytest.raises(ValueError, match="task type must be one of"):
        store.create("extras", {})
    with pytest.raises(ValueError, match="UUIDs"):
        store.result_path("../../etc/passwd")
    assert store.get("../x") is None and store.count(RUNNING) == 0
