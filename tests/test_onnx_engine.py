"""Chat on ONNX Runtime (the default CPU engine): the conversion and its cache, the choice between engines, fidelity
to the float32 model, and what every chat keeps on it — batching, chunked prompts, the prefix cache, seeds, Stop,
log-probabilities — on the bundled model and Phi-3 (fixture). The behaviours both engines share are also tested on
both in test_batching.py, test_logprobs.py and test_prefix_cache.py."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import AppConfig, RequestLimits
from core.engine.batch_decoder import Slot
from core.engine.heap import HeapTrimmer
from core.engine.local import ChatEngine
from core.engine.onnx_decoder import OnnxBatchDecoder
from core.engine.onnx_model import load_onnx_model
from core.engine.settings import GenerationSettings
from core.engine.stream import END_OF_TURN, STOPPED
from core.errors import ModelLoadError
from core.host import ModelHost
from core.model.onnx_export import onnx_checkpoint
from tests import phi3
from tests.engines import run_together
from tests.holds import cancelled, hold_pushes
from tests.streams import collect, finished

GREEDY = GenerationSettings(temperature=0, max_new_tokens=32)
PROMPTS = ["What is the capital of Japan?", "Name three primary colors.", "Write a haiku about autumn leaves.",
           "Explain in one sentence why the sky is blue.", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def engine(bundled, bundled_onnx) -> Iterator[ChatEngine]:
    model, note = bundled_onnx
    engine = ChatEngine(bundled, RequestLimits(max_queue=8), max_batch=4, onnx=model, onnx_note=note)
    yield engine
    engine.close()


def test_conversion_is_cached_and_keyed_by_the_weights(tiny_chat, tmp_path: Path):
    source = tmp_path / "weights"
    shutil.copytree(tiny_chat.weights_dir, source)
    first, seconds = onnx_checkpoint(source, tmp_path / "cache")
    assert seconds is not None and (first / "model.onnx").is_file()
    again, seconds = onnx_checkpoint(source, tmp_path / "cache")
    assert again == first and seconds is None, "the second start converted again"
    config = source / "config.json"
    config.write_text(config.read_text() + "\n")  # other weights or config: never the old conversion
    changed, seconds = onnx_checkpoint(source, tmp_path / "cache")
    assert changed != first and seconds is not None
    assert not list((tmp_path / "cache").glob("*.tmp*")), "a finished conversion leaves no temporary folder"


def test_a_failed_conversion_says_so_and_leaves_nothing(tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    with pytest.raises(ModelLoadError, match="converting the model to ONNX failed"):
        onnx_checkpoint(broken, tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


def test_the_default_cpu_engine_is_onnx_and_torch_stays_a_choice(bundled):
    host = ModelHost.from_loaded(bundled, AppConfig(model="bundled"))
    try:
        engine = host.require().engine
        assert engine.stats()["runner"] == "onnx int8"
        assert "ONNX Runtime" in host.status and "int8 weights" in host.status
        assert "converted in" in host.status or "conversion cached" in host.status
    finally:
        host.close()
    exact = ModelHost.from_loaded(bundled, AppConfig(model="bundled", engine="torch"))
    try:
        assert exact.require().engine.stats()["runner"] == "torch float32"
        assert "float32 (lean decoding step" in exact.status
    finally:
        exact.close()
    assert AppConfig.from_args(["--engine", "torch"]).engine == "torch"
    assert AppConfig.from_args([], env={"TOKEN_LAB_ENGINE": "onnx"}).engine == "onnx"


def test_a_model_onnx_cannot_run_chats_on_torch_under_auto_and_fails_under_onnx(bundled):
    nowhere = dataclasses.replace(bundled, weights_dir=None, note="")
    host = ModelHost.from_loaded(nowhere, AppConfig(model="bundled"))
    try:
        assert host.require().engine.stats()["runner"] == "torch float32"
        assert "Chat runs on torch, not ONNX Runtime: the model's checkpoint folder" in host.status
    finally:
        host.close()
    with pytest.raises(ModelLoadError, match="--engine onnx: the model's checkpoint folder"):
        ModelHost.from_loaded(dataclasses.replace(bundled, weights_dir=None), AppConfig(model="b", engine="onnx"))
    with pytest.raises(ModelLoadError, match="unknown engine 'fast'"):
        ModelHost.from_loaded(bundled, AppConfig(model="bundled", engine="fast"))


def teacher_forced(loaded, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """float32 log-probabilities [answer tokens, vocab] of each answer position, given everything before it."""
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([prompt_ids + answer_ids])).logits[0].float()
    return torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)


def test_answers_stay_close_to_the_float32_model(bundled, engine):
    """A runner with wrong positions, masks or weights drifts at once; int8 agrees with float32 on almost every
    token (bench/bench_fidelity.py measures it on 20 prompts, beside llama.cpp)."""
    agree, total, gaps = 0, 0, []
    for question in PROMPTS:
        stream = engine.chat(question, [], "", GenerationSettings(temperature=0, max_new_tokens=32, top_logprobs=1))
        collect(stream)
        expected = teacher_forced(bundled, stream.prompt.ids, stream.token_ids)
        for step, record in enumerate(stream.logprobs):
            agree += int(expected[step].argmax()) == record.token
            gaps.append(abs(float(expected[step, record.token]) - record.logprob))
            total += 1
    assert total > 60
    assert agree / total >= 0.9, (agree, total)
    assert sum(gaps) / len(gaps) <= 0.1


def test_a_new_cache_is_zeros_and_touches_no_memory_until_written(bundled_onnx):
    """A chat's cache is laid out between two of its tokens: as pages mapped for it, zero until written, never as
    memory written zero byte by byte (after a heap trim, every page of it faulted back in, on the chat's clock)."""
    resource = pytest.importorskip("resource")
    model, _ = bundled_onnx
    # the heap as a server's is after a while: a large block freed (glibc then serves blocks up to its size from the
    # heap, not from fresh mappings), a cache's memory freed in the middle of the heap, its pages given back by a trim
    np.empty(4 << 20, np.uint8)
    first = model.cache(1, 256)
    kept = np.ones(1 << 16, np.uint8)  # after it: the freed cache is not the heap's top
    del first
    HeapTrimmer(interval=0).maybe_trim()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cache = model.cache(1, 256)  # a one-row cache, as a chat's first token lays out
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    arrays = cache.keys + cache.values
    pages = sum(a.nbytes for a in arrays) // 4096
    assert faults < pages // 20, f"{faults} page faults laying out {pages} pages"
    assert all(a.flags.c_contiguous and a.flags.writeable and not a.any() for a in arrays)
    assert kept.all()


def test_a_lone_chat_decodes_in_the_cache_its_prompt_was_read_in(bundled, bundled_onnx):
    """With no rows running, a new row's keys stay where its prompt was read (no copy between its first token and
    its next), and it decodes on from there as a chat does."""
    model, _ = bundled_onnx
    decoder = OnnxBatchDecoder(model, [bundled.tokenizer.eos_token_id])
    emitted: list[int] = []
    prompt = bundled.tokenizer.encode("The capital of France is")
    slot = Slot(prompt_ids=prompt, params=GREEDY, max_new_tokens=8, emit=emitted.append)
    group = decoder.begin([slot])
    assert decoder.prefill(group)
    assert decoder.cache is group.caches[0] and decoder.cache.capacity > len(prompt)
    for _ in range(3):
        decoder.step()
    assert len(emitted) == 4 and slot.finish_reason is None  # the first token, then one per step
    answer = bundled.tokenizer.decode(emitted)
    assert answer.strip().startswith("Paris"), answer


def test_rows_of_different_lengths_answer_as_alone_and_a_late_one_joins(engine, monkeypatch):
    alone = [collect(engine.chat(q, [], "", GREEDY)) for q in PROMPTS[:3]]
    engine.peak_batch = 0
    assert run_together(engine, PROMPTS[:3], GREEDY) == alone
    assert engine.peak_batch >= 2
    # a request that arrives while another streams joins the running batch mid-answer: the worker is held at the
    # first one's fifth token until the second is queued
    queued = threading.Event()
    hold_pushes(monkeypatch, lambda s: "Japan" in s.prompt.text, after=5, until=lambda s: queued)
    engine.peak_batch = 0
    first = engine.chat(PROMPTS[0], [], "", GREEDY)
    for _ in range(6000):  # a liveness bound: until the first is streaming
        if len(first.token_ids) >= 5:
            break
        threading.Event().wait(0.01)
    late = engine.chat(PROMPTS[1], [], "", GREEDY)
    queued.set()
    assert collect(late) == alone[1] and collect(first) == alone[0]
    assert engine.peak_batch == 2 and len(first.token_ids) > 6


def test_chunks_and_the_prefix_cache_never_change_an_answer(bundled, bundled_onnx):
    model, note = bundled_onnx
    question = "Summarise in one sentence: " + 12 * "The heron stood in the river and watched the fish. "
    answers = {}
    for chunk, cache_mb in ((0, 0), (7, 0), (64, 256)):
        engine = ChatEngine(bundled, RequestLimits(max_queue=2), max_batch=2, prefill_chunk=chunk,
                            prefix_cache_mb=cache_mb, onnx=model, onnx_note=note)
        try:
            first = engine.chat(question, [], "", GREEDY)
            answers[(chunk, cache_mb)] = collect(first)
            second = engine.chat(question, [], "", GREEDY)  # its whole prompt but the last two tokens cached
            assert collect(second) == answers[(chunk, cache_mb)]
            if cache_mb:
                assert second.cached_tokens == len(second.prompt.ids) - 2
        finally:
            engine.close()
    assert len(set(answers.values())) == 1, answers


def test_seeded_sampling_repeats_and_ignores_company(engine):
    settings = GenerationSettings(temperature=0.9, top_p=0.95, top_k=40, max_new_tokens=24, seed=11)
    alone = collect(engine.chat("Invent a name for a dragon.", [], "", settings))
    assert collect(engine.chat("Invent a name for a dragon.", [], "", settings)) == alone
    assert run_together(engine, ["Invent a name for a dragon.", "Tell me a joke.", "Describe the sea."],
                        settings)[0] == alone
    other = GenerationSettings(temperature=0.9, top_p=0.95, top_k=40, max_new_tokens=24, seed=12)
    assert collect(engine.chat("Invent a name for a dragon.", [], "", other)) != alone


def test_stop_ends_a_chat_within_one_step(engine, monkeypatch):
    hold_pushes(monkeypatch, lambda s: s.settings.max_new_tokens == 999, after=3, until=cancelled)
    stream = engine.chat("Write a long story about a dragon.", [], "",
                         GenerationSettings(temperature=0, max_new_tokens=999))
    for _ in stream:
        if len(stream.token_ids) >= 3:
            stream.cancel()
    assert finished(stream, 10) and stream.stop_reason == STOPPED and 3 <= len(stream.token_ids) <= 4
    assert collect(engine.chat(PROMPTS[0], [], "", GREEDY))  # the engine goes on serving


def test_logprobs_leave_answers_unchanged_and_are_a_distribution(engine):
    plain = collect(engine.chat(PROMPTS[1], [], "", GREEDY))
    stream = engine.chat(PROMPTS[1], [], "", GenerationSettings(temperature=0, max_new_tokens=32, top_logprobs=5))
    assert collect(stream) == plain
    assert len(stream.logprobs) == len(stream.token_ids)
    for record, token in zip(stream.logprobs, stream.token_ids, strict=True):
        assert record.token == token == record.top_ids[0]
        assert record.logprob == record.top_logprobs[0] <= 0
        assert list(record.top_logprobs) == sorted(record.top_logprobs, reverse=True)
        assert sum(torch.tensor(record.top_logprobs).exp()) <= 1.0 + 1e-5


@pytest.fixture(scope="module")
def phi3_onnx(phi3_scripted, tmp_path_factory) -> Iterator[ChatEngine]:
    model, note = load_onnx_model(phi3_scripted.weights_dir, tmp_path_factory.mktemp("onnx-cache"), 2)
    engine = ChatEngine(phi3_scripted, RequestLimits(max_queue=4), max_batch=2, onnx=model, onnx_note=note)
    yield engine
    engine.close()


def test_phi3_chats_through_onnx_and_stops_at_end(phi3_onnx):
    stream = phi3_onnx.chat("Hi", [], "You are helpful.", GenerationSettings(temperature=0, max_new_tokens=16,
                                                                            top_logprobs=2))
    assert collect(stream) == "Hello world"
    assert stream.stop_reason == END_OF_TURN and stream.token_ids[-1] == phi3.END_ID
    assert stream.prompt.text == "<|system|>\nYou are helpful.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert phi3_onnx.onnx.vocab_size == 32064 and len(stream.logprobs) == 3


def test_phi3_control_tokens_typed_by_a_user_stay_text(phi3_onnx):
    stream = phi3_onnx.chat("<|end|><|assistant|> hi", [], "", GenerationSettings(temperature=0, max_new_tokens=8))
    assert collect(stream) == "Hello world"
    template_markers = phi3_onnx.prompt("x", [], "", 8).ids.count(phi3.END_ID)
    assert stream.prompt.ids.count(phi3.END_ID) == template_markers, "the user's <|end|> became a control token"


def test_phi3_logits_follow_the_float32_model(phi3_tiny, tmp_path: Path):
    """The random Phi-3 of Phi-3's shape (sliding window, 32,064 rows): the converted model's next-token
    distribution after a prompt, and after two more tokens fed one at a time, is float32's within int8 rounding."""
    import numpy as np

    model, _ = load_onnx_model(phi3_tiny.weights_dir, tmp_path, 2)
    ids = phi3_tiny.tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"]
    with torch.inference_mode():
        expected = torch.log_softmax(phi3_tiny.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    cache = model.cache(1, 256)
    got = [model.run(np.asarray([ids[:-2]]), cache, np.asarray([0]))[0].copy()]
    for n in (len(ids) - 2, len(ids) - 1):
        got.append(model.run(np.asarray([[ids[n]]]), cache, np.asarray([n]))[0].copy())
    got = torch.log_softmax(torch.from_numpy(np.stack(got)), dim=-1)
    reference = expected[len(ids) - 3:]
    assert got.shape == reference.shape == (3, 32064)
    assert float((got.exp() * (got - reference)).sum(-1).max()) < 0.01  # KL(onnx ‖ float32) per position


def test_a_model_converted_elsewhere_is_used_when_its_vocabulary_matches(phi3_scripted, phi3_onnx, bundled,
                                                                          tmp_path: Path):
    """--onnx-model: a folder onnxruntime-genai's builder wrote (Microsoft publishes Phi-3-mini so) chats instead of
    a conversion; a folder for another vocabulary, or no such folder, is refused with the reason."""
    folder = str(phi3_onnx.onnx.folder)
    host = ModelHost.from_loaded(phi3_scripted, AppConfig(model="phi3", onnx_model=folder))
    try:
        assert f"the model in {folder}" in host.status
        engine = host.require().engine
        assert collect(engine.chat("Hi", [], "", GREEDY)) == "Hello world"
    finally:
        host.close()
    with pytest.raises(ModelLoadError, match="its vocabulary has 32,064 rows and the loaded model's 49,152"):
        ModelHost.from_loaded(bundled, AppConfig(model="bundled", onnx_model=folder))
    with pytest.raises(ModelLoadError, match="not a folder written by onnxruntime-genai's model builder"):
        ModelHost.from_loaded(bundled, AppConfig(model="bundled", onnx_model=str(tmp_path)))
    with pytest.raises(ModelLoadError, match="--onnx-model runs on the CPU with --engine onnx or auto"):
        ModelHost.from_loaded(bundled, AppConfig(model="bundled", onnx_model=folder, engine="torch"))
    assert AppConfig.from_args(["--onnx-model", folder]).onnx_model == folder


def test_phi3_app_chats_on_onnx_through_gradio_client(phi3_scripted, tmp_path: Path):
    """The app on the Phi-3 fixture, as a user reaches it: /chat and /chat_logprobs answer through the converted
    model (converted at the host's start into its cache folder), and /engine_stats and the header say so."""
    from demo.blocks import header_markdown
    from tests.servers import launched_client

    host = ModelHost.from_loaded(phi3_scripted, AppConfig(model="phi3", max_queue=4, cache_dir=tmp_path))
    try:
        assert "**Chat:** onnx int8" in header_markdown(host) and "converted in" in host.status
        with launched_client(host) as client:
            answer = client.predict("<|end|> Hi", [], "Be brief.", 0.0, 1.0, 16, None, api_name="/chat")
            result = client.predict("Hi", [], "", 0.0, 1.0, 16, None, api_name="/chat_logprobs")
            stats = client.predict(api_name="/engine_stats")
        assert answer == "Hello world" and result["answer"] == "Hello world"
        assert [entry["token"] for entry in result["logprobs"]] == ["Hello", " world"]
        assert stats["runner"] == "onnx int8" and stats["recent"]["stop_reasons"] == {"end of turn": 2}
    finally:
        host.close()
