"""Heavy work beside the chats (core/work/): the fair share's turns, evaluations' turns, and cancellation reaching an
inspection on the engine's worker and an evaluation's batches. Orders and counts, never durations."""

from __future__ import annotations

import threading
import time

import pytest

from core.embeddings.evaluator import Evaluator, check_request
from core.embeddings.index import VocabIndex
from core.engine.settings import GenerationSettings
from core.errors import BusyError
from core.inside.next_tokens import next_tokens
from core.work.cancel import Cancelled, CancelToken, current_token
from core.work.fair_share import FairShare
from core.work.turns import Turns
from core.work.workload import Workload
from tests.engines import chat_engine
from tests.holds import HOLD_S
from tests.streams import collect


def test_without_chats_heavy_steps_never_wait():
    share = FairShare(0.25)
    for _ in range(3):
        assert share.try_begin()
        share.end()
    with share.step(CancelToken()):
        pass
    assert share.stats()["deferred_steps"] == 0 and share.stats()["rested_steps"] == 0


def test_while_chats_run_a_heavy_step_waits_in_proportion_to_the_last():
    share = FairShare(0.25)
    assert share.try_begin()
    share.end()
    share.set_chatting(True)
    assert not share.try_begin()  # the rest after a step (three times its length) has not passed
    assert share.stats()["deferred_steps"] == 1
    share.set_chatting(False)  # the chats ended: heavy work goes on at once
    assert share.try_begin()
    assert not share.try_begin()  # one heavy step at a time, whoever asks
    share.end()


def test_a_heavy_step_waiting_for_its_turn_stops_when_cancelled():
    share, token = FairShare(0.01), CancelToken()
    assert share.try_begin()
    share.end()
    share.set_chatting(True)  # the next step is due only after a rest 99 times the last step
    token.cancel()
    with pytest.raises(Cancelled):
        share.begin(token)
    assert share.try_begin() is False  # nothing was left holding the step


def test_turns_run_one_at_a_time_in_arrival_order_and_refuse_beyond_the_line():
    turns = Turns("evaluations", running=1, waiting=2)
    order: list[int] = []
    first_in = threading.Event()
    release = threading.Event()

    def evaluation(number: int) -> None:
        with turns.turn(CancelToken()):
            order.append(number)
            if number == 0:
                first_in.set()
                release.wait(HOLD_S)

    threads = [threading.Thread(target=evaluation, args=(0,))]
    threads[0].start()
    assert first_in.wait(HOLD_S)
    for number in (1, 2):  # two wait in line, in this order
        threads.append(threading.Thread(target=evaluation, args=(number,)))
        threads[-1].start()
        while turns.stats()["waiting"] < number:
            threading.Event().wait(0.01)
    with pytest.raises(BusyError, match="3 evaluations are running or waiting"), turns.turn(CancelToken()):
        pass
    release.set()
    for thread in threads:
        thread.join(HOLD_S)
    stats = turns.stats()
    assert order == [0, 1, 2] and stats["peak_running"] == 1 and stats["waited"] == 2
    assert stats["running"] == stats["waiting"] == 0 and stats["finished"] == 3


def test_a_caller_cancelled_while_waiting_leaves_the_line():
    turns, token = Turns("evaluations", running=1, waiting=2), CancelToken()
    raised: list[BaseException] = []

    def wait_in_line() -> None:
        try:
            with turns.turn(token):
                pass
        except Cancelled as exc:
            raised.append(exc)

    with turns.turn(CancelToken()):
        waiter = threading.Thread(target=wait_in_line)
        waiter.start()
        while turns.stats()["waiting"] < 1:
            threading.Event().wait(0.01)
        token.cancel()
        waiter.join(HOLD_S)
        assert raised and turns.stats()["waiting"] == 0 and turns.stats()["cancelled"] == 1


def test_a_cancelled_evaluation_stops_between_batches_and_frees_its_turn(bundled, tmp_path):
    index = VocabIndex.from_model(bundled.model, bundled.tokenizer, use_gpu=False)
    work = Workload()
    evaluator = Evaluator(index, "bundled", tmp_path, work)
    request = check_request("google_analogy", "3cosmul", 3000)
    token = CancelToken()
    seen: list[int] = []

    def progress(done: int, total: int, stage: str) -> None:
        seen.append(done)
        if len(seen) == 3:  # two batches scored: the caller gives up
            token.cancel()

    with current_token(token), pytest.raises(Cancelled, match="Stopped after 512 of"):
        evaluator.evaluate(request, progress=progress)
    assert not evaluator.cached(request)
    assert work.evaluations.stats() | {"peak_running": 0} == {
        "running": 0, "waiting": 0, "peak_running": 0, "waited": 0, "finished": 1, "cancelled": 1}


def test_an_inspection_beside_a_chat_waits_its_share_and_a_cancelled_one_is_dropped(request, bundled):
    """While a long chat streams, an inspection's steps are put off for the chat's share of the time; cancelling
    the inspection drops it before its next step, and the worker's stats show it gone."""
    share = FairShare(0.3)
    engine = chat_engine(request, "onnx", bundled, max_batch=2, prefix_cache_mb=0, share=share)
    try:
        chat = engine.chat("Write a very long story about a dragon who learns to read.", [], "",
                           GenerationSettings(temperature=0, max_new_tokens=2000))
        texts = iter(chat)  # kept: a dropped iterator stops its stream
        next(texts)
        long_text = "The river bank was quiet in the early morning. " * 200  # many chunks: many steps
        token = CancelToken()
        raised: list[BaseException] = []

        def inspect() -> None:
            with current_token(token):
                try:
                    next_tokens(engine, long_text, k=5)
                except Cancelled as exc:
                    raised.append(exc)

        thread = threading.Thread(target=inspect)
        thread.start()
        for _ in range(int(HOLD_S / 0.01)):  # a liveness bound
            if share.stats()["deferred_steps"] > 0:
                break
            threading.Event().wait(0.01)
        assert share.stats()["deferred_steps"] > 0 and share.stats()["chatting"]
        token.cancel()
        thread.join(HOLD_S)
        assert raised, "the cancelled inspection ran to its end"
        for _ in range(int(HOLD_S / 0.01)):  # the worker drops it at its next turn
            if not engine.stats()["inspections"]["running"]:
                break
            threading.Event().wait(0.01)
        stats = engine.stats()["inspections"]
        assert stats["running"] == stats["waiting"] == 0 and stats["cancelled"] == 1 and stats["finished"] == 0
        assert chat.stop_reason == ""  # still streaming: it never waited for the inspection to end
        chat.cancel()
        collect(chat)
    finally:
        engine.close()


def test_a_view_never_cuts_in_between_a_new_chats_first_token_and_its_next(request, bundled):
    """A request that arrives while a prompt is read is taken in before the next decoding step (first tokens
    first); a view's step waits until after that decoding step, so a chat starting beside a view pauses after its
    first token no longer than it must."""
    engine = chat_engine(request, "onnx", bundled, max_batch=4, prefix_cache_mb=0, share=FairShare(0.3))
    events: list[str] = []
    settings = GenerationSettings(temperature=0, max_new_tokens=4)

    def view(_loaded):
        for i in range(10_000):  # short steps until the test cancels it
            time.sleep(0.001)
            events.append("view")
            yield i, 10_000, "stepping"

    token = CancelToken()

    def inspect() -> None:
        with current_token(token), pytest.raises(Cancelled):
            engine.inspect(view)

    viewer = threading.Thread(target=inspect)
    try:
        viewer.start()
        for _ in range(int(HOLD_S / 0.01)):
            if events:
                break
            time.sleep(0.01)
        chat = engine.chat("Say hello.", [], "", settings)
        later = []
        push = chat.push

        def recorded(token_ids: list[int]) -> None:
            events.append("token")
            if not later:  # on the first token, still inside the prompt's read: another request arrives
                later.append(engine.chat("Say goodbye.", [], "", settings))
            push(token_ids)

        chat.push = recorded  # looked up at each token; the prompt waits behind the view's steps by now
        collect(chat)
        assert later and collect(later[0])
        tokens = [i for i, event in enumerate(events) if event == "token"]
        assert len(tokens) >= 2 and "view" in events[:tokens[0]]
        assert "view" not in events[tokens[0]:tokens[1]], "a view's step ran between the first token and the next"
    finally:
        token.cancel()
        viewer.join(HOLD_S)
        engine.close()


def test_the_share_is_a_flag_and_an_environment_variable():
    from core.config import AppConfig

    assert AppConfig.from_args([], env={}).heavy_share == 0.3
    assert AppConfig.from_args(["--heavy-share", "0.5"], env={}).heavy_share == 0.5
    assert AppConfig.from_args([], env={"TOKEN_LAB_HEAVY_SHARE": "1"}).heavy_share == 1.0
    for wrong in ("0", "1.5", "-0.2"):
        with pytest.raises(SystemExit):
            AppConfig.from_args(["--heavy-share", wrong], env={})


def test_an_inspection_reports_its_place_in_line_then_its_chunks(request, bundled):
    """A view's caller hears how many inspections are ahead while it waits, then its chunks as they are read, the
    last report being all of them."""
    engine = chat_engine(request, "onnx", bundled, max_batch=2, prefix_cache_mb=0)
    try:
        text = "The river bank was quiet in the early morning. " * 60  # several chunks
        first_heard: list[tuple] = []
        second_heard: list[tuple] = []
        first_running = threading.Event()

        def first() -> None:
            next_tokens(engine, text, k=3, progress=lambda *r: (first_heard.append(r), first_running.set()))

        thread = threading.Thread(target=first)
        thread.start()
        assert first_running.wait(HOLD_S)
        next_tokens(engine, text, k=3, progress=lambda *r: second_heard.append(r))
        thread.join(HOLD_S)
        assert second_heard[0] == (0, 0, "waiting for the model: 1 inspection ahead")
        for heard in (first_heard, second_heard):
            steps = [r for r in heard if r[1]]
            total = steps[-1][1]
            assert total == -(-len(bundled.tokenizer(text)["input_ids"]) // 128)
            assert steps[-1] == (total, total, "reading the text")
            assert [done for done, _, _ in steps] == sorted({done for done, _, _ in steps})
    finally:
        engine.close()


def test_an_evaluation_waiting_for_its_turn_says_how_many_are_ahead():
    turns = Turns("evaluations", running=1, waiting=2)
    heard: list[tuple] = []
    token = CancelToken()
    def hear(*report) -> None:  # the caller gives up once told
        heard.append(report)
        token.cancel()

    def wait_in_line() -> None:
        with pytest.raises(Cancelled), turns.turn(token, hear):
            pass

    with turns.turn(CancelToken()):
        waiter = threading.Thread(target=wait_in_line)
        waiter.start()
        waiter.join(HOLD_S)
    assert heard == [(0, 0, "waiting for its turn: 1 of the evaluations ahead")]


def test_chats_arriving_while_a_thread_steps_get_the_next_turn():
    """The worker, finding a request thread's heavy step running when chats arrive, waits for that step only: the
    thread's next step rests first, even though the worker had not yet said that chats run."""
    share, token = FairShare(0.01), CancelToken()  # the rest after a step: 99 times its length
    share.begin(token)  # a thread's step, begun before any chat
    time.sleep(0.05)
    share.end()
    share.wait_for_step()  # the worker, with a prompt to read
    assert share.stats()["chatting"] and not share.try_begin()
