"""The job board's bookkeeping, as plain Python (the Ray actor wraps this class unchanged)."""

from __future__ import annotations

import pytest

from webui_api.cluster.board import JobBoard


def test_flags_reach_only_the_job_they_name():
    board = JobBoard()
    board.register("a", "replica-1", "actor-1", "alpha|Automatic")
    board.register("b", "replica-2", "actor-2", "beta|Automatic")
    assert board.request("b", "interrupt") is True
    assert board.sync("a", None) == {"interrupt": [], "skip": []}
    assert board.sync("b", {"state": {}})["interrupt"] == [0]
    assert board.progress("b") == {"state": {}}


def test_a_flag_set_before_the_replica_registered_is_kept():
    board = JobBoard()
    assert board.request("a", "interrupt") is False
    board.register("a", "replica-1", "actor-1", "m")
    assert board.sync("a", None)["interrupt"] == [0]


def test_skip_is_delivered_once_interrupt_stays():
    board = JobBoard()
    board.register("a", "r", "n", "m")
    board.request("a", "skip")
    board.request("a", "interrupt")
    assert board.sync("a", None) == {"interrupt": [0], "skip": [0]}
    assert board.sync("a", None) == {"interrupt": [0], "skip": []}


def test_flags_name_the_member_of_a_batch_call():
    """A call carrying several requests' jobs: one request's interrupt names only its member."""
    board = JobBoard()
    board.request("a", "interrupt", 2)  # before the replica registered
    board.register("a", "r", "n", "m")
    board.request("a", "skip", 1)
    assert board.sync("a", None) == {"interrupt": [2], "skip": [1]}


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


class RecordingBoard:
    """The board actor's `request.remote` as a recorder (the lane's side of the flags)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        board = self

        class Request:
            @staticmethod
            def remote(job_id: str, flag: str, member: int = 0) -> None:
                board.requests.append((job_id, flag, member))

        self.request = Request()


def test_the_lane_forwards_each_members_flags_and_every_new_skip():
    """One request of a batch call interrupted: only its member is named. A second /skip after
    the first was forwarded reaches the replica again (each skips one batch, as in A1111)."""
    pytest.importorskip("ray")
    from webui_api.cluster.lanes import RayWorker, _Mirrored
    from webui_api.progress import CancelToken
    from webui_api.scheduler import WorkItem
    from webui_api.workers import AnyCancel

    tokens = [CancelToken(), CancelToken()]
    item = WorkItem(run=lambda _c: None, label="txt2img", cancel=AnyCancel(tokens))
    board = RecordingBoard()
    lane, seen = RayWorker("ray-0", handle=None, board=board), _Mirrored()
    tokens[1].interrupt()
    lane._watch("job", item, None, seen)
    lane._watch("job", item, None, seen)
    assert board.requests == [("job", "interrupt", 1)] and not tokens[0].interrupted
    for _ in range(2):
        tokens[0].skip()
        lane._watch("job", item, None, seen)
    assert board.requests[1:] == [("job", "skip", 0), ("job", "skip", 0)]
