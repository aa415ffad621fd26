"""Taking requests off the engine's queue in bursts.

Requests sent at the same moment (a class pressing Send together, a script fanning out) reach the engine a few
milliseconds apart, one by one through the web server. Taken one at a time, the first ones' prefill starts and the
stragglers wait for it to end before their own begins (bench/bench_load.py saw rounds of 8 chats split like that).
An idle worker therefore keeps taking arrivals until none has come for `gap_s`, for at most `max_s` in all, so that
one forward pass gives every request of a burst its first token; a lone request waits `gap_s` once, a small part of
its time to first token.

    >>> q = queue.Queue(); q.put("a"); q.put("b")
    >>> take_burst(q, room=8, wait_for_first=True)
    ['a', 'b']
"""

from __future__ import annotations

import queue
import time
from typing import TypeVar

T = TypeVar("T")

ARRIVAL_GAP_S = 0.004  # a little more than the gaps measured between the requests of one burst (bench_load)
BURST_MAX_S = 0.020  # the longest the first request of a burst waits for the others


def take_burst(q: queue.Queue[T | None], room: int, wait_for_first: bool, gap_s: float = ARRIVAL_GAP_S,
               max_s: float = BURST_MAX_S, first_wait_s: float = 0.0) -> list[T | None]:
    """Up to `room` items from `q`, stopping after a None (the close signal).

    `wait_for_first` (the worker is idle): block for the first item, then keep taking arrivals until none comes
    for `gap_s` or `max_s` has passed since the first. Otherwise (rows are decoding, and must not stall): take
    only what is already there, after waiting up to `first_wait_s` for the first."""
    taken: list[T | None] = []
    deadline = 0.0
    while len(taken) < room:
        try:
            if not taken and wait_for_first:
                item = q.get()
                deadline = time.perf_counter() + max_s
            elif wait_for_first:
                item = q.get(timeout=max(0.0, min(gap_s, deadline - time.perf_counter())))
            elif not taken and first_wait_s > 0:
                item = q.get(timeout=first_wait_s)
            else:
                item = q.get_nowait()
        except queue.Empty:
            break
        taken.append(item)
        if item is None:
            break
    return taken
