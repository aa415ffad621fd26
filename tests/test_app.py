"""The app as a whole: module-level `demo`, the header while loading and when ready, the API listing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.config import AppConfig, RequestLimits
from core.errors import InvalidInputError, ModelNotReadyError
from core.host import ModelHost
from demo.blocks import build_demo, header_markdown, launch_options
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS = {"/chat", "/prompt", "/tokenize", "/detokenize", "/neighbors", "/analogy", "/similarity",
             "/vocabulary_map"}


@pytest.mark.slow
def test_app_module_exposes_demo_for_gradio_and_spaces():
    code = ("import app, gc, gradio; print(isinstance(app.demo, gradio.Blocks), app.config.port); "
            "print('gc', gc.isenabled(), gc.get_freeze_count())")
    env = {**os.environ, "MODEL_ID": "bundled", "GRADIO_SERVER_PORT": "7999"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "True 7999" in out.stdout.splitlines()
    # the collector is back on, and the start-up's objects are frozen: full collections skip them while serving
    _, enabled, frozen = next(line for line in out.stdout.splitlines() if line.startswith("gc ")).split()
    assert enabled == "True" and int(frozen) > 100_000


@pytest.mark.slow
@pytest.mark.parametrize("when", ["while loading", "just after loading, while the engine warms up"])
def test_the_process_exits_cleanly_whatever_its_threads_are_doing(when):
    """A daemon thread still inside a torch op when Python finalizes aborts the process (status 134, "terminate
    called without an active exception"): the host and the engine stop their threads at exit first."""
    wait = "host.wait()" if when.startswith("just after") else "pass"
    code = ("from core.config import AppConfig\nfrom core.host import ModelHost\n"
            f"host = ModelHost(AppConfig(model='bundled')).start()\nhost.wait_for_imports()\n{wait}\nprint('exiting')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "exiting" in out.stdout  # (the loader thread prints too: lines may interleave)


def test_header_shows_progress_while_loading_and_facts_when_ready(bundled_host):
    loading = ModelHost(AppConfig(model="bundled"))
    assert "starting" in header_markdown(loading)
    with pytest.raises(ModelNotReadyError, match="still loading"):
        loading.require()
    ready = header_markdown(bundled_host)
    for fact in ("SmolLM2-135M-Instruct", "cpu", "float32", "**Chat:** onnx int8", "49,152", "8,192",
                 "through ONNX Runtime"):
        assert fact in ready


def test_every_feature_is_a_typed_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")
    named = set(api["named_endpoints"])
    assert named >= ENDPOINTS, f"missing: {ENDPOINTS - named}"
    chat_params = {p["parameter_name"]: p for p in api["named_endpoints"]["/chat"]["parameters"]}
    assert chat_params["message"]["type"]["type"] == "string"
    assert chat_params["temperature"]["type"]["type"] == "number"
    assert chat_params["max_new_tokens"]["type"]["type"] == "integer"


def test_config_limits_reach_the_local_engine(bundled):
    host = ModelHost.from_loaded(bundled, AppConfig(model="bundled", max_queue=3, max_input_chars=100,
                                             max_new_tokens=64, max_history_messages=5,
                                             max_history_chars=1000))
    engine = host.require().engine
    try:
        assert engine.limits == RequestLimits(max_queue=3, max_new_tokens=64, max_input_chars=100,
                                              max_history_messages=5, max_history_chars=1000)
        with pytest.raises(InvalidInputError, match="limit is 100"):
            engine.prompt("a" * 101, [], "")
        with pytest.raises(InvalidInputError, match="has 6 messages; the limit is 5"):
            engine.prompt("Hi", [{"role": "user", "content": "x"}] * 6, "")
    finally:
        engine.close()


def test_anonymous_api_calls_do_not_pile_up_sessions(bundled_host):
    """Each API call without a session_hash opens a gradio session holding a copy of the app's config: the store
    is bounded by --max-sessions, and a caller that sends a session_hash keeps reusing one."""
    config = AppConfig(model="bundled", max_sessions=3, port=free_port())
    demo = build_demo(bundled_host, config)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(config))
    port = config.port
    base = f"http://127.0.0.1:{port}/gradio_api/call/tokenize"
    try:
        with httpx.Client(timeout=30) as http:
            def call(body: dict) -> str:
                event_id = http.post(base, json=body).json()["event_id"]
                return http.get(f"{base}/{event_id}").text

            for _ in range(6):
                assert "event: complete" in call({"data": ["Hello", ""]})
            assert len(demo.state_holder.session_data) <= 3
            for _ in range(3):
                call({"data": ["Hello", ""], "session_hash": "one-tab"})
            assert "one-tab" in demo.state_holder.session_data and len(demo.state_holder.session_data) <= 3
    finally:
        demo.close()
