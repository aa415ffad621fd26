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


def test_a_busy_worker_takes_only_what_is_already_there():
    q: queue.Queue = queue.Queue()
    q.put("waiting")
    late = put_later(q, ["late"], delay_s=0.05)
    assert take_burst(q, room=8, wait_for_first=False, gap_s=1.0, max_s=5.0) == ["waiting"]
    late.join()
    assert q.get_nowait() == "late"  # left for the next step


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
