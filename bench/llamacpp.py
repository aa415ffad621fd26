"""llama.cpp beside Token Lab, for the side-by-side benchmark and the llama.cpp remote-engine test: found in its own
Python environment (`make llamacpp` builds `.venv-llamacpp`; TOKEN_LAB_LLAMACPP_PYTHON names another), never in the
app's, because it compiles for minutes and the app does not need it. Both of its ways to run are started here as
subprocesses of that Python: its OpenAI-compatible server (what `--engine-url` talks to) and the in-process
generator `bench/llamacpp_worker.py`.

    >>> python, reason = find_llamacpp()
    >>> with LlamaCppWorker(python, bundled_gguf_path(), threads=2) as worker:      # doctest: +SKIP
    ...     worker.generate(prompt_ids, tokens=128)
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ENV = "TOKEN_LAB_LLAMACPP_PYTHON"
WORKER = Path(__file__).with_name("llamacpp_worker.py")
HOW = f"run `make llamacpp` (compiles llama.cpp, ~12 min on 2 cores) or set {ENV}=/path/to/python"


def find_llamacpp() -> tuple[Path | None, str]:
    """(llama.cpp's Python, "") or (None, why not): TOKEN_LAB_LLAMACPP_PYTHON if set, else `.venv-llamacpp`. The
    Python must import llama_cpp and its server; a bindings-only build also needs LLAMA_CPP_LIB_PATH, which the
    subprocesses inherit."""
    named = os.environ.get(ENV)
    python = Path(named) if named else ROOT / ".venv-llamacpp" / "bin" / "python"
    if not (python.is_file() and os.access(python, os.X_OK)):
        where = f"{ENV}={named}" if named else str(python.relative_to(ROOT))
        return None, f"no llama.cpp Python ({where} not found): {HOW}"
    check = subprocess.run([str(python), "-c", "import llama_cpp, llama_cpp.server.app"], capture_output=True,
                           text=True)
    if check.returncode:
        last = (check.stderr.strip().splitlines() or ["(no message)"])[-1]
        return None, f"{python} cannot import llama_cpp and its server: {last}"
    return python, ""


def server_command(python: Path, gguf: Path, port: int, threads: int) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server on loopback. `--interrupt_requests False`: a new request waits for
    the one in flight instead of ending it, so only the client going away (Stop) ends a generation."""
    return [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "4096",
            "--interrupt_requests", "False"]


def llama_server_command(binary: str, gguf: Path, port: int, threads: int) -> list[str]:
    """llama.cpp's own C++ server (`llama-server`, named by TOKEN_LAB_LLAMA_SERVER) on loopback, one slot, as
    docs/deploy.md runs it: the same OpenAI API without a Python layer of its own."""
    return [binary, "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-c", "4096", "-np", "1",
            "--host", "127.0.0.1", "--port", str(port), "--no-webui"]


class LlamaCppWorker:
    """llama.cpp in-process in its own Python (bench/llamacpp_worker.py): greedy answers to prompt token ids, timed."""

    def __init__(self, python: Path, gguf: Path, threads: int, logits_all: bool = False) -> None:
        flags = ["--logits-all"] if logits_all else []
        self.proc = subprocess.Popen([str(python), str(WORKER), str(gguf), str(threads), *flags],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if not json.loads(self.proc.stdout.readline() or "{}").get("ready"):
            self.close()
            raise RuntimeError(f"llama.cpp's worker did not start (exit status {self.proc.returncode})")

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp's worker exited (status {self.proc.wait()})")
        return json.loads(line)

    def generate(self, ids: list[int], tokens: int) -> dict:
        """{"ids": the greedy answer's ids without the end-of-turn token, "ttft_s", "total_s"}."""
        return self._ask({"ids": ids, "tokens": tokens})

    def logits(self, prompt: list[int], answer: list[int], path: Path) -> np.ndarray:
        """The logits [len(answer), vocab] that predicted each answer token, computed as llama.cpp computes them
        while generating (needs a worker started with logits_all)."""
        self._ask({"score": prompt, "answer": answer, "path": str(path)})
        return np.load(path)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> LlamaCppWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
