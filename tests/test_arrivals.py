"""An idle engine takes a burst of near-simultaneous requests together; a busy one never waits."""

from __future__ import annotations

import queue
import threading
import time

from core.engine.arrivals import take_burst


def put_later(q: queue.Queue, items: list, delay_s: float) -> threading.Thread:
    def run() -> None:
        for item in items:
            time.sleep(delay_s)
            q.put(item)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_idle_worker_gathers_requests_that_arrive_just_after_the_first():
    q: queue.Queue = queue.Queue()
    q.put("first")
    late = put_later(q, ["second", "third"], delay_s=0.01)
    # a generous gap, so that a slow machine still delivers within it: without gathering, the call returns at
    # once with "first" alone, 10 ms before "second" exists
    assert take_burst(q, room=8, wait_for_first=True, gap_s=1.0, max_s=5.0) == ["first", "second", "third"]
    late.join()


class NeverWait(queue.Queue):
    """A queue on which waiting is a failure: a `get` that could block (for any time at all) raises AssertionError,
    so a caller that would wait for an arrival is caught whether or not something would have arrived meanwhile."""

    def get(self, block: bool = True, timeout: float | None = None):
        if block and (timeout is None or timeout > 0):
            raise AssertionError(f"a busy worker waited for arrivals: get(block=True, timeout={timeout})")
        return super().get(block, timeout)


def test_a_busy_worker_takes_only_what_is_already_there():
    q: queue.Queue = NeverWait()
    q.put("waiting")
    q.put("also waiting")
    # a later arrival would come only to a worker that waits for it: NeverWait fails any such wait at once
    assert take_burst(q, room=8, wait_for_first=False, gap_s=1.0, max_s=5.0) == ["waiting", "also waiting"]
    q.put("late")
    assert take_burst(q, room=8, wait_for_first=False, gap_s=1.0, max_s=5.0) == ["late"]  # taken at the next step


def test_a_steady_stream_does_not_hold_the_first_request_past_the_limit():
    q: queue.Queue = queue.Queue()
    q.put(0)
    stream = put_later(q, list(range(1, 200)), delay_s=0.005)  # never a gap of 0.5 s, for ~1 s
    taken = take_burst(q, room=1000, wait_for_first=True, gap_s=0.5, max_s=0.1)
    assert taken[0] == 0 and len(taken) < 150  # stopped by max_s, long before the stream ended
    stream.join()


def test_room_and_the_close_signal_end_a_burst():
    q: queue.Queue = queue.Queue()
    for item in ["a", "b", "c"]:
        q.put(item)
    assert take_burst(q, room=2, wait_for_first=True, gap_s=1.0, max_s=5.0) == ["a", "b"]
    q.put(None)
    q.put("after close")
    assert take_burst(q, room=8, wait_for_first=True, gap_s=1.0, max_s=5.0) == ["c", None]


def test_an_empty_queue_gives_nothing_to_a_busy_worker():
    assert take_burst(queue.Queue(), room=8, wait_for_first=False) == []
