"""Start the real app (`python app.py`) in a subprocess for benchmarks, and wait until it is ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_MARK = "[token-lab] ready:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppProcess:
    """A running app; `lines` collects its console output; `ready_at` is when it printed its ready line."""

    proc: subprocess.Popen
    port: int
    started_at: float
    lines: list[str] = field(default_factory=list)
    ready_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if READY_MARK in line and self.ready_at is None:
                self.ready_at = time.perf_counter()

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds from process start to the ready line."""
        deadline = time.perf_counter() + timeout
        while self.ready_at is None:
            if self.proc.poll() is not None:
                raise RuntimeError("app exited early:\n" + "\n".join(self.lines[-20:]))
            if time.perf_counter() > deadline:
                raise TimeoutError("app not ready:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.02)
        return self.ready_at - self.started_at

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_app(*flags: str, env: dict[str, str] | None = None) -> AppProcess:
    port = free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *flags], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    app = AppProcess(proc=proc, port=port, started_at=started)
    threading.Thread(target=app._pump, daemon=True).start()
    return app
