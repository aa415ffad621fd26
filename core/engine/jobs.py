"""Inspection jobs: read-only uses of the model (the Inside tab's views) run on the engine's worker thread, between
two decoding steps.

Why on the worker rather than in the web request's thread: one thread then does all the torch work, with one warm
OpenMP team (a second forward pass at the same time oversubscribes the cores and slows both); forward hooks, which
see every thread's calls, see only the job's own pass; the running batch and its cache are never touched; and there is
no second copy of the model. A job that returns a generator runs one step (up to its next `yield`) between two
decoding steps, so a running chat waits for one step at most; a plain function runs whole, like one more prefill.
While chats run, the worker takes a step only when the fair share allows it (core/work/fair_share.py). A job whose
caller cancels (core/work/cancel.py) is dropped before its next step, whether it was waiting or running.

    jobs = InspectionJobs(wake=lambda: engine_queue.put(WAKE))
    jobs.run(lambda: model(ids).logits, alive=worker.is_alive)   # from a web request; the worker calls step()
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable, Generator
from inspect import isgenerator
from typing import Any, TypeVar

import torch

from core.errors import BusyError, ModelNotReadyError
from core.work import cancel
from core.work.cancel import Cancelled, CancelToken
from core.work.fair_share import Stretch
from core.work.progress import Progress

T = TypeVar("T")
MAX_WAITING = 8  # inspections waiting at once; more are told the server is busy
WAIT_S = 120.0  # the longest a caller waits for its inspection to start
WAKE = object()  # put on the engine's request queue so that an idle worker looks at the jobs


def finish(result: Any) -> Any:
    """The value of a job's result: a plain value as it is, a generator driven to its end (its return value)."""
    if not isgenerator(result):
        return result
    while True:
        try:
            with torch.inference_mode():
                next(result)
        except StopIteration as done:
            return done.value


class _Job:
    def __init__(self, fn: Callable[[], Any], token: CancelToken) -> None:
        self.fn = fn
        self.token = token
        self.reached: tuple[int, int, str] | None = None  # the last (done, total, stage) its generator yielded
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.steps: Generator | None = None  # when `fn` returned a generator: one step per decoding step


class InspectionJobs:
    """The waiting inspections and the one in progress. `run` is called from any thread but the worker; `step`,
    `drop_cancelled`, `busy` and `fail_all` by the worker alone."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._waiting: collections.deque[_Job] = collections.deque()  # guarded by _lock
        self._current: _Job | None = None
        self._count = 0  # submitted and not yet returned to their callers
        self._lock = threading.Lock()
        self.finished = 0
        self.cancelled = 0

    def run(self, fn: Callable[[], T], alive: Callable[[], bool], timeout: float = WAIT_S,
            progress: Progress | None = None) -> T:
        """Run `fn` on the worker and return its result (or raise its exception); Cancelled as soon as the current
        request's token is (the worker drops the job at its next turn). `progress` hears how many inspections are
        ahead while it waits, then how far it is; see the module docstring."""
        if not alive():
            raise ModelNotReadyError("The model's worker has stopped.")
        job = _Job(fn, cancel.current())
        with self._lock:
            if self._count >= MAX_WAITING:
                raise BusyError(f"{self._count} inspections are waiting for the model. Try again in a moment.")
            self._count += 1
            self._waiting.append(job)
        try:
            self._wake()
            deadline = time.monotonic() + timeout
            told = None
            while not job.future.done():
                concurrent.futures.wait([job.future], timeout=0.1)
                job.token.check()
                if progress is not None and (news := self._whereabouts(job)) != told:
                    told = news
                    progress(*news)
                if not alive() and job.future.cancel():
                    raise ModelNotReadyError("The model's worker has stopped.")
                if time.monotonic() > deadline and job.future.cancel():
                    raise BusyError("The model stayed busy too long for this inspection. Try again in a moment.")
            return job.future.result()
        finally:
            with self._lock:
                self._count -= 1

    def _whereabouts(self, job: _Job) -> tuple[int, int, str]:
        """(done, total, stage) for `job`'s caller: its place in line while it waits, its steps once it runs."""
        if job.reached is not None:
            return job.reached
        with self._lock:
            ahead = self._waiting.index(job) if job in self._waiting else 0
        ahead += self._current is not None and self._current is not job
        if not ahead:
            return 0, 0, "starting"
        return 0, 0, f"waiting for the model: {ahead} inspection{'s' if ahead > 1 else ''} ahead"

    @property
    def busy(self) -> bool:
        """An inspection is in progress or waiting: the worker must not sleep."""
        return self._current is not None or bool(self._waiting)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            waiting = len(self._waiting)
        return {"running": int(self._current is not None), "waiting": waiting, "finished": self.finished,
                "cancelled": self.cancelled}

    def drop_cancelled(self) -> None:
        """Drop the inspections whose callers cancelled or gave up, waiting or in progress: no turn is needed to
        stop work, so a cancel frees the worker even while the chats have the machine."""
        with self._lock:
            gone = [job for job in self._waiting if job.token.cancelled or job.future.cancelled()]
            for job in gone:
                self._waiting.remove(job)
        for job in gone:
            self._cancel(job)
        if self._current is not None and self._current.token.cancelled:
            self._cancel(self._current)
            self._current = None

    def _cancel(self, job: _Job) -> None:
        if job.steps is not None:
            job.steps.close()  # its `finally` blocks run now, on the worker
        if job.future.running() or job.future.set_running_or_notify_cancel():  # not if its caller gave up
            job.future.set_exception(Cancelled())
        self.cancelled += 1

    def step(self, stretch: Stretch | None = None) -> None:
        """Run one step of the inspection in progress, or start the next waiting one; `stretch` is sent to a
        stepped view's generator: how its pass runs until it stops (core/inside/stepping.py)."""
        self.drop_cancelled()
        while self._current is None:
            with self._lock:
                if not self._waiting:
                    return
                job = self._waiting.popleft()
            if job.future.set_running_or_notify_cancel():  # False: its caller gave up waiting
                self._current = job
        if self._advance(self._current, stretch):
            self._current = None
            self.finished += 1

    @staticmethod
    def _advance(job: _Job, stretch: Stretch | None) -> bool:
        """One step of `job`; True when it has finished (with a result or an exception)."""
        try:
            with torch.inference_mode():
                if job.steps is None:
                    result = job.fn()
                    if not isgenerator(result):
                        job.future.set_result(result)
                        return True
                    job.steps = result
                    reached = next(job.steps)
                else:
                    reached = job.steps.send(stretch)
            if isinstance(reached, tuple):
                job.reached = reached
            return False
        except StopIteration as done:
            job.future.set_result(done.value)
        except Exception as exc:  # the caller's request fails with it; the worker goes on
            job.future.set_exception(exc)
        return True

    def fail_all(self) -> None:
        """The worker is stopping: every inspection in progress or waiting is told so."""
        stopped = ModelNotReadyError("The model's worker has stopped.")
        if self._current is not None:
            self._current.future.set_exception(stopped)
            self._current = None
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(stopped)
