"""bench/gpu_check.py off the GPU: its dry run takes the GPU check's code path on the CPU with a 2-layer model (so the
script cannot rot between GPU runs), also as the lent GPU machine runs it (no gradio, no FAISS), and without CUDA the
check itself says so in one line and succeeds."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from core.engine.local import ChatEngine
from tests import phi3
from tests.holds import hold_pushes

ROOT = Path(__file__).resolve().parent.parent
# --no-tests: `make test` runs the GPU-marked tests itself (they skip here); a nested pytest would only add a minute
DRY_RUN = ["--device", "cpu", "--layers", "2", "--hidden", "64", "--tokens", "8", "--reps", "1", "--batch", "32",
           "--no-tests"]
# What the lent GPU machine lacks: importing either fails, as there
WITHOUT_GRADIO_AND_FAISS = """
import sys
sys.modules["gradio"] = sys.modules["faiss"] = None
from bench import gpu_check
sys.exit(gpu_check.main(sys.argv[1:]))
"""


def test_dry_run_measures_every_figure(tmp_path: Path):
    assert gpu_check.main([*DRY_RUN, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    decoding = result["decoding"]
    assert decoding["full_length"], "every answer, engine and generate alike, decodes all its tokens"
    assert decoding["engine_batch1"] > 0 and decoding["generate_batch1"] > 0
    assert decoding["together"]["chats"] == 8 and len(decoding["together"]["ttft_s"]) == 8
    assert decoding["lone"]["tokens"] == [8] and decoding["together"]["tokens"] == [8] * 8
    assert decoding["aggregate_ratio"] > 0 and decoding["ttft_ratio"] > 0
    neighbours = result["neighbours"]
    assert neighbours["faiss"] and neighbours["rows"] == 32011  # real tokens only, not Phi-3's 53 padding rows
    for name in ("single", "batch_32"):
        assert neighbours[name]["same_top10"] == 1.0 and neighbours[name]["faiss_s"] > 0
    assert result["gpu_tests"]["summary"] == "skipped (--no-tests)"
    table = (tmp_path / "gpu.md").read_text()
    assert "engine / model.generate" in table and "p95 TTFT" in table and "neighbours, 32 queries" in table


def test_a_failing_part_is_reported_and_the_rest_still_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """17 chats at once exceed the engine's queue of 16: decoding fails with the engine's own sentence, the neighbours
    are still measured, and the exit status says something failed. In the 17-chat run the worker is held at each
    token it pushes until every chat has been submitted or one refused: no chat can finish, and give its place back,
    while they are being submitted, however fast the machine decodes."""
    chats = 17
    together, submitted = threading.Event(), threading.Event()
    engine_chats, chat = gpu_check.engine_chats, ChatEngine.chat
    accepted: list = []

    def marked_engine_chats(engine: ChatEngine, n: int, tokens: int) -> dict:
        if n == chats:
            together.set()
        return engine_chats(engine, n, tokens)

    def counted_chat(self: ChatEngine, *args, **kwargs):
        try:
            stream = chat(self, *args, **kwargs)
        except BaseException:
            submitted.set()  # refused (the point) or broken: either way the submissions are over
            raise
        if together.is_set():
            accepted.append(stream)
            if len(accepted) == chats:
                submitted.set()  # all accepted: the queue did not refuse the 17th (the test then fails below)
        return stream

    monkeypatch.setattr(gpu_check, "engine_chats", marked_engine_chats)
    monkeypatch.setattr(ChatEngine, "chat", counted_chat)
    hold_pushes(monkeypatch, lambda _: together.is_set(), after=1, until=lambda _: submitted)
    assert gpu_check.main([*DRY_RUN, "--chats", "17", "--out", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["decoding"]["failed"].startswith("decoding: BusyError: The server is busy")
    assert result["neighbours"]["single"]["same_top10"] == 1.0
    assert "FAILED: decoding: BusyError" in (tmp_path / "gpu.md").read_text()


@pytest.mark.slow
def test_dry_run_without_gradio_or_faiss_still_measures(tmp_path: Path):
    """The lent GPU machine has neither: the check must import neither, and time the neighbours with torch alone."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT_GRADIO_AND_FAISS, *DRY_RUN, "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["decoding"]["full_length"] and result["decoding"]["engine_over_generate"] > 0
    neighbours = result["neighbours"]
    assert not neighbours["faiss"] and neighbours["single"]["torch_s"] > 0 and "faiss_s" not in neighbours["single"]
    assert "FAISS is not installed here" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed where there is no CUDA")
def test_without_cuda_one_line_and_success(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert not any(tmp_path.iterdir())


def test_stand_in_tokenizer_has_phi3_ids_and_template():
    tokenizer = gpu_check.stand_in_tokenizer()
    assert len(tokenizer) == 32011
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|end|>", "<|user|>"]) == [32000, 32007, 32010]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert tokenizer(text, add_special_tokens=False)["input_ids"][-4:-2] == [phi3.END_ID, 0]  # <|end|>, "\n" unknown
