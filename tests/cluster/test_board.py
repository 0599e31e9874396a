"""The job board's bookkeeping, as plain Python (the Ray actor wraps this class unchanged)."""

from __future__ import annotations

import pytest

from webui_api.cluster.board import JobBoard


def test_flags_reach_only_the_job_they_name():
    board = JobBoard()
    board.register("a", "replica-1", "actor-1", "alpha|Automatic")
    board.register("b", "replica-2", "actor-2", "beta|Automatic")
    assert board.request("b", "interrupt") is True
    assert board.sync("a", None) == {"interrupt": False, "skip": False}
    assert board.sync("b", {"state": {}})["interrupt"] is True
    assert board.progress("b") == {"state": {}}


def test_a_flag_set_before_the_replica_registered_is_kept():
    board = JobBoard()
    assert board.request("a", "interrupt") is False
    board.register("a", "replica-1", "actor-1", "m")
    assert board.sync("a", None)["interrupt"] is True


def test_skip_is_delivered_once_interrupt_stays():
    board = JobBoard()
    board.register("a", "r", "n", "m")
    board.request("a", "skip")
    board.request("a", "interrupt")
    assert board.sync("a", None) == {"interrupt": True, "skip": True}
    assert board.sync("a", None) == {"interrupt": True, "skip": False}


def test_finished_jobs_remember_their_replica_and_interrupt():
    board = JobBoard()
    board.register("a", "r1", "n1", "alpha|Automatic")
    board.request("a", "interrupt")
    board.unregister("a")
    assert board.running() == {}
    assert board.replica_of("a") == "r1"
    (done,) = board.finished()
    assert (done["replica"], done["model_key"], done["interrupted"]) == ("r1", "alpha|Automatic", True)


def test_unknown_flag_is_refused():
    with pytest.raises(ValueError):
        JobBoard().request("a", "explode")
